#!/usr/bin/env bash
# Shared set-up for run.sh and test.sh: install the Debian packages that are
# missing (only those), then configure and build into build/ (reused on a
# second run). Sourced, not executed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACKAGES=(build-essential cmake pkg-config protobuf-compiler libprotobuf-dev
          libopenblas-dev libopenmpi-dev openmpi-bin libgtest-dev libcli11-dev
          nlohmann-json3-dev gnuplot-nox iproute2 libsentencepiece-dev python3)
"$ROOT/scripts/install_missing.sh" "${PACKAGES[@]}"
mkdir -p "$ROOT/build"
JOBS=${JOBS:-$(nproc)}
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} > "$ROOT/build/configure.log" 2>&1 \
  || { cat "$ROOT/build/configure.log"; exit 1; }
cmake --build "$ROOT/build" -j "$JOBS"
