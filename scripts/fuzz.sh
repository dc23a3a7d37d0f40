#!/usr/bin/env bash
# Fuzzes one parser of user files with libFuzzer + AddressSanitizer + UndefinedBehaviorSanitizer.
#   scripts/fuzz.sh TARGET SECONDS     TARGET: safetensors json_config tokenizer prompt metadata
#                                              image checkpoint_state (or `list`)
# Builds build-fuzz/ (clang), starts from the seed corpus fuzz/corpus/TARGET, keeps what it
# learns in build-fuzz/corpus/TARGET and writes crashing inputs to build-fuzz/findings/TARGET/.
# A finding: fix it, then copy the input into fuzz/corpus/TARGET/ so the sanitized tests replay
# it on every CI run.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS="safetensors json_config tokenizer prompt metadata image checkpoint_state"
if [ $# -lt 1 ] || [ "$1" = list ]; then echo "$TARGETS"; exit 0; fi
TARGET=$1
SECONDS_TO_RUN=${2:-60}
case " $TARGETS " in *" $TARGET "*) ;; *) echo "unknown target '$TARGET' (one of: $TARGETS)" >&2; exit 2;; esac
cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DT2I_FUZZ=ON -DBUILD_TESTS=OFF -DBUILD_BENCHMARKS=OFF > /dev/null
cmake --build build-fuzz --target "fuzz_$TARGET"
mkdir -p "build-fuzz/corpus/$TARGET" "build-fuzz/findings/$TARGET"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:${ASAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp:${LSAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:${UBSAN_OPTIONS:-}"
exec "build-fuzz/fuzz_$TARGET" "build-fuzz/corpus/$TARGET" "fuzz/corpus/$TARGET" \
  -max_total_time="$SECONDS_TO_RUN" -timeout=20 -rss_limit_mb=4096 -max_len=65536 \
  -artifact_prefix="build-fuzz/findings/$TARGET/" -print_final_stats=1
