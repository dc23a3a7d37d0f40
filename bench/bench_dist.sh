#!/usr/bin/env bash
# Benchmark: data-parallel training on one machine over loopback Gloo (t2i launch).
#   1. all-reduce latency / bus bandwidth between 2 processes (bench_allreduce), 4 KB .. 64 MB;
#   2. step time of `t2i train` on the small-sd shapes (as bench_train.sh: UNet 35 M, batch 2 per
#      process, 256x256) for 1 process vs 2 processes, each with 1 thread: the overhead of the
#      gradient all-reduce (8 x 2 = 16 samples) ... reported as median s/step and samples/s;
#   3. AdamW state per process (metrics.jsonl optimizer_state_mb of rank 0) and peak RSS of
#      rank 0 for 2 processes without and with --zero_stage 1.
# Each process uses one thread (--num_threads 1) so that 2 processes fit the 2 cores.
#
#   bench/bench_dist.sh [STEPS=12]
set -euo pipefail
cd "$(dirname "$0")/.."
T2I=${T2I:-./build/t2i}
STEPS=${1:-12}
WORK=${WORK:-/tmp/t2i-bench-train}
PORT=${PORT:-29731}
if [ ! -f "$WORK/model/model_index.json" ]; then
  rm -rf "$WORK"
  "$T2I" init-model --output "$WORK/model" --preset small --tokenizer ../shared/fixtures/small-sd/tokenizer
  "$T2I" demo-data --output "$WORK/data" --count 32 --size 320
fi

"$T2I" launch --nproc_per_node 2 --master_port "$PORT" -- ./build/bench_allreduce --threads 1 --max_mb 64

run() {
  local name=$1 nproc=$2; shift 2
  rm -rf "$WORK/out-$name"
  local cmd=("$T2I" train)
  [ "$nproc" -gt 1 ] && cmd=("$T2I" launch --nproc_per_node "$nproc" --master_port "$PORT" -- train)
  "${cmd[@]}" --pretrained_model_name_or_path "$WORK/model" --train_data_dir "$WORK/data" \
    --resolution 256 --train_batch_size 2 --max_train_steps "$STEPS" --num_threads 1 \
    --checkpointing_steps 1000000 --report_to jsonl --seed 0 \
    --output_dir "$WORK/out-$name" "$@" > "$WORK/$name.log" 2>&1
  local metrics="$WORK/out-$name/logs/metrics.jsonl"
  local median rss opt sps
  median=$(tail -n +3 "$metrics" | sed 's/.*"step_time":\([0-9.e+-]*\).*/\1/' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  rss=$(tail -n 1 "$metrics" | sed 's/.*"peak_rss_mb":\([0-9.e+-]*\).*/\1/')
  opt=$(tail -n 1 "$metrics" | sed 's/.*"optimizer_state_mb":\([0-9.e+-]*\).*/\1/')
  sps=$(awk -v n="$nproc" -v t="$median" 'BEGIN {printf "%.3f", n * 2 / t}')
  printf '{"bench":"train_step","variant":"%s","processes":%s,"threads_per_process":1,"steps":%s,"median_s_per_step":%s,"samples_per_s":%s,"rank0_peak_rss_mb":%.0f,"rank0_optimizer_state_mb":%.1f}\n' \
    "$name" "$nproc" "$STEPS" "$median" "$sps" "$rss" "$opt"
}
run one-process 1
run two-processes 2
run two-processes-zero1 2 --zero_stage 1
