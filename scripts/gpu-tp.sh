#!/usr/bin/env bash
# Run on a machine with 2 GPUs (the device tool's nvidia-h200-x2), from the repository root:
# tensor parallelism. The GPU model and engine tests (2 GPUs against 1, and against HF),
# generate on 2 GPUs against 1, then nanovllm-cli bench at --tensor-parallel-size 1 and 2, side by
# side. Build here first:
#   cargo test --release -p nanovllm-qwen3 --features cuda --test gpu_model --no-run
#   cargo test --release -p nanovllm --features cuda --test gpu_engine --no-run
#   cargo build --release -p nanovllm-cli --features cuda
# and copy target/release/deps/gpu_model-*, gpu_engine-* and target/release/nanovllm-cli. Logs and JSON go to
# $OUT (or ./gpu-out). BENCH_MODELS="qwen3-0.6b qwen3-8b" picks the shapes benched (default 0.6b; "" none);
# TEST_FILTER=two_gpus runs only the tensor-parallel tests (the GPU tests are #[ignore]d: run with
# --ignored).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
source scripts/nccl-env.sh
nvidia-smi --query-gpu=index,name,driver_version --format=csv | tee "$out/gpu.txt"
nvidia-smi topo -m >> "$out/gpu.txt" 2>&1
status=0
log() { echo "$*" | tee -a "$out/tp.log"; }

for test in target/release/deps/gpu_model-* target/release/deps/gpu_engine-*; do
  [ -x "$test" ] && [ "${test%.d}" = "$test" ] || continue
  name=$(basename "${test%-*}")
  timeout 240 "$test" --ignored --nocapture --test-threads 1 ${TEST_FILTER:-} 2>&1 | tee "$out/$name.log" || status=1
done

cli=target/release/nanovllm-cli
kjv=models/kjv-qwen3
printf '%s\n' "In the beginning" "And the LORD said unto Moses" "Blessed are the" "The heavens declare" \
  "And it came to pass" "Thus saith the LORD" "Now the serpent was" "For God so loved" > "$out/prompts.txt"
for dtype in bf16 int8; do
  for tp in 1 2; do
    for mode in greedy seeded topp; do
      case $mode in
        greedy) flags="--temperature 0" ;;
        seeded) flags="--temperature 0.8 --seed 7" ;;
        topp) flags="--temperature 0.8 --top-p 0.9 --seed 7" ;;
      esac
      file=$mode-$dtype-tp$tp.jsonl
      log "\$ generate $flags --kv-cache-dtype $dtype --tensor-parallel-size $tp > $file"
      timeout 60 $cli generate --model $kjv --device cuda --prompts-file "$out/prompts.txt" --kv-cache-dtype $dtype \
        --tensor-parallel-size $tp $flags --ignore-eos --max-tokens 64 --json --kv-cache-memory-gib 1 > "$out/$file" 2>> "$out/tp.log" \
        || { log FAILED; status=1; }
    done
  done
done
for mode in greedy seeded topp; do
  for dtype in bf16 int8; do
    log "$mode $dtype, 2 GPUs against 1:"
    python3 scripts/greedy-agreement.py "$out/$mode-$dtype-tp2.jsonl" "$out/$mode-$dtype-tp1.jsonl" | tee -a "$out/tp.log"
  done
done

for model in ${BENCH_MODELS-qwen3-0.6b}; do
  for dtype in bf16 int8; do
    for tp in 1 2; do
      tag=$model-$dtype-tp$tp
      log "== bench $model $dtype --tensor-parallel-size $tp"
      timeout "${BENCH_TIMEOUT:-240}" $cli bench --model models/configs/$model --load-format dummy --max-model-len 4096 --kv-cache-dtype $dtype \
        --tensor-parallel-size $tp --json > "$out/bench-$tag.json" 2>> "$out/tp.log" || { log FAILED; status=1; }
      cat "$out/bench-$tag.json" | tee -a "$out/tp.log"
    done
  done
done
exit $status
