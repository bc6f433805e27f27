#!/usr/bin/env bash
# Run on a machine with a GPU, from the repository root: what sampling costs end to end.
# nano-vllm's workload (nanovllm-cli bench, Qwen3-0.6B's shape, dummy weights) for each cache
# dtype under four settings, side by side: greedy, nano-vllm's (temperature 0.6), the model's
# generation_config (temperature 0.6, top-k 20, top-p 0.95), and the model's with every penalty
# and logprobs=5; all of them drawn on the GPU. Build here first:
#   cargo build --release -p nanovllm-cli --features cuda
# and copy target/release/nanovllm-cli there. Results: $OUT/sampling.log and one JSON line per run
# in $OUT/sampling.jsonl (or ./gpu-out). SETTINGS="temperature model" picks the settings, DTYPES the dtypes.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
status=0
for dtype in ${DTYPES:-bf16 int8}; do
  for setting in ${SETTINGS:-greedy temperature model penalties}; do
    case $setting in
      greedy) flags="--temperature 0" ;;
      temperature) flags="" ;;
      model) flags="--sampling model" ;;
      penalties) flags="--sampling model --presence-penalty 0.5 --frequency-penalty 0.5 --repetition-penalty 1.1 --logprobs 5" ;;
    esac
    echo "== $dtype $setting: $flags" | tee -a "$out/sampling.log"
    timeout "${BENCH_TIMEOUT:-240}" target/release/nanovllm-cli bench --model models/configs/qwen3-0.6b \
      --load-format dummy --max-model-len 4096 --kv-cache-dtype "$dtype" $flags --json 2>> "$out/sampling.log" \
      | sed "s/^{/{\"setting\":\"$setting\",/" | tee -a "$out/sampling.jsonl" || { echo "FAILED" | tee -a "$out/sampling.log"; status=1; }
  done
done
exit $status
