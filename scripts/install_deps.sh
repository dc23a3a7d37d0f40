#!/usr/bin/env bash
# Installs t2i's build and test dependencies on Debian 12 (bookworm). Every library is a Debian
# package; nothing is vendored. Safe to run again.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PACKAGES=(
  cmake ninja-build clang ccache clang-format   # build tools (clang++: fast builds with PCH)
  libtorch-dev                                  # PyTorch C++ API 1.13.1 (CPU)
  libgloo-dev                                   # headers of c10d's Gloo backend (multi-process)
  libopenblas0-openmp                           # fast BLAS for libtorch (the default is ~23x slower)
  libgoogle-perftools-dev                       # tcmalloc_minimal: faster allocation in attention
  nlohmann-json3-dev                            # config.json, safetensors headers
  libicu-dev                                    # Unicode normalization and categories (tokenizer)
  libpng-dev libjpeg-dev libwebp-dev pkg-config # image decoding (PNG, JPEG, WebP) and PNG output
  libgtest-dev                                  # tests
)
export DEBIAN_FRONTEND=noninteractive
if ! dpkg -s "${PACKAGES[@]}" >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
fi
