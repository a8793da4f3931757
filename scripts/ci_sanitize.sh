#!/usr/bin/env bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer:
# built with clang, CUDA off, in build-asan/, run through ctest. Any report
# (memory error, leak, undefined behaviour) ends the program that made it
# with a non-zero exit, so its test fails and ctest prints the report.
# LeakSanitizer skips only OpenMPI's own leaks (scripts/lsan_mpi.supp: MPI,
# PMIx, hwloc, libevent, UCX); project code has no suppressions.
# Run after scripts/setup.sh (its packages); installs clang's if missing.
#   scripts/ci_sanitize.sh [ctest arguments]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/install_missing.sh" clang libclang-rt-dev llvm
BUILD=$ROOT/build-asan
mkdir -p "$BUILD"
# fast_unwind_on_malloc=0: OpenMPI unloads its components at MPI_Finalize and
# neither they nor libc keep frame pointers, so the fast unwinder's allocation
# stacks end in "<unknown module>", which no suppression can name; the DWARF
# unwinder reaches the MPI library frames (about 1.3x the CPU time).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:fast_unwind_on_malloc=0:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$ROOT/scripts/lsan_mpi.supp:print_suppressions=0}
start=$(date +%s)
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ \
  -DSWITCHYARD_SANITIZE=ON -DSWITCHYARD_CUDA=OFF > "$BUILD/configure.log" 2>&1 \
  || { cat "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" -j "${JOBS:-$(nproc)}"
echo "sanitize: built in $(( $(date +%s) - start )) s"
cd "$BUILD"
# Left out here (they run in the normal build): end-to-end checks of numbers,
# plots and timing that repeat code the unit tests already cover, and would
# take most of the sanitizer run's time at five times the cost.
SKIP='^(loss_baseline|parallel_equivalence|plot_metrics_dashboard|bench_ops_smoke|scaling_sweep.*|multihost)$'
ctest --output-on-failure -j "${CTEST_JOBS:-2}" -E "$SKIP" "$@"
