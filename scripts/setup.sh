#!/usr/bin/env bash
# Shared set-up for run.sh and test.sh: install the Debian packages that are
# missing (only those), then configure and build into build/ (reused on a
# second run). Sourced, not executed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACKAGES=(build-essential cmake pkg-config protobuf-compiler libprotobuf-dev
          libopenblas-dev libopenmpi-dev openmpi-bin libgtest-dev libcli11-dev
          nlohmann-json3-dev gnuplot-nox)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
mkdir -p "$ROOT/build"
JOBS=${JOBS:-$(nproc)}
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} > "$ROOT/build/configure.log" 2>&1 \
  || { cat "$ROOT/build/configure.log"; exit 1; }
cmake --build "$ROOT/build" -j "$JOBS"
