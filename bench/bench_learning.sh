#!/usr/bin/env bash
# Learning benchmark: does a training variant learn what fp32 learns? The tiny preset model
# (init-model --preset tiny) is fine-tuned on 40 synthetic captioned images (demo-data) for STEPS
# steps, then diffusers computes each result's loss on 8 held-out images (bench/heldout_loss.py:
# fixed timesteps and noise). Variants: fp32 with two seeds (the noise between runs), fp32 with
# the caches, bf16 with the caches. Prints one JSON line per variant. ~6 minutes on 2 cores.
#
#   bench/bench_learning.sh [STEPS=300]
# DIFFUSERS_PYTHON: a python with diffusers (default: bench/diffusers_venv.sh's).
set -euo pipefail
cd "$(dirname "$0")/.."
T2I=${T2I:-./build/t2i}
STEPS=${1:-300}
WORK=${WORK:-/tmp/t2i-bench-learning}
PY=${DIFFUSERS_PYTHON:-$(bench/diffusers_venv.sh)}
rm -rf "$WORK"
source bench/learning_data.sh
learning_data "$WORK"
run() {
  local name=$1 seed=$2; shift 2
  "$T2I" train --pretrained_model_name_or_path "$WORK/base" --train_data_dir "$WORK/train" \
    --resolution 64 --center_crop --random_flip --train_batch_size 8 --max_train_steps "$STEPS" \
    --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 20 --checkpointing_steps 1000000 \
    --report_to jsonl --seed "$seed" --num_threads 2 --output_dir "$WORK/$name" "$@" > "$WORK/$name.log" 2>&1
  local train_s
  train_s=$(grep -o '"step_time":[0-9.e+-]*' "$WORK/$name/logs/metrics.jsonl" | cut -d: -f2 | awk '{s += $1} END {printf "%.1f", s}')
  "$PY" bench/heldout_loss.py --model "$WORK/$name" --data "$WORK/heldout" --resolution 64 2>/dev/null |
    sed "s/^{/{\"variant\": \"$name\", \"seed\": $seed, \"train_s\": $train_s, /"
}
"$PY" bench/heldout_loss.py --model "$WORK/base" --data "$WORK/heldout" --resolution 64 2>/dev/null | sed 's/^{/{"variant": "untrained", /'
run fp32 0
run fp32_seed1 1
run fp32_cached 0 --cache_latents --cache_text_encoder_outputs
run bf16_cached 0 --cache_latents --cache_text_encoder_outputs --mixed_precision bf16
