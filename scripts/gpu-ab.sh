#!/usr/bin/env bash
# Run on a machine with a GPU, from the repository root: time settings side by side, alternating them
# ROUNDS times so that drift over the call falls on every setting alike. Each setting is a list of
# environment variables joined by commas ("-" for none), as TUNE in gpu-kernels.sh:
#   AB="- NANOVLLM_DECODE_WARPS_PER_SM=20" ROUNDS=3 scripts/gpu-ab.sh kernels [filter]
#   AB="- NANOVLLM_DECODE_WARPS_PER_SM=20" scripts/gpu-ab.sh bench [bench flags...]
# kernels: target/release/examples/bench_kernels (optionally one filter, a substring of its case
# names: "Qwen3-0.6B 256x1024 int8", "store int8 Shuffled"; "x" keeps every decode case);
# bench: nanovllm-cli bench on Qwen3-0.6B's shape (MODEL: another config folder), bf16 then INT8 KV. A setting's CLI variable
# names another build to run (AB="- CLI=target/release/nanovllm-cli-base": two builds side by side;
# copy the binaries), and its KERNELS_BIN another bench_kernels. Output: $OUT/ab-kernels.log or
# $OUT/ab-bench.log, each line tagged with its setting (bench: and its dtype@model).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
what=${1:?kernels or bench}
shift
status=0
model=${MODEL:-models/configs/qwen3-0.6b}
for round in $(seq "${ROUNDS:-1}"); do
  for setting in ${AB:?settings}; do
    vars=${setting//,/ }
    [ "$setting" = - ] && vars=
    if [ "$what" = kernels ]; then
      bin=$(env $vars sh -c 'echo "${KERNELS_BIN:-target/release/examples/bench_kernels}"')
      env $vars OUT= timeout 300 "$bin" 4.27 "$@" 2>&1 \
        | grep -E '^\| (decode|store)|decode kernel|^prefill attention' | sed "s|^|round $round $setting |" | tee -a "$out/ab-kernels.log" || status=1
    else
      for dtype in bf16 int8; do
        cli=$(env $vars sh -c 'echo "${CLI:-target/release/nanovllm-cli}"')
        line=$(env $vars timeout 240 "$cli" bench --model "$model" \
          --load-format dummy --max-model-len 4096 --kv-cache-dtype $dtype "$@" --json 2>>"$out/ab-bench.err") || status=1
        echo "round $round $setting $dtype@${model##*/} $line" | tee -a "$out/ab-bench.log"
      done
    fi
  done
done
exit $status
