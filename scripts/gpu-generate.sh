#!/usr/bin/env bash
# Run on a machine with a GPU, from the repository root: nanovllm-cli generate on the GPU for both cache
# dtypes, against the CPU on the same checkpoint. Build here first (no CUDA needed):
#   cargo build --release -p nanovllm-cli --features cuda
# and copy target/release/nanovllm-cli. Logs go to $OUT (or ./gpu-out).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
cli=target/release/nanovllm-cli
status=0
log() { echo "$*" | tee -a "$out/generate.log"; }
# run OUTFILE ARGS...: stdout to OUTFILE, stderr to the log.
run() { local file=$1; shift; log "\$ $* > $file"; timeout 120 "$cli" "$@" > "$out/$file" 2>> "$out/generate.log" || { log "FAILED"; status=1; }; }

for dtype in bf16 int8; do
  run demo-$dtype.txt generate --model models/tiny-random-qwen3 --load-format dummy --chat --prompt "Hello" --max-tokens 16 --kv-cache-dtype $dtype
  log "demo $dtype: $(cat "$out/demo-$dtype.txt")"
done

fixture=model-qwen3/tests/fixtures/head-dim-128
python3 -c "
import json
for p in json.load(open('$fixture/hf_reference.json'))['prompts']:
    print(json.dumps({'prompt_token_ids': p['prompt']}))
" > "$out/prompts.jsonl"
for device in cuda cpu; do
  for dtype in bf16 int8; do
    run greedy-$device-$dtype.jsonl generate --model $fixture --device $device --prompts-file "$out/prompts.jsonl" \
      --kv-cache-dtype $dtype --temperature 0 --ignore-eos --max-tokens 24 --json --block-size 16 --kv-cache-memory-gib 0.01
  done
done
python3 - "$out" "$fixture" <<'PY' | tee -a "$out/generate.log"
import json, sys
out, fixture = sys.argv[1], sys.argv[2]
hf = [p['greedy'] for p in json.load(open(f'{fixture}/hf_reference.json'))['prompts']]
def load(name):
    return [json.loads(l)['token_ids'] for l in open(f'{out}/{name}')]
def lead(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y: break
        n += 1
    return n
for name in ['greedy-cuda-bf16.jsonl', 'greedy-cuda-int8.jsonl', 'greedy-cpu-bf16.jsonl', 'greedy-cpu-int8.jsonl']:
    runs = load(name)
    print(f'{name}: tokens agreeing with HF greedy before the first difference, per prompt: {[lead(r, h) for r, h in zip(runs, hf)]} of 24')
PY

python3 -c "
import json, random
random.seed(0)
for i in range(64):
    print(json.dumps({'prompt_token_ids': [random.randrange(384) for _ in range(random.randrange(20, 200))]}))
" > "$out/many.jsonl"
run many-cuda-int8.jsonl generate --model $fixture --device cuda --prompts-file "$out/many.jsonl" --kv-cache-dtype int8 \
  --temperature 0 --ignore-eos --max-tokens 64 --json --block-size 16 --kv-cache-memory-gib 0.0009 --max-model-len 512
log "64 requests in a cache of about 1200 tokens: $(grep -c '"line"' "$out/many-cuda-int8.jsonl") completed"
# Reproducibility: the same seed twice gives the same text, with GPU sampling (temperature
# only) and with host sampling (top-p), for both cache dtypes.
for dtype in bf16 int8; do
  for extra in "" "--top-p 0.9"; do
    tag=$dtype${extra:+-topp}
    for attempt in 1 2; do
      run seed-$tag-$attempt.jsonl generate --model $fixture --device cuda --prompts-file "$out/prompts.jsonl" \
        --kv-cache-dtype $dtype --temperature 0.8 $extra --seed 7 --ignore-eos --max-tokens 24 --json --block-size 16
    done
    if cmp -s "$out/seed-$tag-1.jsonl" "$out/seed-$tag-2.jsonl"; then log "same seed twice, $tag: identical"; else log "same seed twice, $tag: DIFFERENT"; status=1; fi
  done
done
exit $status
