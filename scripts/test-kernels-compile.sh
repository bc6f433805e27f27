#!/usr/bin/env bash
# Every CUDA kernel module compiled by NVRTC, no GPU needed (model-qwen3/tests/kernels_compile.rs):
# the runtime compiler comes from PyPI (pinned, into a virtualenv under target/), and cudarc loads
# it from LD_LIBRARY_PATH as it would on a machine with a card.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/nvrtc
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check nvidia-cuda-nvrtc==13.0.88
lib=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))')
LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  cargo test --workspace --all-features --locked --test kernels_compile -- --ignored
