#!/usr/bin/env bash
# The Python package (python/) as a user gets it: a wheel built by maturin in a fresh virtualenv
# under target/, installed, and its tests (python/tests, nano-vllm's own scripts among them) run
# against it; the CLI they compare with is built first.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/python-package
rm -rf "$venv" target/wheels
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r python/tests/requirements.txt
cargo build --locked -p nanovllm-cli
"$venv/bin/maturin" build --locked --manifest-path python/Cargo.toml --out target/wheels
"$venv/bin/pip" install --quiet --disable-pip-version-check target/wheels/nanovllm_rs-*.whl
NANOVLLM_CLI="$PWD/target/debug/nanovllm-cli" "$venv/bin/pytest" -q python/tests
