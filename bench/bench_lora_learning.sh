#!/usr/bin/env bash
# LoRA learning benchmark: does `t2i train-lora` learn what diffusers' train_text_to_image_lora.py
# learns on the same data, steps and flags? The tiny preset model (init-model --preset tiny) gets
# a rank-4 LoRA trained on 40 synthetic captioned images (demo-data) for STEPS steps by both,
# then diffusers computes each result's loss on 8 held-out images (bench/heldout_loss.py --lora:
# fixed timesteps and noise). Prints one JSON line per run, with the training seconds.
#
#   DIFFUSERS_LORA_SCRIPT=/path/to/train_text_to_image_lora.py bench/bench_lora_learning.sh [STEPS=300]
#
# The script comes from diffusers' repository (examples/text_to_image/); a newer one than the
# installed diffusers needs its check_min_version(...) line removed. DIFFUSERS_PYTHON: a python
# with diffusers, peft, accelerate and datasets (default: bench/diffusers_venv.sh's).
set -euo pipefail
cd "$(dirname "$0")/.."
T2I=${T2I:-./build/t2i}
STEPS=${1:-300}
WORK=${WORK:-/tmp/t2i-bench-lora}
PY=${DIFFUSERS_PYTHON:-$(bench/diffusers_venv.sh)}
SCRIPT=${DIFFUSERS_LORA_SCRIPT:?set DIFFUSERS_LORA_SCRIPT to diffusers examples/text_to_image/train_text_to_image_lora.py}
rm -rf "$WORK"
mkdir -p "$WORK"
source bench/learning_data.sh
learning_data "$WORK"
sed '/^check_min_version(/d' "$SCRIPT" > "$WORK/train_text_to_image_lora.py"
FLAGS=(--pretrained_model_name_or_path "$WORK/base" --train_data_dir "$WORK/train" --resolution 64
  --center_crop --random_flip --train_batch_size 8 --max_train_steps "$STEPS" --learning_rate 1e-3
  --lr_scheduler cosine --lr_warmup_steps 20 --checkpointing_steps 1000000 --rank 4)
heldout() {
  "$PY" bench/heldout_loss.py --model "$WORK/base" --data "$WORK/heldout" --resolution 64 "$@" 2>/dev/null
}
heldout | sed 's/^{/{"variant": "untrained", /'
for seed in 0 1; do
  start=$(date +%s.%N)
  "$T2I" train-lora "${FLAGS[@]}" --seed "$seed" --num_threads 2 --report_to none \
    --output_dir "$WORK/t2i_$seed" > "$WORK/t2i_$seed.log" 2>&1
  t=$(echo "$(date +%s.%N) - $start" | bc)
  heldout --lora "$WORK/t2i_$seed" | sed "s/^{/{\"variant\": \"t2i train-lora\", \"seed\": $seed, \"wall_s\": $t, /"
  start=$(date +%s.%N)
  OMP_NUM_THREADS=2 "$PY" "$WORK/train_text_to_image_lora.py" "${FLAGS[@]}" --seed "$seed" \
    --report_to tensorboard --output_dir "$WORK/diffusers_$seed" > "$WORK/diffusers_$seed.log" 2>&1
  t=$(echo "$(date +%s.%N) - $start" | bc)
  heldout --lora "$WORK/diffusers_$seed" | sed "s/^{/{\"variant\": \"diffusers lora script\", \"seed\": $seed, \"wall_s\": $t, /"
done
