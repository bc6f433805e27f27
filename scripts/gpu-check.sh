#!/usr/bin/env bash
# Run on a machine with one GPU, from the repository root: every single-GPU check and timing the
# team keeps, in one go, for a build made elsewhere. Runs gpu-kernels.sh (the GPU tests with
# --ignored, then the kernel timings), gpu-generate.sh and, unless STAGES says otherwise,
# gpu-bench.sh, each into its own folder, then packs them into $OUT/gpu-check.tar.gz beside a
# summary ($OUT/summary.txt: the card, each stage's exit status and the lines that say how it went).
# STAGES="kernels generate bench" (the default) picks the stages. Build here first: the commands in
# the headers of those three scripts.
set -uo pipefail
out=${OUT:-gpu-out}
work=$(mktemp -d)
mkdir -p "$out"
summary=$out/summary.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$summary"
for stage in ${STAGES:-kernels generate bench}; do
  mkdir -p "$work/$stage"
  started=$(date +%s)
  OUT=$work/$stage bash scripts/gpu-$stage.sh > "$work/$stage/stdout.log" 2>&1
  echo "== $stage: exit $? in $(( $(date +%s) - started )) s" | tee -a "$summary"
  grep -hE "^test result|FAILED|panicked|error|output tok/s|\"output_tokens_per_second\"" "$work/$stage"/*.log \
    | cut -c1-400 | head -40 >> "$summary"
done
tar -czf "$out/gpu-check.tar.gz" -C "$work" .
