#!/usr/bin/env bash
# Run on a machine with a GPU, from the repository root: every GPU check against the CPU reference
# (kernels, then the whole model), then the kernel timings.
# Build here first (no CUDA needed):
#   cargo test --release -p nanovllm-kv-cache -p nanovllm-qwen3 --features nanovllm-kv-cache/cuda,nanovllm-qwen3/cuda --test gpu_kernels --test gpu_model --no-run
#   cargo test --release -p nanovllm --features cuda --test gpu_engine --no-run
#   cargo test --release -p nanovllm-qwen3 --features cuda --lib --no-run   (the linear layer's check)
#   cargo build --release -p nanovllm-kv-cache --features cuda --example bench_kernels
# and copy target/release/deps/gpu_kernels-*, gpu_model-*, gpu_engine-*, nanovllm_qwen3-* and
# target/release/examples/bench_kernels there. Logs and bench_kernels.json go to $OUT (or ./gpu-out).
# Kernel errors and timings go to gpu_kernels.log, gpu_model.log, gpu_engine.log, bench_kernels.log.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export OUT=$out
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
status=0
for test in target/release/deps/gpu_kernels-* target/release/deps/gpu_model-* target/release/deps/gpu_engine-* \
  target/release/deps/nanovllm_qwen3-*; do
  [ -x "$test" ] && [ "${test%.d}" = "$test" ] || continue
  name=$(basename "${test%-*}")
  # The GPU tests are #[ignore]d (a run without a GPU lists them as such); the two-GPU ones run in
  # gpu-tp.sh.
  # A cold kernel cache compiles every variant the tests build: minutes for the attention cases.
  timeout 420 "$test" --ignored --skip two_gpus --nocapture --test-threads 1 2>&1 | tee "$out/$name.log" || status=1
done
# The card's device-to-device copy bandwidth (TB/s, read + written), which the floors use: 4.27
# measured on an H200, about 3.0 on an H100 (COPY_TBPS overrides).
case $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) in
  *H100*) copy=${COPY_TBPS:-3.0} ;;
  *) copy=${COPY_TBPS:-4.27} ;;
esac
if [ "${1:-}" != "--no-bench" ]; then
  timeout 300 target/release/examples/bench_kernels "$copy" 2>&1 | tee "$out/bench_kernels.log" || status=1
  # Tuning: TUNE="NANOVLLM_DECODE_WARPS_PER_SM=12 NANOVLLM_DECODE_WARPS_PER_SM=20,NANOVLLM_STORE_ROWS=2"
  # times the kernels again under each setting (commas join variables; kv-cache/src/cuda/mod.rs
  # reads them: NANOVLLM_DECODE_WARPS, NANOVLLM_DECODE_WARPS_PER_SM, NANOVLLM_DECODE_PARTITION,
  # NANOVLLM_STORE_ROWS).
  for setting in ${TUNE:-}; do
    echo "== $setting" | tee -a "$out/tune.log"
    env ${setting//,/ } OUT= timeout 300 target/release/examples/bench_kernels "$copy" 2>&1 | grep -E 'decode|store' | tee -a "$out/tune.log"
  done
fi
exit $status
