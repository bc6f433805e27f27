#!/usr/bin/env python3
"""Each setting of an A/B run (scripts/gpu-ab.sh) beside the others: the median over its rounds.

ab-kernels.log: a kernel's time and its time with the launch included (us), per case.
ab-bench.log: output, prefill and decode tokens per second, and the mean step (ms), per KV dtype
(and model, as gpu-ab.sh tags it) and workload, so that one log may hold several runs of each.
    python3 scripts/ab-summary.py gpu-out/ab-kernels.log gpu-out/ab-bench.log
"""
import collections
import json
import re
import statistics
import sys


PREFILL = re.compile(r"round \S+ (\S+) prefill attention, (.*?), the last (.*?), (\S+): (\S+) us \((\S+) launch")


def kernels(path):
    runs = collections.defaultdict(list)
    for line in open(path):
        # "round R SETTING prefill attention, SHAPE, the last N of M positions, DTYPE: T us (L launch included)"
        prefill = PREFILL.match(line)
        if prefill:
            setting, shape, size, dtype, time, launch = prefill.groups()
            runs[(("prefill attention", shape, size, dtype), setting)].append((float(time), float(launch)))
            continue
        # "round R SETTING | kernel | shape | batch x context | dtype | time | with launch | ..."
        head, _, table = line.partition("|")
        cells = [c.strip() for c in table.split("|")]
        if len(cells) < 6 or not table:
            continue
        setting = head.split()[2]
        runs[(tuple(cells[:4]), setting)].append((float(cells[4]), float(cells[5])))
    return {key: (statistics.median(t for t, _ in v), statistics.median(l for _, l in v)) for key, v in runs.items()}


def bench(path):
    runs = collections.defaultdict(list)
    for line in open(path):
        fields = line.split(" ", 4)
        try:
            r = json.loads(fields[4])
        except (IndexError, json.JSONDecodeError):
            continue
        step_ms = 1e3 * r["step_seconds"] / max(r["steps"], 1)
        workload = f'{r["requests"]} requests, {r["prompt_tokens"]} prompt tokens'
        runs[(fields[3], workload, fields[2])].append(
            (r["output_tokens_per_second"], r["prefill_tokens_per_second"], r["decode_tokens_per_second"], step_ms)
        )
    return {key: tuple(statistics.median(x[i] for x in v) for i in range(4)) for key, v in runs.items()}


def main(paths):
    for path in paths:
        print(f"== {path}")
        if "kernels" in path:
            for (case, setting), (time, launch) in sorted(kernels(path).items()):
                print(f"{' | '.join(case):70} {setting:45} {time:9.1f} us {launch:9.1f} us with launch")
        else:
            for (dtype, workload, setting), (out, prefill, decode, step) in sorted(bench(path).items()):
                print(f"{dtype:20} {workload:38} {setting:40} output {out:9.1f}  prefill {prefill:10.1f}"
                      f"  decode {decode:9.1f} tok/s  step {step:.3f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
