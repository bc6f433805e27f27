#!/usr/bin/env bash
# Run on a machine with a GPU, from the repository root: the host memory of a GPU load, Qwen3-0.6B
# and Qwen3-8B shapes with dummy weights: `generate` of one token, its anonymous memory (RssAnon,
# what the process itself allocated; the safetensors maps are file-backed) sampled every 50 ms,
# and VmHWM (peak resident, file pages included) at the end.
# Build here first: cargo build --release -p nanovllm-cli --features cuda, and carry
# target/release/nanovllm-cli. One JSON line per model in $OUT/host-memory.jsonl.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
for shape in ${SHAPES:-qwen3-0.6b qwen3-8b}; do
  model=$(mktemp -d)
  cp models/configs/$shape/*.json "$model/"
  cp models/tiny-random-qwen3/tokenizer.json models/tiny-random-qwen3/tokenizer_config.json "$model/"
  started=$(date +%s.%N)
  target/release/nanovllm-cli generate --model "$model" --load-format dummy --max-model-len 4096 \
    --prompt "one two three" --max-tokens 1 > /dev/null 2>> "$out/host-memory.log" &
  pid=$!
  peak_anon=0 hwm=0
  while kill -0 "$pid" 2>/dev/null; do
    anon=$(awk '/^RssAnon/ {print $2}' "/proc/$pid/status" 2>/dev/null)
    latest=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null)
    [ -n "$latest" ] && hwm=$latest
    [ -n "$anon" ] && [ "$anon" -gt "$peak_anon" ] && peak_anon=$anon
    sleep 0.05
  done
  wait "$pid"
  status=$?
  ended=$(date +%s.%N)
  python3 -c 'import json,sys; print(json.dumps({"shape": sys.argv[1], "exit": int(sys.argv[2]), "peak_rss_anon_mib": round(int(sys.argv[3]) / 1024), "last_vm_hwm_mib": round(int(sys.argv[4] or 0) / 1024), "seconds": round(float(sys.argv[6]) - float(sys.argv[5]), 2)}))' \
    "$shape" "$status" "$peak_anon" "$hwm" "$started" "$ended" | tee -a "$out/host-memory.jsonl"
  rm -rf "$model"
done
