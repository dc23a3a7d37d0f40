#!/usr/bin/env bash
# Benchmark: full training steps side by side, in one run on one machine: diffusers' reference
# loop (bench/diffusers_step.py: train_text_to_image.py's step with its data path, fp32), t2i at
# equal math (`t2i train`, fp32: data loading, VAE + text encoder + UNet forward / backward,
# AdamW), t2i with --use_ema, t2i with --cache_latents --cache_text_encoder_outputs, and the
# same with --mixed_precision bf16. Shapes: ../shared/fixtures/small-sd (UNet 35 M, VAE 3.9 M,
# text encoder 17.4 M; random weights), batch 2, 256x256 images (decoded from 320x320 PNGs and
# resized with lanczos, as the original's default), 2 threads, data loading in the training
# thread (--dataloader_num_workers 0, the original's default).
# Prints one JSON line per variant: median s/step over the steps after the first two, peak RSS,
# the speed-up over diffusers and the median seconds per stage (t2i --profile; the same stage
# boundaries in diffusers_step.py). Model FLOP utilisation: UNet FLOPs of a step (3x the forward
# of `bench_unet --mode flops`) over the UNet's forward + backward time and this machine's peak
# (a 2048^3 float32 matmul, measured here once).
#
#   bench/bench_train.sh [STEPS=12] [extra t2i train flags...]
# DIFFUSERS_PYTHON: a python with diffusers (default: bench/diffusers_venv.sh's); "none" skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
T2I=${T2I:-./build/t2i}
BENCH_UNET=${BENCH_UNET:-$(dirname "$T2I")/bench_unet}
STEPS=${1:-12}
shift || true
WORK=${WORK:-/tmp/t2i-bench-train}
if [ ! -f "$WORK/model/model_index.json" ]; then
  rm -rf "$WORK"
  "$T2I" init-model --output "$WORK/model" --preset small --tokenizer ../shared/fixtures/small-sd/tokenizer
  "$T2I" demo-data --output "$WORK/data" --count 32 --size 320
fi
PY=${DIFFUSERS_PYTHON:-}
if [ -z "$PY" ]; then PY=$(bench/diffusers_venv.sh 2>/dev/null || echo none); fi

# The UNet's FLOPs of one training step (forward + backward = 3x forward) and the machine's peak.
step_gflops=none
peak_gflops=none
if [ -x "$BENCH_UNET" ]; then
  step_gflops=$("$BENCH_UNET" --threads 2 --mode flops --config "$WORK/model/unet/config.json" \
    --batch 2 --latent 32 | sed -n 's/.*"gflops":\([0-9.e+-]*\).*/\1/p' | awk '{print 3 * $1}')
  peak_gflops=$("$BENCH_UNET" --threads 2 --mode peak | sed -n 's/.*"gflops":\([0-9.e+-]*\).*/\1/p')
fi

diffusers_s=none
if [ "$PY" != none ]; then
  line=$("$PY" bench/diffusers_step.py --model "$WORK/model" --device cpu --mixed_precision no \
    --data "$WORK/data" --resolution 256 --batch 2 --threads 2 --steps "$STEPS" 2>/dev/null | tail -n 1)
  diffusers_s=$(echo "$line" | sed 's/.*"median_s_per_step": \([0-9.e+-]*\).*/\1/')
  echo "$line" | python3 -c "
import json, sys
d = json.loads(sys.stdin.read()); p = d['profile']; s, g, pk = d['median_s_per_step'], '$step_gflops', '$peak_gflops'
mfu = None if g == 'none' or pk == 'none' else round(float(g) / (p['unet_fwd_s'] + p['bwd_s']) / float(pk), 3)
print(json.dumps({'bench': 'train_step', 'variant': 'diffusers_fp32', 'steps': $STEPS, 'median_s_per_step': s,
                  'peak_rss_mb': d['peak_rss_mb'], 'speedup_vs_diffusers': 1.0, 'unet_mfu': mfu, 'profile': p}))"
fi

run() {
  local name=$1; shift
  rm -rf "$WORK/out-$name"
  "$T2I" train --pretrained_model_name_or_path "$WORK/model" --train_data_dir "$WORK/data" \
    --resolution 256 --train_batch_size 2 --max_train_steps "$STEPS" --num_threads 2 \
    --checkpointing_steps 1000000 --report_to jsonl --seed 0 --profile \
    --output_dir "$WORK/out-$name" "$@" > "$WORK/$name.log" 2>&1
  python3 - "$WORK/out-$name/logs/metrics.jsonl" "$name" "$STEPS" "$diffusers_s" "$step_gflops" "$peak_gflops" <<'PY'
import json, sys
path, name, steps, ref, g, pk = sys.argv[1:]
rows = [json.loads(l) for l in open(path)][2:]
med = lambda xs: sorted(xs)[len(xs) // 2]
s = med([r["step_time"] for r in rows])
prof = {k: round(med([r["profile"][k] for r in rows]), 4) for k in rows[0]["profile"]}
mfu = None if g == "none" or pk == "none" else round(float(g) / (prof["unet_fwd_s"] + prof["bwd_s"]) / float(pk), 3)
print(json.dumps({"bench": "train_step", "variant": name, "steps": int(steps), "median_s_per_step": round(s, 4),
                  "peak_rss_mb": round(rows[-1]["peak_rss_mb"]),
                  "speedup_vs_diffusers": None if ref == "none" else round(float(ref) / s, 2),
                  "unet_mfu": mfu, "profile": prof}))
PY
}
run equal_math "$@"
run ema --use_ema "$@"
run cached --cache_latents --cache_text_encoder_outputs "$@"
run cached_bf16 --cache_latents --cache_text_encoder_outputs --mixed_precision bf16 "$@"
