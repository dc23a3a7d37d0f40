#!/usr/bin/env bash
# The GPU check, in one call, on one H100 / H200 whose python3 holds torch 2.x with CUDA (nothing
# is downloaded: bench/gpu_prepare.sh made .gpu-deps/ beforehand, on a machine with Debian's
# packages). At most ~8 minutes on an H200 (16 cores):
#   1. builds t2i against python3's torch (the Debian build deps unpacked from .gpu-deps/),
#   2. runs the CUDA tests (CUDA vs CPU: CLIP / VAE forward, sampler steps, training steps) and
#      the device, optimizer and precision tests,
#   3. benchmarks `t2i train` on an SD 1.5-shaped model (`init-model --preset sd15`, random
#      weights) at 512x512, bf16, batch 1 and the largest batch that fits, with and without
#      gradient checkpointing: samples/s, s/step, peak GPU memory, model FLOP utilisation
#      (3 x the UNet's forward FLOPs per sample, counted by bench_unet --mode flops, x samples/s
#      / the GPU's dense bf16 peak; the VAE encode and text encoder are not counted),
#   4. the same training step in diffusers (bench/diffusers_step.py) where its wheel was carried,
#   5. `t2i generate`: 25 steps, CFG 7.5, 512x512, bf16.
# Prints JSON lines and a summary; writes everything to $OUT (or ./gpu-check-out) too.
#
#   bench/gpu_check.sh        env: PEAK_TFLOPS (default: 989 for H100/H200 SXM), STEPS (8)
set -uo pipefail
cd "$(dirname "$0")/.."
T_START=$(date +%s)
ROOT_DIR=$PWD
DEPS=$ROOT_DIR/.gpu-deps
RESULTS=${OUT:-$ROOT_DIR/gpu-check-out}
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_check.log
STEPS=${STEPS:-8}
elapsed() { echo $(($(date +%s) - T_START)); }
say() { echo "[gpu_check $(elapsed)s] $*" | tee -a "$LOG" >&2; }
emit() { echo "$1" | tee -a "$RESULTS/results.jsonl"; }

[ -d "$DEPS/debs" ] || { say "missing $DEPS: run bench/gpu_prepare.sh on a machine with apt first"; exit 2; }
for tool in cmake ninja nvcc; do
  command -v $tool >/dev/null || [ -x /usr/local/cuda/bin/$tool ] ||
    { say "no $tool here: the build needs cmake, ninja and the CUDA toolkit (nvcc)"; exit 2; }
done
export PATH=$PATH:/usr/local/cuda/bin
PY=${PYTHON:-python3}
TORCH_CMAKE=$($PY -c 'import torch;print(torch.utils.cmake_prefix_path)') || { say "python3 has no torch"; exit 2; }
say "torch: $($PY -c 'import torch;print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' 2>/dev/null)"

# 1. Build dependencies into a private prefix, then t2i.
SYSROOT=$DEPS/root
if [ ! -f "$SYSROOT/.done" ]; then
  mkdir -p "$SYSROOT"
  for f in "$DEPS"/debs/*.deb; do dpkg -x "$f" "$SYSROOT"; done
  touch "$SYSROOT/.done"
fi
ARCH_LIB=$SYSROOT/usr/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH=$ARCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PKG_CONFIG_SYSROOT_DIR=$SYSROOT PKG_CONFIG_LIBDIR=$ARCH_LIB/pkgconfig:$SYSROOT/usr/share/pkgconfig
PKGCONF=$(command -v pkg-config || echo "$SYSROOT/usr/bin/pkgconf")
CXX=${CXX:-$(command -v clang++ || command -v g++)}
BUILD=$ROOT_DIR/build-gpu
say "configuring ($CXX)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$CXX" \
  -DCMAKE_PREFIX_PATH="$TORCH_CMAKE;$SYSROOT/usr" -DICU_ROOT="$SYSROOT/usr" \
  -DPKG_CONFIG_EXECUTABLE="$PKGCONF" -DCMAKE_CXX_FLAGS="-isystem $SYSROOT/usr/include -isystem $SYSROOT/usr/include/x86_64-linux-gnu" \
  -DT2I_FIXTURES_DIR="$DEPS/fixtures" -DT2I_SANITIZED_TESTS=OFF >>"$LOG" 2>&1 ||
  { say "configure failed (see $LOG)"; tail -30 "$LOG"; exit 1; }
say "building"
cmake --build "$BUILD" --target t2i t2i_tests bench_unet >>"$LOG" 2>&1 ||
  { say "build failed (see $LOG)"; grep -m5 -B2 -A8 "error" "$LOG"; exit 1; }
ldd "$BUILD/libt2i_nccl.so" | grep -E "libtorch_cuda|libnccl|libcudart" | tee -a "$LOG" >&2
T2I=$BUILD/t2i
say "built"

# 2. Tests: CUDA vs CPU, and the tests of what the GPU path changed (the fixtures they read:
#    tiny-sd1 and the CLIP tokenizer; the full suite runs in CI).
"$BUILD/t2i_tests" --gtest_filter='Cuda.*:Device.*:AdamW*:ClipGradNorm.*:GradScaler.*:Autocast.*' \
  2>&1 | tee "$RESULTS/tests.log" | grep -E "^\[  (PASSED|FAILED|SKIPPED) |tests ran" >&2
TESTS_OK=$?
emit "{\"check\":\"tests\",\"passed\":$(grep -c '^\[       OK' "$RESULTS/tests.log"),\"failed\":$(grep -c '^\[  FAILED  \].*ms)' "$RESULTS/tests.log"),\"skipped\":$(grep -c '^\[  SKIPPED \].*ms)' "$RESULTS/tests.log")}"
if ! $PY -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  say "no GPU here: built and tested only"
  exit $TESTS_OK
fi

# 3. Training benchmarks on an SD 1.5-shaped model.
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
W=/tmp/t2i-gpu-check
mkdir -p "$W"
[ -f "$W/sd15/model_index.json" ] || "$T2I" init-model --output "$W/sd15" --preset sd15 \
  --tokenizer "$DEPS/fixtures/clip-tokenizer" >>"$LOG" 2>&1
[ -d "$W/data" ] || "$T2I" demo-data --output "$W/data" --count 64 --size 512 >>"$LOG" 2>&1
FWD_GFLOPS=$("$BUILD/bench_unet" --config "$W/sd15/unet/config.json" --mode flops --batch 1 \
  --latent 64 --device cuda | sed -n 's/.*"gflops_per_sample":\([0-9.]*\).*/\1/p')
[ -n "$FWD_GFLOPS" ] || { say "bench_unet --mode flops failed: MFU reads 0"; FWD_GFLOPS=0; }
emit "{\"check\":\"unet_forward_flops\",\"gpu\":\"$GPU_NAME\",\"gflops_per_sample\":$FWD_GFLOPS,\"peak_tflops\":$PEAK_TFLOPS}"
say "init-model + data ready; UNet forward ${FWD_GFLOPS} GFLOPs per 512x512 sample"

# run_train NAME BATCH GC: prints one JSON line; returns non-zero when the run failed (OOM).
run_train() {
  local name=$1 bs=$2 gc=$3 out=$W/out-$1
  rm -rf "$out"
  local extra=()
  [ "$gc" = 1 ] && extra+=(--gradient_checkpointing)
  "$T2I" train --pretrained_model_name_or_path "$W/sd15" --train_data_dir "$W/data" \
    --output_dir "$out" --resolution 512 --center_crop --train_batch_size "$bs" \
    --max_train_steps "$STEPS" --learning_rate 1e-5 --mixed_precision bf16 --allow_tf32 \
    --device cuda --dataloader_num_workers 8 --num_threads 4 --checkpointing_steps 1000000 \
    --report_to jsonl --seed 0 "${extra[@]}" >"$RESULTS/train-$name.log" 2>&1
  local rc=$? m=$out/logs/metrics.jsonl
  if [ $rc -ne 0 ] || [ ! -s "$m" ]; then
    emit "{\"bench\":\"t2i_train\",\"variant\":\"$name\",\"batch\":$bs,\"gradient_checkpointing\":$gc,\"error\":\"$(tail -1 "$RESULTS/train-$name.log" | tr -d '"\\' | cut -c1-200)\"}"
    return 1
  fi
  $PY - "$m" "$bs" "$gc" "$name" "$FWD_GFLOPS" "$PEAK_TFLOPS" <<'PYEOF' | tee -a "$RESULTS/results.jsonl"
import json, sys, statistics
m, bs, gc, name, fwd, peak = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), float(sys.argv[6])
rows = [json.loads(l) for l in open(m)]
times = [r["step_time"] for r in rows[2:]] or [r["step_time"] for r in rows]
s = statistics.median(times)
sps = bs / s
print(json.dumps({"bench": "t2i_train", "variant": name, "batch": bs, "gradient_checkpointing": gc,
                  "median_s_per_step": round(s, 4), "samples_per_s": round(sps, 2),
                  "peak_gpu_mb": round(max(r.get("peak_gpu_mb", -1) for r in rows)),
                  "mfu": round(3 * fwd * 1e9 * sps / (peak * 1e12), 4),
                  "final_loss": rows[-1]["train_loss"]}))
PYEOF
}
run_train bs1 1 0
run_train bs1-gc 1 1
BEST=""
for bs in 32 16 8; do run_train "bs$bs" "$bs" 0 && { BEST=$bs; break; }; done
BEST_GC=""
for bs in 64 48 32; do run_train "bs$bs-gc" "$bs" 1 && { BEST_GC=$bs; break; }; done
say "training benchmarks done (largest batch: $BEST without, $BEST_GC with gradient checkpointing)"

# 4. diffusers side by side (its wheel carried in .gpu-deps/wheels).
if ls "$DEPS"/wheels/diffusers-*.whl >/dev/null 2>&1 && [ $(elapsed) -lt 360 ]; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/t2i-diffusers "$DEPS"/wheels/*.whl >>"$LOG" 2>&1
  for spec in "1 0" "${BEST:-16} 0"; do
    set -- $spec
    gcflag=(); [ "$2" = 1 ] && gcflag=(--gradient_checkpointing)
    PYTHONPATH=/tmp/t2i-diffusers $PY bench/diffusers_step.py --model "$W/sd15" --batch "$1" \
      --steps "$STEPS" "${gcflag[@]}" 2>>"$LOG" | tail -1 | tee -a "$RESULTS/results.jsonl"
  done
fi

# 5. Generation: 25 steps, CFG 7.5, 512x512, bf16 (the second run; the first warms up).
for i in 1 2; do
  "$T2I" generate --model "$W/sd15" --prompt "a photo of an astronaut riding a horse" \
    --num_inference_steps 25 --guidance_scale 7.5 --device cuda --torch_dtype bf16 --seed $i \
    --output "$W/gen-$i.png" >"$RESULTS/generate-$i.log" 2>&1
done
GEN=$(grep -o '[0-9.]* s/step), [0-9.]* s in all' "$RESULTS/generate-2.log" | tr -d '(),' )
emit "{\"bench\":\"t2i_generate\",\"steps\":25,\"resolution\":512,\"dtype\":\"bf16\",\"s_per_step\":$(echo "$GEN" | awk '{print $1+0}'),\"s_per_image\":$(echo "$GEN" | awk '{print $3+0}')}"
say "done in $(elapsed) s; results in $RESULTS/results.jsonl"
exit $TESTS_OK
