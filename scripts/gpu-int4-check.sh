#!/usr/bin/env bash
# Run on a machine with a GPU, from the repository root: the INT4 cache's kernels against the CPU
# reference, then its decode attention and store timed beside INT8's in the same call (AB: other
# settings or builds beside them, as in gpu-ab.sh), then the whole-model GPU checks. Build here first (see
# gpu-kernels.sh's header) and carry bench_kernels, gpu_kernels-* and gpu_model-*. Everything goes
# to $OUT (or ./gpu-out); $OUT/summary.txt holds the card, the test results and the timings.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
summary=$out/summary.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$summary"
status=0
run_tests() {
  local test=$1 name
  name=$(basename "${test%-*}")
  timeout "${2:-240}" "$test" --ignored --skip two_gpus --nocapture --test-threads 1 > "$out/$name.log" 2>&1 || status=1
  grep -hE "^test .*(ok|FAILED)$|^test result|panicked|rel|error" "$out/$name.log" | cut -c1-300 | head -60 >> "$summary"
}
for test in target/release/deps/gpu_kernels-*; do [ "${test%.d}" = "$test" ] && run_tests "$test" 240; done
for filter in "0.6B 64x4096 int4" "0.6B 64x4096 int8" "0.6B 1x32768 int4" "0.6B 1x32768 int8" "store int4 Shuffled" "store int8 Shuffled"; do
  AB="${AB:--}" ROUNDS=${ROUNDS:-2} OUT=$out bash scripts/gpu-ab.sh kernels "$filter" > /dev/null || status=1
done
grep -E '^round' "$out/ab-kernels.log" | grep -v 'decode kernel' >> "$summary"
for test in target/release/deps/gpu_model-*; do [ "${test%.d}" = "$test" ] && run_tests "$test" 200; done
echo "exit $status" >> "$summary"
exit $status
