#!/usr/bin/env bash
# Installs t2i's build and test dependencies on Debian 12 (bookworm). Safe to run again.
#  - libtorch 2.x: the `torch` wheel from PyPI (pinned; its libtorch has CUDA and NCCL and runs on
#    machines without a GPU), in a Python venv at T2I_TORCH_HOME, where CMakeLists.txt finds it.
#  - Apache Arrow's C++ libraries (libarrow, libparquet and their headers) for Parquet / Arrow
#    datasets: the `pyarrow` wheel from PyPI (pinned), in a venv at T2I_ARROW_HOME, where
#    CMakeLists.txt finds it (T2I_WITH_ARROW). Debian 12 packages no Arrow; the wheel's C++ ABI
#    (_GLIBCXX_USE_CXX11_ABI=1, libstdc++ >= GLIBCXX_3.4.22) is the torch wheel's and fits it.
#  - everything else: Debian packages. Nothing is vendored.
# Building the CUDA parts needs NVIDIA's CUDA toolkit (nvcc, /usr/local/cuda); the machines this
# project builds on carry it. See README "Building".
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
TORCH_VERSION=2.11.0
T2I_TORCH_HOME=${T2I_TORCH_HOME:-$HOME/.cache/t2i/torch-$TORCH_VERSION}
PYARROW_VERSION=26.0.1
T2I_ARROW_HOME=${T2I_ARROW_HOME:-$HOME/.cache/t2i/pyarrow-$PYARROW_VERSION}
PACKAGES=(
  cmake ninja-build clang ccache clang-format   # build tools (clang++: fast builds with PCH)
  python3 python3-venv python3-pip              # the venv that holds PyPI's torch wheel
  libgloo-dev                                   # headers of c10d's Gloo backend (multi-process)
  libgoogle-perftools-dev                       # tcmalloc_minimal: faster allocation in attention
  nlohmann-json3-dev                            # config.json, safetensors headers
  libicu-dev                                    # Unicode normalization and categories (tokenizer)
  libpng-dev libjpeg-dev libwebp-dev pkg-config # image decoding (PNG, JPEG, WebP) and PNG output
  libgtest-dev                                  # tests
  libclang-rt-14-dev                            # sanitizer runtimes (ASan, UBSan, libFuzzer)
)
export DEBIAN_FRONTEND=noninteractive
if ! dpkg -s "${PACKAGES[@]}" >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
fi

# One PyPI package in its own venv, once per version (a marker file names the version).
pip_venv() {  # DIR PACKAGE VERSION
  local dir=$1 package=$2 version=$3
  [ -f "$dir/.t2i-$package-$version" ] && return
  echo "installing $package==$version from PyPI into $dir" >&2
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  /usr/bin/python3 -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "$package==$version"
  touch "$dir/.t2i-$package-$version"
}
# torch from PyPI, with the CUDA 13 libraries it needs (cuDNN, cuBLAS, NCCL, ...: ~4.6 GB).
pip_venv "$T2I_TORCH_HOME" torch "$TORCH_VERSION"
# pyarrow from PyPI: its C++ libraries and headers (~190 MB; no other packages).
pip_venv "$T2I_ARROW_HOME" pyarrow "$PYARROW_VERSION"
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "note: no CUDA toolkit found (nvcc): CMake's TorchConfig needs it to build against the" \
    "CUDA libtorch; install NVIDIA's CUDA 13 toolkit (see README 'Building')" >&2
fi
