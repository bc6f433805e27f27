"""Paths the Python package's tests share: the committed models and the CLI they compare with."""

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]
KJV = str(REPO / "models" / "kjv-qwen3")
TINY = str(REPO / "models" / "tiny-random-qwen3")
CLI = os.environ.get("NANOVLLM_CLI", str(REPO / "target" / "debug" / "nanovllm-cli"))
