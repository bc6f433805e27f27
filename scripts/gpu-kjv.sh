#!/usr/bin/env bash
# Run on a machine with a GPU, from the repository root: train the KJV demo model, then run it
# with nanovllm-cli on the GPU (generate, held-out eval) for both cache dtypes. Needs the git-ignored
# models/kjv-qwen3/data/ (prepare_data.py) and target/release/nanovllm-cli (cargo build --release -p
# nanovllm-cli --features cuda): copy both there. The checkpoint and logs go to $OUT/kjv-qwen3 (or ./gpu-out/...).
# DTYPES picks the cache dtypes (default "bf16 int8"; fp8_per_token_head, fp8 and int4 too); each
# eval's KL and top-1 agreement are against the bf16 cache on the same GPU. PRESET=deep trains
# train.py's 49M-parameter preset instead, its logs and results into $OUT/kjv-qwen3-deep.
set -uo pipefail
preset=${PRESET:-demo}
out=${OUT:-gpu-out}/kjv-qwen3${PRESET:+-$PRESET}
mkdir -p "$out"
# The deep checkpoint (about 100 MB) stays outside $OUT; its logs and results go there.
model=$out
[ "$preset" = demo ] || model=$(mktemp -d)
status=0
timeout 420 python3 models/kjv-qwen3/train.py "$model" --preset "$preset" 2>&1 | tee "$out/train.log" || exit 1
[ "$model" = "$out" ] || cp "$model/train_log.json" "$model/hf_reference.json" "$out/"
cli=target/release/nanovllm-cli
for dtype in ${DTYPES:-bf16 int8}; do
  echo "== generate cuda $dtype" | tee -a "$out/run.log"
  timeout 60 $cli generate --model "$model" --device cuda --kv-cache-dtype $dtype --prompt "In the beginning" \
    --temperature 0 --max-tokens 48 >> "$out/run.log" 2>&1 || { echo FAILED | tee -a "$out/run.log"; status=1; }
  timeout 120 $cli eval --model "$model" --device cuda --kv-cache-dtype $dtype \
    --text models/kjv-qwen3/data/heldout.txt --context 512 --json > "$out/eval-cuda-$dtype.json" 2>> "$out/run.log" \
    || { echo "eval $dtype FAILED" | tee -a "$out/run.log"; status=1; }
done
cat "$out"/eval-cuda-*.json "$out/run.log"
exit $status
