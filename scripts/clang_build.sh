#!/usr/bin/env bash
# Shared by ci_sanitize.sh and ci_fuzz.sh (sourced, after ROOT is set): the
# one clang build both use, build-asan/: AddressSanitizer + UBSan on every
# object, libFuzzer's coverage on the sources that read the fuzzers' inputs
# (SWITCHYARD_FUZZ), CUDA off. One build, not two: the fuzz targets link the
# same sanitized libraries the test programs do (3 minutes less of CI).
#   clang_build TARGET...   configures (once) and builds the targets
"$ROOT/scripts/install_missing.sh" clang libclang-rt-dev llvm
BUILD=$ROOT/build-asan
clang_build() {
  mkdir -p "$BUILD"
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ \
    -DSWITCHYARD_SANITIZE=ON -DSWITCHYARD_FUZZ=ON -DSWITCHYARD_CUDA=OFF > "$BUILD/configure.log" 2>&1 \
    || { cat "$BUILD/configure.log"; return 1; }
  cmake --build "$BUILD" -j "${JOBS:-$(nproc)}" --target "$@"
}
