#!/usr/bin/env bash
# Run on the GPU machine: the cache kernels' checks against the CPU reference, then their timings.
# Build here first (no CUDA needed):
#   cargo test --release -p kv-cache --features cuda --test gpu_kernels --no-run
#   cargo build --release -p kv-cache --features cuda --example bench_kernels
# and carry target/release/deps/gpu_kernels-* and target/release/examples/bench_kernels there.
# Logs and bench_kernels.json go to $OUT (or ./gpu-out).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export OUT=$out
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
status=0
for test in target/release/deps/gpu_kernels-*; do
  [ -x "$test" ] || continue
  timeout 120 "$test" --nocapture --test-threads 1 2>&1 | tee "$out/gpu_kernels.log" || status=1
done
timeout 300 target/release/examples/bench_kernels 4.27 2>&1 | tee "$out/bench_kernels.log" || status=1
exit $status
