#!/usr/bin/env bash
# Same set-up as run.sh, then every test through ctest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT/build"
# --timeout: the limit of every test that sets none (the unit tests; the
# longest test takes ~30 s), so a hung test fails, named, instead of holding
# CI to its own limit.
ctest --output-on-failure --timeout 300 -j "${CTEST_JOBS:-2}" "$@"
