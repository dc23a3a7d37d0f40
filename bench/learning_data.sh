# Sourced by bench/bench_learning.sh and bench/bench_lora_learning.sh: the learning benchmarks'
# model and data. learning_data WORK writes WORK/base (the tiny preset, seed 0) and 48 demo
# images, of which WORK/train holds the first 40 and WORK/heldout the last 8. Needs $T2I.
learning_data() {
  local work=$1
  "$T2I" init-model --output "$work/base" --preset tiny --seed 0 > /dev/null
  "$T2I" demo-data --output "$work/all" --count 48 --size 96 > /dev/null
  mkdir -p "$work/train" "$work/heldout"
  head -n 40 "$work/all/metadata.jsonl" > "$work/train/metadata.jsonl"
  tail -n 8 "$work/all/metadata.jsonl" > "$work/heldout/metadata.jsonl"
  local split f
  for split in train heldout; do
    for f in $(sed 's/.*"file_name":"\([^"]*\)".*/\1/' "$work/$split/metadata.jsonl"); do
      cp "$work/all/$f" "$work/$split/"
    done
  done
}
