#!/usr/bin/env bash
# The layers depend one way: examples -> runtime -> {ops, comm} -> core.
# Fails naming each include that points from a lower layer into a higher one
# (or sideways between ops and comm).
#   layering_test.sh SOURCE_DIR
set -uo pipefail
cd "$1"
allowed() {  # layer -> the project folders its files may include
  case $1 in
    core) echo "core" ;;
    ops) echo "core ops" ;;
    comm) echo "core comm" ;;
    runtime) echo "core ops comm runtime configs" ;;
  esac
}
bad=0
for layer in core ops comm runtime; do
  ok=$(allowed $layer)
  while IFS= read -r line; do
    file=${line%%:*}
    inc=$(sed -E 's/.*#include "([^"]+)".*/\1/' <<<"$line")
    top=${inc%%/*}
    [ "$top" = "$inc" ] && continue  # a generated header without a folder (switchyard.pb.h)
    if ! grep -qw "$top" <<<"$ok"; then
      echo "layering: $file includes $inc ($layer may include only: $ok)"
      bad=1
    fi
  done < <(grep -rHn '#include "' "$layer" --include='*.h' --include='*.cc' --include='*.cu' --include='*.cuh')
done
[ $bad -eq 0 ] && echo "layering: core <- {ops, comm} <- runtime <- examples holds"
exit $bad
