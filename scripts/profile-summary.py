#!/usr/bin/env python3
"""Sum an ncu CSV of kernel durations (scripts/gpu-profile-step.sh) by kernel name.

Prints, per kernel name, how many ran, their total and mean microseconds, and the share of all;
and, counting one `embedding` launch per forward pass, the kernel time of one pass. ncu times
each kernel alone with its caches flushed, so the sum can exceed the step's own time (a batch-1
step: 1.90 ms of kernels in a 1.41 ms step): compare the shares, not the sums.
    python3 scripts/profile-summary.py gpu-out/profile-int8.csv
"""
import collections
import csv
import sys


MICROS_PER_UNIT = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}


def rows(path):
    """The kernels' rows, and how many microseconds one unit of their duration is."""
    with open(path, newline="") as file:
        lines = [line for line in file if line.startswith('"')]
    table = list(csv.DictReader(lines))
    # ncu's raw page puts a row of units under the header.
    unit = next(row["gpu__time_duration.sum"] for row in table if not row.get("ID", "").isdigit())
    return [row for row in table if row.get("ID", "").isdigit()], MICROS_PER_UNIT[unit]


def short(name):
    name = name.split("(")[0]
    return name.replace("void ", "").strip()[:70]


def main(path):
    totals = collections.defaultdict(float)
    counts = collections.Counter()
    kernels, micros_per_unit = rows(path)
    for row in kernels:
        name = short(row["Kernel Name"])
        totals[name] += float(row["gpu__time_duration.sum"].replace(",", "")) * micros_per_unit
        counts[name] += 1
    whole = sum(totals.values())
    passes = counts.get("embedding", 0)
    print(f"{sum(counts.values())} kernels, {whole:.1f} us in all, {passes} forward passes")
    print(f"{'kernel':70} {'count':>6} {'total us':>10} {'mean us':>8} {'share':>6}")
    for name, total in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{name:70} {counts[name]:6} {total:10.1f} {total / counts[name]:8.2f} {total / whole:6.1%}")
    if passes:
        print(f"per forward pass: {sum(counts.values()) / passes:.0f} kernels, {whole / passes:.1f} us")


if __name__ == "__main__":
    main(sys.argv[1])
