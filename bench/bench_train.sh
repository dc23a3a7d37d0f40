#!/usr/bin/env bash
# Benchmark: full `t2i train` steps (data loading, VAE + text encoder + UNet forward/backward,
# AdamW, optional EMA) on the small-sd shapes of ../shared/fixtures/small-sd (UNet 35 M, VAE 3.9 M,
# text encoder 17.4 M; random weights), batch 2, 256x256 images (decoded from 320x320 PNGs and
# resized with lanczos, as the original's default), 2 threads, data loading in the training
# thread (--dataloader_num_workers 0, the original's default). Prints median s/step over the
# steps after the first two, and the peak RSS of the training process.
#
#   bench/bench_train.sh [STEPS=12] [extra t2i train flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
T2I=${T2I:-./build/t2i}
STEPS=${1:-12}
shift || true
WORK=${WORK:-/tmp/t2i-bench-train}
if [ ! -f "$WORK/model/model_index.json" ]; then
  rm -rf "$WORK"
  "$T2I" init-model --output "$WORK/model" --preset small --tokenizer ../shared/fixtures/small-sd/tokenizer
  "$T2I" demo-data --output "$WORK/data" --count 32 --size 320
fi
run() {
  local name=$1; shift
  rm -rf "$WORK/out-$name"
  "$T2I" train --pretrained_model_name_or_path "$WORK/model" --train_data_dir "$WORK/data" \
    --resolution 256 --train_batch_size 2 --max_train_steps "$STEPS" --num_threads 2 \
    --checkpointing_steps 1000000 --report_to jsonl --seed 0 \
    --output_dir "$WORK/out-$name" "$@" > "$WORK/$name.log" 2>&1
  local metrics="$WORK/out-$name/logs/metrics.jsonl"
  local median rss
  median=$(tail -n +3 "$metrics" | sed 's/.*"step_time":\([0-9.e+-]*\).*/\1/' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  rss=$(tail -n 1 "$metrics" | sed 's/.*"peak_rss_mb":\([0-9.e+-]*\).*/\1/')
  printf '{"bench":"train_step","variant":"%s","steps":%s,"median_s_per_step":%s,"peak_rss_mb":%.0f}\n' \
    "$name" "$STEPS" "$median" "$rss"
}
run plain "$@"
run ema --use_ema "$@"
