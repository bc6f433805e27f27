#!/usr/bin/env python3
"""Summarize the TLP/TLR lines (%globaltimer stamps of decode attention built with
scripts/decode-timeline.patch) of each log given: per launch, where the partial kernel's blocks
spend their time and when the reduce kernel runs. Used by scripts/decode-timeline.sh."""
import sys, statistics as st
from collections import defaultdict

def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]

for path in sys.argv[1:]:
    part, red = defaultdict(list), defaultdict(list)
    for line in open(path, errors="replace"):
        f = line.split()
        if not f or f[0] not in ("TLP", "TLR"):
            continue
        if f[0] == "TLP":
            n, sm, x, y, z, t0, t1, t2, t3, cyc = f[1:11]
            part[int(n)].append((int(sm), int(x), int(y), int(z), int(t0), int(t1), int(t2), int(t3), int(cyc)))
        else:
            n, sm, x, y, z, t0, t1 = f[1:8]
            red[int(n)].append((int(t0), int(t1)))
    print(f"== {path}")
    for n in sorted(part):
        b = part[n]
        base = min(r[4] for r in b)
        start = [r[4] - base for r in b]
        first = [r[5] - r[4] for r in b]
        loop = [r[6] - r[5] for r in b]
        tail = [r[7] - r[6] for r in b]
        end = [r[7] - base for r in b]
        print(f"launch {n}: {len(b)} blocks on {len({r[0] for r in b})} SMs; span {max(end)/1e3:.2f} us; "
              f"{len({r[4] for r in b})} distinct start stamps (the timer's tick)")
        for name, xs in (("start after first block", start), ("entry -> first tile done", first),
                         ("first tile done -> loop end", loop), ("loop end -> exit", tail), ("exit", end)):
            print(f"  {name:30s} min {min(xs)/1e3:6.2f}  p10 {q(xs,.1)/1e3:6.2f}  median {q(xs,.5)/1e3:6.2f}  "
                  f"p90 {q(xs,.9)/1e3:6.2f}  max {max(xs)/1e3:6.2f} us")
        cyc = [r[8] for r in b]
        print(f"  block cycles (clock64) median {st.median(cyc):.0f}, vs globaltimer median "
              f"{st.median([r[7]-r[4] for r in b]):.0f} ns")
        if n in red:
            r = red[n]
            print(f"  reduce: {len(r)} blocks, first start {(min(t for t,_ in r)-base)/1e3:.2f}, "
                  f"last start {(max(t for t,_ in r)-base)/1e3:.2f}, last end {(max(e for _,e in r)-base)/1e3:.2f} us "
                  f"(partial's last exit {max(end)/1e3:.2f})")
