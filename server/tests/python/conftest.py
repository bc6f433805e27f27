"""Starts `nanovllm-cli serve` on a free loopback port with the committed tiny model (random
weights, the real Qwen3 tokenizer and chat template) for the client tests, and stops it after."""

import os
import pathlib
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
API_KEY = "test-key"
MODEL = "tiny"


def ready(base):
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False


@pytest.fixture(scope="session")
def server():
    cli = os.environ.get("NANOVLLM_CLI", str(REPO / "target" / "debug" / "nanovllm-cli"))
    process = subprocess.Popen(
        [cli, "serve", str(REPO / "models" / "tiny-random-qwen3"), "--load-format", "dummy",
         "--host", "127.0.0.1", "--port", "0", "--served-model-name", MODEL, "--api-key", API_KEY,
         "--kv-cache-memory-gib", "0.05", "--max-model-len", "512", "--block-size", "16",
         "--max-body-bytes", "65536", "--reasoning-parser", "qwen3"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    base = None
    for line in process.stderr:
        if line.startswith(f"serving {MODEL} on "):
            base = line.split(" on ", 1)[1].strip()
            break
    if base is None:
        process.kill()
        raise RuntimeError("the server ended before listening")
    base = base.removesuffix("/v1")
    # It listens while the model loads (/health 503), then turns ready.
    deadline = time.monotonic() + 60
    while not ready(base):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("the server did not turn ready")
        time.sleep(0.05)
    yield base
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
