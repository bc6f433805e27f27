#!/usr/bin/env bash
# Run on a machine with a GPU, from the repository root: the duration of every kernel of a few decode
# steps of nano-vllm's bench workload (Qwen3-0.6B shape, dummy weights), by ncu, kernels inside CUDA
# graphs profiled one by one. Build here first: cargo build --release -p nanovllm-cli --features cuda, and
# copy target/release/nanovllm-cli. Writes $OUT/profile-<dtype>.csv (or ./gpu-out).
# SKIP (kernel launches to pass, default 6000: past the prefill steps) and COUNT (default 700,
# about two decode steps) choose the window; BENCH (bench flags) another workload, e.g. one
# sequence: BENCH="--num-seqs 1 --min-input-len 1024 --max-input-len 1024 --min-output-len 256
# --max-output-len 256" SKIP=3000. scripts/profile-summary.py sums the kernels by name.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for dtype in ${DTYPES:-bf16 int8}; do
  timeout "${PROFILE_TIMEOUT:-240}" "$ncu" --clock-control none --graph-profiling node --metrics gpu__time_duration.sum \
    --launch-skip "${SKIP:-6000}" --launch-count "${COUNT:-700}" --csv --page raw \
    target/release/nanovllm-cli bench --model models/configs/qwen3-0.6b --load-format dummy --max-model-len 4096 --kv-cache-dtype $dtype ${BENCH:-} \
    > "$out/profile-$dtype.csv" 2> "$out/profile-$dtype.log" || echo "profile $dtype FAILED" | tee -a "$out/profile-$dtype.log"
done
