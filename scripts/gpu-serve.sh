#!/usr/bin/env bash
# Run on a machine with a GPU, from the repository root: served speed beside the offline engine,
# Qwen3-0.6B's shape with dummy weights (the committed config, the tiny model's real tokenizer).
# PARTS picks what runs (default "s1 s2 s4"; "s3 s5 s6" is the other half):
#   s1  nano-vllm's workload: offline `bench` vs `bench-serve --dataset-name nano-vllm`, all at once,
#       sampling alike (temperature 0.6 and the rest from the model's generation_config.json: the
#       server's defaults, as vLLM's; `bench --sampling model`), per dtype in DTYPES (default
#       "bf16 int8")
#   s2  random 1024 in / 128 out at concurrency 1 (100 requests), and the offline floors: one
#       1024-token prefill and one bs=1 decode step (`bench` on one such request)
#   s3  random 1024/128, 1000 prompts, concurrency 8..256, a Poisson rate sweep, and offline
#       `bench` on the same shape (int8)
#   s3m s3's Poisson sweep and concurrency 256 under the mixed step policy
#       (--mixed-prefill-tokens ${MIXED_TOKENS:-512}), and offline `bench` on the same shape and on
#       nano-vllm's workload under that policy (int8)
#   s4  the mock engine (no GPU work): 1,024 streams, SSE events per second
#   s5  arrivals far past capacity into a bounded queue: statuses, admitted TTFT, server RSS
#   s6  256 streams, half cancelled mid-stream (scripts/serve-cancel.py): KV usage after the
#       cancel, the survivors' speed against 128 streams alone (int8)
#   s3m and s6 also log every served step and summarize the step times (scripts/step-times.py)
#   s7  two replicas on the one GPU (--gpu-memory-utilization 0.45 each) behind vllm-router
#       against one replica alone, random 1024/128 at concurrency 256 (int8). The router comes as
#       wheels in .whl/ (carried; the GPU machine has no network): vllm-router and those of its
#       needs the machine lacks.
# Build here first: cargo build --release -p nanovllm-cli --features cuda, and carry
# target/release/nanovllm-cli. Results: one JSON line per run in $OUT/serve.jsonl, logs in
# $OUT/serve.log.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
cli=target/release/nanovllm-cli
log="$out/serve.log"
model=$(mktemp -d)
cp models/configs/qwen3-0.6b/*.json "$model/"
cp models/tiny-random-qwen3/tokenizer.json models/tiny-random-qwen3/tokenizer_config.json "$model/"
port=18400
results=$(mktemp -d)
server_pid=
server_log=$log

start_server() {
  port=$((port + 1))
  "$cli" serve "$model" --load-format dummy --max-model-len 4096 --port "$port" --served-model-name qwen3 "$@" >> "$server_log" 2>&1 &
  server_pid=$!
  python3 - "$port" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/health"
deadline = time.time() + 300
while time.time() < deadline:
    try:
        if urllib.request.urlopen(url, timeout=2).status == 200:
            sys.exit(0)
    except Exception:
        time.sleep(0.2)
sys.exit(1)
PY
}

stop_server() {
  kill -TERM "$server_pid" 2>/dev/null
  wait "$server_pid" 2>/dev/null
}

# bench-serve with a label; its key figures as one JSON line.
bench_serve() {
  local label=$1
  shift
  echo "== $label: $*" >> "$log"
  timeout 400 "$cli" bench-serve --base-url "http://127.0.0.1:$port" --tokenizer "$model" --disable-tqdm \
    --save-result --result-dir "$results" --result-filename "$label.json" "$@" >> "$log" 2>&1
  python3 - "$results/$label.json" "$label" <<'PY' | tee -a "$out/serve.jsonl"
import json, sys
r = json.load(open(sys.argv[1]))
errors = [e for e in r["errors"] if e]
keys = ["completed", "failed", "duration", "request_throughput", "output_throughput", "max_concurrency",
        "request_rate", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "median_itl_ms", "p50_itl_ms",
        "p99_itl_ms", "mean_e2el_ms"]
line = {"run": sys.argv[2], **{k: r.get(k) for k in keys}}
line["errors_503"] = sum(e.startswith("HTTP 503") for e in errors)
line["errors_other"] = len(errors) - line["errors_503"]
print(json.dumps(line))
PY
}

# Log every served step of the next server (RUST_LOG=nanovllm_server=debug) to its own file.
log_steps() {
  server_log="$results/steps-$1.log"
  export RUST_LOG=nanovllm_server=debug
}

# The step times of the server whose steps were logged (scripts/step-times.py), labelled.
step_times() {
  python3 scripts/step-times.py "$server_log" --gap 1.5 --label "$1" | tee -a "$out/serve.jsonl"
  server_log=$log
  unset RUST_LOG
}

# Offline bench (JSON line, labelled).
bench() {
  local label=$1
  shift
  echo "== $label: bench $*" >> "$log"
  timeout 400 "$cli" bench --model "$model" --load-format dummy --max-model-len 4096 --json "$@" 2>> "$log" \
    | sed "s/^{/{\"run\":\"$label\",/" | tee -a "$out/serve.jsonl"
}

# A JSONL workload of random 1024-token prompts and 128 output tokens.
random_workload() {
  python3 - "$1" "$2" <<'PY'
import json, random, sys
random.seed(0)
with open(sys.argv[2], "w") as f:
    for _ in range(int(sys.argv[1])):
        f.write(json.dumps({"prompt_token_ids": [random.randrange(151000) for _ in range(1024)], "max_tokens": 128}) + "\n")
PY
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$log"
for part in ${PARTS:-s1 s2 s4}; do
  case $part in
    s1)
      for dtype in ${DTYPES:-bf16 int8}; do
        bench "s1-offline-$dtype" --kv-cache-dtype "$dtype" --sampling model
        start_server --kv-cache-dtype "$dtype"
        bench_serve "s1-served-$dtype" --dataset-name nano-vllm --num-prompts 256 --temperature 0.6
        stop_server
      done
      ;;
    s2)
      random_workload 1 "$results/one.jsonl"
      bench s2-offline-one-int8 --kv-cache-dtype int8 --workload "$results/one.jsonl" --temperature 0
      start_server --kv-cache-dtype int8
      bench_serve s2-served-c1-int8 --random-input-len 1024 --random-output-len 128 --num-prompts 100 \
        --max-concurrency 1
      stop_server
      ;;
    s3)
      random_workload 1000 "$results/thousand.jsonl"
      bench s3-offline-int8 --kv-cache-dtype int8 --workload "$results/thousand.jsonl" --temperature 0
      start_server --kv-cache-dtype int8
      for c in 8 32 64 128 256; do
        bench_serve "s3-served-c$c-int8" --random-input-len 1024 --random-output-len 128 --num-prompts 1000 \
          --max-concurrency "$c"
      done
      for rate in 8 16 32 64; do
        bench_serve "s3-served-rate$rate-int8" --random-input-len 1024 --random-output-len 128 \
          --num-prompts $((rate * 10)) --request-rate "$rate"
      done
      stop_server
      ;;
    s3m)
      mixed=(--mixed-prefill-tokens "${MIXED_TOKENS:-512}")
      random_workload 1000 "$results/thousand.jsonl"
      bench s3m-offline-int8 --kv-cache-dtype int8 --workload "$results/thousand.jsonl" --temperature 0 "${mixed[@]}"
      bench s3m-offline-nanovllm-int8 --kv-cache-dtype int8 "${mixed[@]}"
      log_steps s3m
      start_server --kv-cache-dtype int8 "${mixed[@]}"
      bench_serve s3m-served-c256-int8 --random-input-len 1024 --random-output-len 128 --num-prompts 1000 \
        --max-concurrency 256
      for rate in 8 16 32 64; do
        bench_serve "s3m-served-rate$rate-int8" --random-input-len 1024 --random-output-len 128 \
          --num-prompts $((rate * 10)) --request-rate "$rate"
      done
      stop_server
      step_times s3m-steps
      ;;
    s4)
      start_server --mock-engine --mock-step-ms 1 --max-num-seqs 1024 --max-model-len 4096
      bench_serve s4-mock-1024 --random-input-len 16 --random-output-len 512 --num-prompts 2048 \
        --max-concurrency 1024
      stop_server
      ;;
    s5)
      start_server --kv-cache-dtype int8 --max-num-seqs 256 --max-queued-requests 256
      ( while kill -0 "$server_pid" 2>/dev/null; do
          echo "rss_kb $(date +%s.%N) $(grep VmRSS /proc/$server_pid/status | awk '{print $2}')"
          sleep 0.5
        done ) >> "$out/rss.log" &
      bench_serve s5-overload-int8 --random-input-len 1024 --random-output-len 128 --num-prompts 4000 \
        --request-rate 400
      stop_server
      python3 - "$out/rss.log" <<'PY' | tee -a "$out/serve.jsonl"
import json, sys
rss = [int(l.split()[2]) for l in open(sys.argv[1]) if l.startswith("rss_kb") and len(l.split()) == 3]
print(json.dumps({"run": "s5-rss", "samples": len(rss), "first_mib": rss[0] / 1024 if rss else None,
                  "peak_mib": max(rss) / 1024 if rss else None, "last_mib": rss[-1] / 1024 if rss else None}))
PY
      ;;
    s7)
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >> "$log" 2>&1
      export PYTHONPATH=/tmp/site
      start_server --kv-cache-dtype int8
      bench_serve s7-one-replica-int8 --random-input-len 1024 --random-output-len 128 --num-prompts 1000 \
        --max-concurrency 256
      stop_server
      start_server --kv-cache-dtype int8 --gpu-memory-utilization 0.45
      first=$port first_pid=$server_pid
      start_server --kv-cache-dtype int8 --gpu-memory-utilization 0.45
      second=$port
      port=$((port + 1))
      /tmp/site/bin/vllm-router --host 127.0.0.1 --port "$port" --policy round_robin --prometheus-host 127.0.0.1 \
        --prometheus-port $((port + 100)) --worker-urls "http://127.0.0.1:$first" "http://127.0.0.1:$second" >> "$log" 2>&1 &
      router_pid=$!
      for _ in $(seq 100); do
        python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/v1/models', timeout=2)" 2>/dev/null && break
        sleep 0.2
      done
      bench_serve s7-two-replicas-router-int8 --random-input-len 1024 --random-output-len 128 --num-prompts 1000 \
        --max-concurrency 256
      kill "$router_pid"
      stop_server
      server_pid=$first_pid
      stop_server
      ;;
    s6)
      log_steps s6
      start_server --kv-cache-dtype int8
      timeout 400 python3 scripts/serve-cancel.py --port "$port" --model qwen3 --streams 256 --prompt-len 256 \
        --max-tokens 1024 --cancel-after 64 2>> "$log" | sed 's/^{/{"run": "s6-cancel-int8", /' | tee -a "$out/serve.jsonl"
      stop_server
      step_times s6-steps
      ;;
  esac
done
rm -rf "$model" "$results"
