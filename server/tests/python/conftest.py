"""Starts `nanovllm-cli serve` on a free loopback port with the committed tiny model (random
weights, the real Qwen3 tokenizer and chat template) for the client tests, and stops it after; and
the same over the mock engine, whose answer is fixed."""

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


# The tiny model with dummy weights and a small cache, as every test server runs it.
REPLICA_FLAGS = ("--load-format", "dummy", "--kv-cache-memory-gib", "0.05", "--block-size", "16")

# The answer the mock engine gives every request: a Qwen3 answer with reasoning and a tool call.
MOCK_REPLY = ('<think>\nThe user wants the weather.\n</think>\n\nLet me check.\n<tool_call>\n'
              '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')


def serve(*flags, api_key=API_KEY):
    """`nanovllm-cli serve` of the tiny model with `flags` (and `--api-key` unless None), once
    ready: the process and its base URL."""
    cli = os.environ.get("NANOVLLM_CLI", str(REPO / "target" / "debug" / "nanovllm-cli"))
    key = ["--api-key", api_key] if api_key else []
    process = subprocess.Popen(
        [cli, "serve", str(REPO / "models" / "tiny-random-qwen3"), "--host", "127.0.0.1", "--port", "0",
         "--served-model-name", MODEL, "--max-model-len", "512", "--reasoning-parser", "qwen3", *key, *flags],
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
    return process, base


def stop(process):
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


@pytest.fixture(scope="session")
def server():
    process, base = serve(*REPLICA_FLAGS, "--max-body-bytes", "65536")
    yield base
    stop(process)


@pytest.fixture(scope="session")
def mock_server():
    """The server over the mock engine, which answers MOCK_REPLY to every request."""
    process, base = serve("--mock-engine", "--mock-step-ms", "1", "--mock-reply", MOCK_REPLY)
    yield base
    stop(process)
