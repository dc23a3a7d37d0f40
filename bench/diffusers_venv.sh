#!/usr/bin/env bash
# The Python side of the side-by-side benchmarks (bench/bench_train.sh): a venv with diffusers,
# transformers and torchvision over the torch 2.11 that scripts/install_deps.sh installed for the
# build (same libtorch as t2i, so both sides run the same kernels). Needs the network once.
# Prints the python to use. Not part of t2i (t2i runs no Python).
set -euo pipefail
TORCH_VENV=${T2I_TORCH_HOME:-$HOME/.cache/t2i/torch-2.11.0}
VENV=${T2I_BENCH_VENV:-$HOME/.cache/t2i/bench-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import diffusers, torchvision' 2>/dev/null; then
  [ -d "$TORCH_VENV" ] || { echo "no torch venv at $TORCH_VENV: run scripts/install_deps.sh first" >&2; exit 1; }
  python3 -m venv "$VENV"
  site=$(ls -d "$TORCH_VENV"/lib/python3*/site-packages)
  echo "$site" > "$(ls -d "$VENV"/lib/python3*/site-packages)/t2i-torch.pth"
  "$VENV/bin/pip" install -q diffusers==0.35.2 transformers==4.57.1 >&2
  "$VENV/bin/pip" install -q --no-deps torchvision==0.26.0 >&2
fi
echo "$VENV/bin/python"
