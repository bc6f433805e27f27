#!/usr/bin/env bash
# Run on a machine with a GPU, from the repository root: nano-vllm's bench.py workload on Qwen3-0.6B's
# shape (dummy weights) with bf16 and INT8 KV caches, then bench-memory --measure. Build here first:
#   cargo build --release -p nanovllm-cli --features cuda && cargo build --release -p xtask --features cuda
# and copy target/release/nanovllm-cli and target/release/xtask. Results go to $OUT (or ./gpu-out).
# DTYPES picks the cache dtypes (default "bf16 int8"; fp8_per_token_head and int4 too).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
status=0
limit=${BENCH_TIMEOUT:-240}
# MODES="graphs eager" also runs each bench with --enforce-eager, side by side.
for extra in "" "--kv-cache-memory-gib 4"; do
  for mode in ${MODES:-graphs}; do
    for dtype in ${DTYPES:-bf16 int8}; do
      tag=$dtype${extra:+-4gib}
      flags=$extra
      if [ "$mode" = eager ]; then tag=$tag-eager; flags="$flags --enforce-eager"; fi
      echo "== bench $dtype $flags" | tee -a "$out/bench.log"
      timeout "$limit" target/release/nanovllm-cli bench --model models/configs/qwen3-0.6b --load-format dummy --max-model-len 4096 \
        --kv-cache-dtype $dtype $flags --json > "$out/bench-$tag.json" 2>> "$out/bench.log" || { echo "FAILED" | tee -a "$out/bench.log"; status=1; }
      cat "$out/bench-$tag.json" | tee -a "$out/bench.log"
    done
  done
  [ "${ONLY_DEFAULT:-0}" = 1 ] && break
done
# PREPARE_LOG=1: one more INT8 run, logging each step's preparation (lay out, upload, queue), a
# separate run since the log itself costs host time; summarized into prepare-times.jsonl.
if [ "${PREPARE_LOG:-0}" = 1 ]; then
  RUST_LOG=nanovllm_qwen3=debug timeout "$limit" target/release/nanovllm-cli bench --model models/configs/qwen3-0.6b \
    --load-format dummy --max-model-len 4096 --kv-cache-dtype int8 --json > /dev/null 2> "$out/prepare.log" || status=1
  python3 scripts/prepare-times.py "$out/prepare.log" | tee "$out/prepare-times.jsonl"
  rm -f "$out/prepare.log"
fi
[ "${SKIP_MEMORY:-0}" = 1 ] && exit $status
target/release/xtask bench-memory --preset qwen3-0.6b --blocks 500 --block-size 256 --measure 2>&1 | tee "$out/bench-memory.log" || status=1
exit $status
