#!/usr/bin/env bash
# Benchmark: `t2i generate` on the small-sd shapes (random weights, see bench_train.sh), 256x256,
# 20 steps, guidance 7.5 (UNet batch 2 per step), 2 threads. Prints the time per denoising step
# and the end-to-end seconds per image (prompt encoding + denoising + VAE decode), median of 3.
#
#   bench/bench_generate.sh [SCHEDULER=ddim]
set -euo pipefail
cd "$(dirname "$0")/.."
T2I=${T2I:-./build/t2i}
SCHED=${1:-ddim}
WORK=${WORK:-/tmp/t2i-bench-train}
[ -f "$WORK/model/model_index.json" ] ||
  "$T2I" init-model --output "$WORK/model" --preset small --tokenizer ../shared/fixtures/small-sd/tokenizer
for i in 1 2 3; do
  "$T2I" generate --model "$WORK/model" --prompt "a red circle on a white background" \
    --scheduler "$SCHED" --num_inference_steps 20 --guidance_scale 7.5 --seed $i \
    --num_threads 2 --output "$WORK/gen-$i.png" 2>&1 | grep -o '[0-9.]* s/step), [0-9.]* s in all'
done | sort -g | sed -n 2p | awk -v s="$SCHED" '{gsub(/[(),]/, ""); printf "{\"bench\":\"generate\",\"scheduler\":\"%s\",\"s_per_step\":%s,\"s_per_image\":%s}\n", s, $1, $3}'
