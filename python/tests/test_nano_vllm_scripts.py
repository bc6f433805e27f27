"""nano-vllm's own example.py and bench.py (nano_vllm/README.md says which commit and what was
edited) run unchanged otherwise against this package."""

import os
import re
import subprocess
import sys
import pathlib

from conftest import TINY

HERE = pathlib.Path(__file__).parent / "nano_vllm"


def run(script):
    result = subprocess.run([sys.executable, str(HERE / script)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NANOVLLM_TEST_MODEL": TINY})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_example_prints_two_completions_of_chat_prompts():
    out = run("example.py")
    prompts = re.findall(r"^Prompt: (.*)$", out, re.M)
    assert len(prompts) == 2 and all("<|im_start|>assistant" in p for p in prompts), out
    assert len(re.findall(r"^Completion: '.*'$", out, re.M)) == 2, out


def test_bench_prints_its_throughput():
    out = run("bench.py")
    assert re.search(r"^Total: \d+tok, Time: [\d.]+s, Throughput: [\d.]+tok/s$", out, re.M), out
