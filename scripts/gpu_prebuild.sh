#!/usr/bin/env bash
# Run HERE, before a device call: builds scripts/gpu_check.sh's GPU targets
# (sm_90, Release) on this machine's cores and packs them, stripped, into
# .gpubin/ (git-ignored) with the checksums of every tracked file they were
# built from. gpu_check.sh uses them where every checksum still matches and
# every library they need resolves there (the libraries are the Debian
# packages of .gpudeps/, unpacked as for a build there), else builds as
# before. The build takes a few minutes of a 16-core GPU machine's lease;
# here it costs none.
#   bash scripts/gpu_prebuild.sh       then carry [".gpudeps", ".gpubin"]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TARGETS=(train_switch backend_ops_test routed_attention_test tensor_test model_test moe_layer_test recompute_test init_from_test bench_ops
         communicator_conformance_test bench_comm scaling_sweep bench_attention)
GEN=()
command -v ninja > /dev/null && GEN=(-G Ninja)  # (as gpu_check.sh: Ninja where there is one)
[ -f build-gpu/CMakeCache.txt ] ||
  cmake "${GEN[@]}" -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DSWITCHYARD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90
grep -q '^CMAKE_CUDA_ARCHITECTURES.*=90$' build-gpu/CMakeCache.txt ||
  { echo "gpu_prebuild.sh: build-gpu is not configured for sm_90 alone"; exit 1; }
# What they are built from, summed before the build (a file edited while it
# runs then fails the check there, and the build runs there instead): the
# sources and build files that travel, tracked or not (not ignored).
rm -rf .gpubin.tmp && mkdir -p .gpubin.tmp/bin
git ls-files -z -co --exclude-standard -- '*.cc' '*.h' '*.cu' '*.cuh' '*.proto' '*CMakeLists.txt' '*.cmake' '*.in' |
  xargs -0 sha256sum > .gpubin.tmp/sources.sha256
cmake --build build-gpu -j "$(nproc)" --target "${TARGETS[@]}"
for t in "${TARGETS[@]}"; do strip -o ".gpubin.tmp/bin/$t" "build-gpu/bin/$t"; done
# (-9: a 64 MiB window spans the programs, which share most of their code)
XZ_OPT=-9 tar -C .gpubin.tmp -cJf .gpubin.tmp/bin.tar.xz bin && rm -rf .gpubin.tmp/bin
rm -rf .gpubin && mv .gpubin.tmp .gpubin
grep -qx '/.gpubin/' .gitignore || echo "gpu_prebuild.sh: add /.gpubin/ to .gitignore"
du -sh .gpubin/bin.tar.xz
