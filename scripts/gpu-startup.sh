#!/usr/bin/env bash
# Run on a machine with a GPU, from the repository root: time from process start to the first
# token (`generate`, one 16-token prompt, one token out), Qwen3-0.6B's shape with dummy weights,
# kernel cache cold (a fresh NANOVLLM_CACHE_DIR) then warm, at the default max_model_len (the
# model's context, lowered to what the cache holds) and at --max-model-len 4096. The cache line
# each run prints says the max_model_len and the graphs captured; its info log (RUST_LOG, info by
# default) where start-up goes: kernels, weights, the warm-up step, graph capture.
# Build here first: cargo build --release -p nanovllm-cli --features cuda, and carry
# target/release/nanovllm-cli. One JSON line per run in $OUT/startup.jsonl, logs in $OUT/startup.log.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
model=$(mktemp -d)
cp models/configs/qwen3-0.6b/*.json "$model/"
cp models/tiny-random-qwen3/tokenizer.json models/tiny-random-qwen3/tokenizer_config.json "$model/"
for setting in default 4096; do
  flags=()
  [ "$setting" = default ] || flags=(--max-model-len "$setting")
  export NANOVLLM_CACHE_DIR=$(mktemp -d)
  for cache in cold warm; do
    started=$(date +%s.%N)
    RUST_LOG=${RUST_LOG:-info} timeout 300 target/release/nanovllm-cli generate --model "$model" --load-format dummy --kv-cache-dtype int8 \
      "${flags[@]}" --prompt "one two three four five six seven eight nine ten eleven twelve" --max-tokens 1 \
      > /dev/null 2> "$out/run.err"
    status=$?
    ended=$(date +%s.%N)
    cat "$out/run.err" >> "$out/startup.log"
    line=$(grep -m1 "^KV cache" "$out/run.err")
    python3 -c 'import json,sys; print(json.dumps({"max_model_len": sys.argv[1], "kernel_cache": sys.argv[2], "exit": int(sys.argv[3]), "seconds": round(float(sys.argv[5]) - float(sys.argv[4]), 2), "cache_line": sys.argv[6]}))' \
      "$setting" "$cache" "$status" "$started" "$ended" "$line" | tee -a "$out/startup.jsonl"
  done
done
rm -f "$out/run.err"
rm -rf "$model"
