#!/usr/bin/env bash
# Run on a machine with a GPU, from the repository root: the long-context bench, 16 sequences of
# 30,000 prompt tokens and 512 output tokens, Qwen3-0.6B's shape with dummy weights, bf16 then
# INT8 KV, at the default max_model_len (the model's 40,960 context, as the cache allows).
# Build here first: cargo build --release -p nanovllm-cli --features cuda, and carry
# target/release/nanovllm-cli (CLI names another build, LABEL tags its lines). One JSON line per
# dtype in $OUT/long-context.jsonl (output, prefill and decode tokens per second), logs in
# $OUT/long-context.log.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
for dtype in ${DTYPES:-bf16 int8}; do
  timeout "${BENCH_TIMEOUT:-240}" "${CLI:-target/release/nanovllm-cli}" bench --model models/configs/qwen3-0.6b \
    --load-format dummy --kv-cache-dtype "$dtype" --num-seqs 16 --min-input-len 30000 --max-input-len 30000 \
    --min-output-len 512 --max-output-len 512 --json 2>> "$out/long-context.log" \
    | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'run': '${LABEL:-}long-context-$dtype', **{k: r[k] for k in ('output_tokens_per_second', 'prefill_tokens_per_second', 'decode_tokens_per_second', 'seconds', 'peak_running_sequences', 'kv_tokens')}}))" \
    | tee -a "$out/long-context.jsonl"
done
