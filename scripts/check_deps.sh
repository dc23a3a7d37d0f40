#!/usr/bin/env bash
# Fails when a folder of src/ includes a folder above it (DESIGN.md section 4, issue 12):
#   util <- io <- tokenizer / models / schedulers / data <- pipeline;  io, util <- dist <- training <- cli
# schedulers/ reads its config through io/json_config.h (one function, from_json); data/ reads
# captions through tokenizer/. Prints every upward include with its file and line.
set -euo pipefail
cd "$(dirname "$0")/../src"
declare -A allowed=(
  [util]=""
  [io]="util"
  [tokenizer]="io util"
  [models]="io util"
  [schedulers]="io util"
  [data]="tokenizer io util"
  [pipeline]="models schedulers tokenizer io util"
  [dist]="io util"
  [training]="dist pipeline data models schedulers tokenizer io util"
  [cli]="training dist pipeline data models schedulers tokenizer io util"
)
bad=0
for dir in */; do
  dir=${dir%/}
  [ -n "${allowed[$dir]+set}" ] || { echo "check_deps: src/$dir is not in the table" >&2; bad=1; continue; }
  while IFS=: read -r file line text; do
    target=$(sed -E 's/.*#include "([a-z_]+)\/.*/\1/' <<<"$text")
    [ "$target" = "$dir" ] && continue
    if [[ " ${allowed[$dir]} " != *" $target "* ]]; then
      echo "src/$file:$line: $dir/ may not include $target/ ($text)" >&2
      bad=1
    fi
  done < <(grep -nE '^#include "[a-z_]+/' "$dir"/* /dev/null | sed -E 's/^([^:]+):([0-9]+):/\1:\2:/')
done
[ $bad -eq 0 ] && echo "check_deps: every include points down"
exit $bad
