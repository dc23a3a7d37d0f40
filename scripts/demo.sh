#!/usr/bin/env bash
# The README's main job on built-in defaults, nothing downloaded: create a tiny Stable Diffusion
# model and 24 captioned shape images, teach the model's VAE to reconstruct them (a fresh VAE
# decodes only noise), fine-tune the UNet with `t2i train`, and draw what changed:
#   OUT/before_after.png  row 1 the training image of six captions, row 2 what the model made of
#                         those captions before training, row 3 after training;
#   OUT/loss.png          the training loss per step;
#   OUT/model/            the fine-tuned model in diffusers layout (summary in OUT/inspect.txt).
# About three minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
T2I=${T2I:-./build/t2i}
OUT=${1:-out/demo}
# Starts afresh, but only over an earlier demo's folder: never deletes a folder of the user's.
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -f "$OUT/base-model/model_index.json" ]; then
  echo "demo.sh: '$OUT' exists and is not an earlier demo's output; give a new folder" >&2
  exit 2
fi
rm -rf "$OUT"
PROMPTS=("a red circle on a white background" "a blue square on a black background"
  "a yellow triangle on a white background" "a green circle on a black background"
  "a green triangle on a black background" "a blue circle on a white background")
SAMPLE=(--num_inference_steps 25 --guidance_scale 2 --height 32 --width 32 --seed 0)

"$T2I" init-model --output "$OUT/base-model" --preset tiny --seed 0
# --jitter 0: one centred picture per caption (24 captions).
"$T2I" demo-data --output "$OUT/data" --count 24 --size 96 --jitter 0
"$T2I" train-vae --pretrained_model_name_or_path "$OUT/base-model" --train_data_dir "$OUT/data" \
  --resolution 32 --train_batch_size 8 --max_train_steps 400 --learning_rate 2e-3 --seed 0 \
  --output_dir "$OUT/base-model-vae"
"$T2I" generate --model "$OUT/base-model-vae" --prompt "${PROMPTS[@]}" "${SAMPLE[@]}" \
  --output "$OUT/before"
# v_prediction: its loss weighs the clean image at high noise, where colour and background are
# decided, so the tiny model follows the captions within 1500 steps (with epsilon, 2000 steps
# still gave wrong colours and backgrounds). --caption_dropout_rate trains the empty prompt that
# guidance (--guidance_scale 2 above) needs.
"$T2I" train \
  --pretrained_model_name_or_path "$OUT/base-model-vae" \
  --train_data_dir "$OUT/data" \
  --resolution 32 --center_crop --random_flip \
  --train_batch_size 8 --max_train_steps 1500 \
  --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 20 \
  --prediction_type v_prediction --caption_dropout_rate 0.1 \
  --use_ema --checkpointing_steps 500 --checkpoints_total_limit 2 \
  --logging_steps 100 --seed 0 \
  --output_dir "$OUT/model"
"$T2I" generate --model "$OUT/model" --prompt "${PROMPTS[@]}" "${SAMPLE[@]}" --output "$OUT/after"
TRAINING_IMAGES=()
for p in "${PROMPTS[@]}"; do  # each prompt's picture, looked up in the dataset's metadata.jsonl
  f=$(grep -F "\"text\":\"$p\"" "$OUT/data/metadata.jsonl" | head -n 1 | sed 's/.*"file_name":"\([^"]*\)".*/\1/')
  TRAINING_IMAGES+=("$OUT/data/$f")
done
"$T2I" image-grid --columns 6 --cell_size 128 --output "$OUT/before_after.png" \
  "${TRAINING_IMAGES[@]}" "$OUT"/before/*.png "$OUT"/after/*.png > /dev/null
"$T2I" inspect "$OUT/model" > "$OUT/inspect.txt"
"$T2I" plot-loss --metrics "$OUT/model/logs/metrics.jsonl" --output "$OUT/loss.png" > /dev/null
echo "saved: $OUT/model (diffusers layout; summary in $OUT/inspect.txt)"
echo "six training prompts: training image / before / after training in $OUT/before_after.png"
echo "loss per step: $OUT/model/logs/metrics.jsonl, drawn in $OUT/loss.png"
