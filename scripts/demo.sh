#!/usr/bin/env bash
# The README's main job on built-in defaults: create a tiny Stable Diffusion model and a small
# synthetic captioned dataset, fine-tune the UNet with `t2i train`, show the loss going down and
# inspect the saved diffusers folder. About two minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
T2I=${T2I:-./build/t2i}
OUT=${1:-out/demo}
rm -rf "$OUT"
"$T2I" init-model --output "$OUT/base-model" --preset tiny --seed 0
"$T2I" demo-data --output "$OUT/data" --count 48 --size 96
"$T2I" train \
  --pretrained_model_name_or_path "$OUT/base-model" \
  --train_data_dir "$OUT/data" \
  --resolution 64 --center_crop --random_flip \
  --train_batch_size 8 --max_train_steps 300 \
  --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 20 \
  --use_ema --checkpointing_steps 100 --checkpoints_total_limit 2 \
  --logging_steps 25 --seed 0 \
  --output_dir "$OUT/model"
"$T2I" inspect "$OUT/model" > "$OUT/inspect.txt"
"$T2I" plot-loss --metrics "$OUT/model/logs/metrics.jsonl" --output "$OUT/loss.png"
echo "saved: $OUT/model (diffusers layout; summary in $OUT/inspect.txt)"
echo "loss per step: $OUT/model/logs/metrics.jsonl, drawn in $OUT/loss.png"
