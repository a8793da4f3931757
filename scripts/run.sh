#!/usr/bin/env bash
# Installs what is missing, builds, and runs the main job: default training
# (configs/tiny.pbtxt on the built-in synthetic corpus). Extra arguments go to
# train_switch, e.g. ./scripts/run.sh --set train.steps=50
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
exec ./build/bin/train_switch --config configs/tiny.pbtxt --metrics build/metrics.jsonl --overwrite "$@"
