#!/usr/bin/env bash
# Run a command with NVRTC, the CUDA runtime compiler, where no CUDA is installed: NVIDIA's PyPI
# wheel (pinned, into a virtualenv under target/), on LD_LIBRARY_PATH, where cudarc loads it as it
# would on a machine with a card. No GPU is needed to compile kernels. Without a command: every
# kernel variant compiled (model-qwen3/tests/kernels_compile.rs), as CI runs it.
#   scripts/with-nvrtc.sh cargo run --release -p nanovllm-qwen3 --features cuda --example kernel_registers
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/nvrtc
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check nvidia-cuda-nvrtc==13.0.88
lib=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))')
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ $# -eq 0 ]; then
  set -- cargo test --workspace --all-features --locked --test kernels_compile -- --ignored
fi
exec "$@"
