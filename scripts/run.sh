#!/usr/bin/env bash
# Installs what is missing, builds, and runs the main job: default training
# (configs/tiny.pbtxt on the built-in synthetic corpus). Extra arguments go to
# train_switch, e.g. ./scripts/run.sh --set train.steps=50; it runs in the
# repository's root, so relative paths in them are read from there. Metrics
# go to build/metrics.jsonl unless the arguments name --metrics.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
METRICS=(--metrics build/metrics.jsonl --overwrite)
for a in "$@"; do
  case $a in --metrics|--metrics=*) METRICS=() ;; esac
done
exec ./build/bin/train_switch --config configs/tiny.pbtxt "${METRICS[@]}" "$@"
