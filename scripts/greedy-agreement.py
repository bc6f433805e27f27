"""Compare two `nanovllm-cli generate --json` outputs of the same prompts (e.g. bf16 and int8 caches):
how many continuations are identical, and how many tokens each keeps before the first difference.

    python3 scripts/greedy-agreement.py A.jsonl B.jsonl
"""

import json
import statistics
import sys


def runs(path):
    return [json.loads(line)["token_ids"] for line in open(path, encoding="utf-8")]


def lead(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


a, b = runs(sys.argv[1]), runs(sys.argv[2])
leads = [lead(x, y) for x, y in zip(a, b)]
print(f"identical continuations: {sum(x == y for x, y in zip(a, b))} of {len(a)}")
print(f"tokens before the first difference: mean {statistics.mean(leads):.1f}, median {statistics.median(leads)}, "
      f"min {min(leads)}; {sum(leads)} of {sum(map(len, a))} tokens in all")
print(f"tokens before the first difference, per prompt: {leads}")
