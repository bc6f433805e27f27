#!/usr/bin/env bash
# When each thread block of decode attention starts, finishes its first tile, leaves its loop and
# exits (%globaltimer, printed by the kernel), for a few launches of one bench case: where a launch's
# time goes beyond streaming the cache. Uses a build of bench_kernels with
# scripts/decode-timeline.patch applied (the instrumentation stays out of the shipped kernels).
#   scripts/decode-timeline.sh build                       # here: target/release/timeline/bench_kernels
#   scripts/decode-timeline.sh run ["Qwen3-8B 1x32768 int8" ...]   # on a machine with a GPU; copy
#                                                          # target/release/timeline
# Output: $OUT/timeline-*.log (raw) and $OUT/timeline-summary.txt (scripts/timeline-summary.py).
# printf delays the kernel after each block's last stamp, so the gap before the reduce kernel is
# not measured; the stamps before it are.
set -euo pipefail
case "${1:?build or run}" in
  build)
    tree=$(mktemp -d)
    git worktree add --detach "$tree" HEAD
    git -C "$tree" apply "$PWD/scripts/decode-timeline.patch"
    # Its own target directory: a shared one would mix this build's artifacts with main's.
    (cd "$tree" && cargo build --release -p nanovllm-kv-cache --features cuda --example bench_kernels)
    mkdir -p target/release/timeline
    cp "$tree/target/release/examples/bench_kernels" target/release/timeline/
    git worktree remove --force "$tree"
    ;;
  run)
    shift
    out=${OUT:-gpu-out}
    mkdir -p "$out"
    [ $# -gt 0 ] || set -- "Qwen3-8B 1x32768 int8" "Qwen3-0.6B 1x32768 int8"
    for case in "$@"; do
      NANOVLLM_TIMELINE=1 OUT= timeout 120 target/release/timeline/bench_kernels 4.27 "$case" \
        > "$out/timeline-${case// /_}.log" 2>&1
    done
    python3 scripts/timeline-summary.py "$out"/timeline-*.log | tee "$out/timeline-summary.txt"
    ;;
esac
