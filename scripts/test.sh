#!/usr/bin/env bash
# Same set-up as run.sh, then every test through ctest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT/build"
ctest --output-on-failure -j "${CTEST_JOBS:-2}" "$@"
