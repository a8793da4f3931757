#!/usr/bin/env bash
# Rehearses scripts/gpu_check.sh here, before a device call spends GPU time:
# in a private mount namespace (root), the system's copies of the C++
# libraries that the GPU machine lacks (OpenMPI, protobuf, GoogleTest,
# OpenBLAS, CLI11, nlohmann-json) are hidden, so gpu_check.sh must take them
# from .gpudeps/ as it will there. Without a GPU its CUDA tests skip; what
# this checks is the set-up, the configure, the build and that the programs
# and mpirun start with the unpacked libraries.
#   bash scripts/gpu_rehearse.sh [gpu_check.sh arguments]     (default: --stages ops,comm)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "gpu_rehearse.sh: needs root (unshare --mount)"; exit 2; }
ls .gpudeps/*.deb > /dev/null 2>&1 || { echo "gpu_rehearse.sh: no .gpudeps/*.deb: run scripts/gpu_deps.sh first"; exit 2; }
[ $# -gt 0 ] || set -- --stages ops,comm
rm -rf /tmp/sydeps
exec unshare --mount --propagation private bash -c '
  set -e
  L=/usr/lib/x86_64-linux-gnu
  for d in /usr/include/google /usr/include/gtest /usr/include/gmock /usr/include/CLI /usr/include/nlohmann \
           /usr/include/x86_64-linux-gnu/openblas-pthread $L/openmpi $L/openblas-pthread $L/cmake/GTest \
           /usr/share/cmake/CLI11 /usr/share/cmake/nlohmann_json $L/cmake/openblas; do
    [ -d "$d" ] && mount -t tmpfs none "$d"
  done
  for f in /usr/bin/protoc /usr/bin/mpirun /usr/bin/mpicxx /usr/bin/mpiexec $L/libgtest.a $L/libgtest_main.a \
           $L/libgmock.a $L/libprotobuf.so $L/libprotobuf.a $L/libprotobuf.so.32 $L/libprotoc.so.32; do
    [ -e "$f" ] && mount --bind /dev/null "$f"
  done
  export OUT=$PWD/build-gpu/rehearsal
  rm -rf "$OUT"
  exec bash scripts/gpu_check.sh "$@"
' gpu_rehearse "$@"
