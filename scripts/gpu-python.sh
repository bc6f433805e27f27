#!/usr/bin/env bash
# Run on a machine with a GPU, from the repository root: nano-vllm's bench.py through the Python
# package against `nanovllm-cli bench` on the same workload (bench.py's, which `bench` reproduces),
# bf16 then int8 (bench.py with kv_quant=True, as nano-vllm's INT8 proposal takes it), Qwen3-0.6B's
# shape with dummy weights. bench.py is python/tests/nano_vllm/bench.py with nano-vllm's own sizes
# put back. Build here first:
#   cargo build --release -p nanovllm-cli --features cuda
#   maturin build --release --features cuda -m python/Cargo.toml --out target/wheels-cuda
# and carry target/release/nanovllm-cli and target/wheels-cuda. One JSON line per run in
# $OUT/python.jsonl.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pysite \
  target/wheels-cuda/*.whl || exit 1
model=$(mktemp -d)
cp models/configs/qwen3-0.6b/*.json "$model/"
cp models/tiny-random-qwen3/tokenizer.json models/tiny-random-qwen3/tokenizer_config.json "$model/"
bench=$(mktemp -d)
sed -e 's/num_seqs = 16 .*/num_seqs = 256/' -e 's/max_input_len = 128 .*/max_input_len = 1024/' \
  -e 's/max_ouput_len = 128 .*/max_ouput_len = 1024/' python/tests/nano_vllm/bench.py > "$bench/bench_bf16.py"
sed 's/load_format="dummy")/load_format="dummy", kv_quant=True)/' "$bench/bench_bf16.py" > "$bench/bench_int8.py"
nvidia-smi --query-gpu=name --format=csv,noheader
for dtype in bf16 int8; do
  timeout 300 target/release/nanovllm-cli bench --model "$model" --load-format dummy --max-model-len 4096 --kv-cache-dtype "$dtype" --json \
    2>/dev/null | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'run': 'cli-bench-$dtype', 'output_tok_s': r['output_tokens_per_second']}))" \
    | tee -a "$out/python.jsonl"
  line=$(NANOVLLM_TEST_MODEL="$model" PYTHONPATH=/tmp/pysite timeout 300 python3 "$bench/bench_$dtype.py" 2>>"$out/python.log" | grep Throughput)
  echo "{\"run\": \"bench.py-$dtype\", \"line\": \"$line\"}" | tee -a "$out/python.jsonl"
done
rm -rf "$model" "$bench"
