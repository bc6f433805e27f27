#!/usr/bin/env bash
# Run on a machine with a GPU, from the repository root: ncu's full report on one launch of each chosen
# kernel of bench_kernels, as text (details page, and per-SASS-instruction counts and stall samples),
# plus the registers and SASS of every module bench_kernels compiled (cuobjdump of its CUBIN).
# Build here first: cargo build --release -p nanovllm-kv-cache --features cuda --example bench_kernels, and
# copy target/release/examples/bench_kernels. Writes under $OUT (or ./gpu-out).
# PROFILE lists "bench filter|kernel name" pairs, separated by ';' (the filter is bench_kernels'
# second argument). Variables such as NANOVLLM_DECODE_WARPS_PER_SM pass through to the kernels.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
modules=$(mktemp -d)
export NANOVLLM_CACHE_DIR=$modules
IFS=';' read -ra jobs <<< "${PROFILE:-Qwen3-8B 128x4096 int8|decode_attention_partial;store int8|store_kv}"
for job in "${jobs[@]}"; do
  filter=${job%|*} kernel=${job#*|}
  name=$(echo "${TAG:-}$filter-$kernel" | tr ' ' '_')
  timeout 300 "$ncu" --clock-control none --set full --kernel-name "$kernel" --launch-skip 5 --launch-count 1 \
    -f -o "$out/$name" target/release/examples/bench_kernels 4.27 "$filter" > "$out/$name.log" 2>&1 \
    || echo "profile $name FAILED" | tee -a "$out/$name.log"
  "$ncu" -i "$out/$name.ncu-rep" --page details --csv > "$out/$name-details.csv" 2>&1
  "$ncu" -i "$out/$name.ncu-rep" --page source --csv --print-source sass > "$out/$name-sass.csv" 2>&1
done
for cubin in "$modules"/kernels/*.cubin; do
  base=$(basename "$cubin" .cubin)
  cuobjdump -res-usage "$cubin" > "$out/$base.resources.txt" 2>&1
  cuobjdump -sass "$cubin" > "$out/$base.sass.txt" 2>&1
done
