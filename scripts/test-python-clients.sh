#!/usr/bin/env bash
# The server through the official Python clients (openai, prometheus_client) and behind
# vllm-router, pinned in server/tests/python/requirements.txt: a virtualenv under target/, the
# CLI built, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/python-clients
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r server/tests/python/requirements.txt
cargo build --locked -p nanovllm-cli
NANOVLLM_CLI="$PWD/target/debug/nanovllm-cli" "$venv/bin/pytest" -q server/tests/python
