#!/usr/bin/env python3
"""Where the GPU model's preparation of a step goes: reads a log written with
RUST_LOG=nanovllm_qwen3=debug (one "step prepared" line per sampled step: whether it replayed a
decode graph, and the microseconds spent laying it out, uploading its inputs and queuing its
work) and prints one JSON line for graph replays and one for steps launched kernel by kernel, with
the median, mean, 99th percentile, largest and total of each part, and how many steps' parts sum
past 100 us (where a mean above the median comes from); then one JSON line for each step of more
than 10 ms, with its place among all the log's steps (the first is 1; the bench's own warm-up
steps come first), to tell one-off first uses from steady costs. Standard library only.

    python3 scripts/prepare-times.py LOG
"""

import json
import math
import re
import statistics
import sys

LINE = re.compile(r"step prepared graph=(\w+) lay_out_us=(\d+) upload_us=(\d+) queue_us=(\d+)")
PARTS = ["lay_out_us", "upload_us", "queue_us"]


def main():
    groups, slow = {}, []
    for line in open(sys.argv[1], errors="replace"):
        m = LINE.search(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if m:
            kind = "graph replay" if m.group(1) == "true" else "kernels launched"
            parts = [int(x) for x in m.groups()[1:]]
            groups.setdefault(kind, []).append(parts)
            place = sum(len(steps) for steps in groups.values())
            if sum(parts) > 10_000:
                slow.append({"slow step": place, "kind": kind, **dict(zip(PARTS, parts))})
    for kind, steps in groups.items():
        summary = {"kind": kind, "steps": len(steps)}
        for i, name in enumerate(PARTS):
            values = [step[i] for step in steps]
            summary[name + "_median"] = statistics.median(values)
            summary[name + "_mean"] = round(statistics.mean(values), 1)
            summary[name + "_p99"] = sorted(values)[math.ceil(0.99 * len(values)) - 1]  # nearest rank
            summary[name + "_max"] = max(values)
            summary[name + "_total"] = sum(values)
        summary["steps_over_100_us"] = sum(1 for step in steps if sum(step) > 100)
        print(json.dumps(summary))
    for step in slow:
        print(json.dumps(step))


main()
