#!/usr/bin/env python3
"""Where a served run's steps go: reads a server log written with RUST_LOG=nanovllm_server=debug
(one "engine step" line per step: tokens, prompt tokens, the engine's step time, the loop's own
time before it) and prints one JSON line per group of steps: runs are split at idle gaps of more
than GAP seconds, then steps are grouped by kind (decode only, or with prompt tokens) and by their
decode rows (1, 2-8, 9-32, 33-64, 65-128, 129-256, more). Standard library only."""

import argparse
import json
import re
import statistics
from datetime import datetime

LINE = re.compile(r"^(\S+)\s.*engine step tokens=(\d+) prompt_tokens=(\d+) step_us=(\d+)(?: loop_us=(\d+))?")
BUCKETS = [0, 1, 8, 32, 64, 128, 256]


def bucket(rows):
    """The decode-row range a step falls in, as "lo-hi"."""
    for lo, hi in zip(BUCKETS, BUCKETS[1:]):
        if rows <= hi:
            return f"{lo + 1}-{hi}" if hi > lo + 1 else str(hi)
    return f"{BUCKETS[-1] + 1}-"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds without a step that end a run")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    groups, run, last = {}, 0, None
    for line in open(args.log, errors="replace"):
        m = LINE.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if not m:
            continue
        at = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        tokens, prompt, step_us = int(m.group(2)), int(m.group(3)), int(m.group(4))
        if last is not None and at - last > args.gap:
            run += 1
        last = at
        rows = tokens - prompt
        key = (run, "decode" if prompt == 0 else "with-prompt", bucket(rows) if rows else "0")
        groups.setdefault(key, []).append((step_us, int(m.group(5)) if m.group(5) else None, rows, prompt))
    for (run, kind, rows), steps in groups.items():
        if len(steps) < 5:
            continue
        loop = [s[1] for s in steps if s[1] is not None]
        print(json.dumps({
            "label": args.label, "run": run, "kind": kind, "decode_rows": rows, "steps": len(steps),
            "decode_rows_mean": round(statistics.fmean(s[2] for s in steps), 1),
            "prompt_tokens_mean": round(statistics.fmean(s[3] for s in steps), 1),
            "step_us_median": statistics.median(s[0] for s in steps),
            "step_us_mean": round(statistics.fmean(s[0] for s in steps)),
            "loop_us_median": statistics.median(loop) if loop else None,
        }))


if __name__ == "__main__":
    main()
