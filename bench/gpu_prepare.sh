#!/usr/bin/env bash
# Prepares what bench/gpu_check.sh needs on a GPU machine that cannot download anything, on a
# Debian 12 machine that can: the Debian packages t2i builds against (as .deb files, unpacked
# there into a private prefix), the fixtures the CUDA tests and benchmarks read, and the Python
# wheels of the diffusers side-by-side run. Everything goes to .gpu-deps/ (git-ignored; about
# 40 MB): carry that folder to the GPU machine beside the checkout.
#
#   bench/gpu_prepare.sh            then, on the GPU machine:  bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.gpu-deps
rm -rf "$OUT"
mkdir -p "$OUT/debs" "$OUT/fixtures" "$OUT/wheels"
# Build dependencies that a CUDA image usually lacks (headers + the libraries they link to).
# The runtime libraries are taken from Debian 12 too, so the build does not depend on what the
# image's distribution ships.
PACKAGES=(
  nlohmann-json3-dev libgloo-dev libgtest-dev
  libicu-dev libicu72 icu-devtools
  libpng-dev libpng16-16 zlib1g-dev
  libjpeg62-turbo-dev libjpeg62-turbo
  libwebp-dev libwebp7 libwebpdemux2 libwebpmux3
  pkgconf pkgconf-bin libpkgconf3
)
(cd "$OUT/debs" && apt-get download "${PACKAGES[@]}" >/dev/null)
cp -r ../shared/fixtures/tiny-sd1 ../shared/fixtures/clip-tokenizer "$OUT/fixtures/"
# diffusers' training step beside t2i's (bench/diffusers_step.py): diffusers is pure Python; the
# GPU image already holds torch 2.11, transformers and huggingface_hub.
python3 -m pip download -q --no-deps --only-binary=:all: -d "$OUT/wheels" diffusers==0.42.1
du -sh "$OUT"
