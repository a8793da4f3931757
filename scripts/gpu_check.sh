#!/usr/bin/env bash
# The GPU machine's one call: inventory, build, GPU tests, benchmarks, and the
# benchmark table last (the device tool returns the end of the output).
#
#   device run: bash scripts/gpu_check.sh [--no-bench]     carry: [".gpudeps"]
#
# It never installs from a registry (that machine has none). C++ libraries it
# lacks come from .gpudeps/ (scripts/gpu_deps.sh, run here first), unpacked
# under /tmp. Logs and JSON go to $OUT (the device tool brings them back) or
# build-gpu/out.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-$PWD/build-gpu/out}
mkdir -p "$OUT"
BENCH=1
[ "${1:-}" = "--no-bench" ] && BENCH=0
t0=$(date +%s)
stamp() { echo "[gpu_check $(( $(date +%s) - t0 ))s] $*"; }

# 1. What the machine has.
{
  nvidia-smi -L 2>&1 | head -2
  nvcc --version 2>&1 | tail -1
  for tool in cmake ninja mpirun mpicxx protoc python3; do printf '%-8s %s\n' "$tool" "$(command -v $tool || echo missing)"; done
  for h in gtest/gtest.h cblas.h CLI/CLI.hpp nlohmann/json.hpp google/protobuf/message.h; do
    f=$(find /usr/include /usr/local/include /usr/include/x86_64-linux-gnu -path "*/$h" 2>/dev/null | head -1)
    printf '%-28s %s\n' "$h" "${f:-missing}"
  done
} > "$OUT/inventory.txt" 2>&1
cat "$OUT/inventory.txt"

# 2. Libraries the machine lacks, from the carried Debian packages.
if grep -q missing "$OUT/inventory.txt" && ls .gpudeps/*.deb > /dev/null 2>&1; then
  stamp "unpacking .gpudeps into /tmp/sydeps"
  for f in .gpudeps/*.deb; do dpkg -x "$f" /tmp/sydeps; done
  P=/tmp/sydeps/usr
  export PATH=$P/bin:$PATH
  export LD_LIBRARY_PATH=$P/lib/x86_64-linux-gnu:$P/lib/x86_64-linux-gnu/openblas-pthread:${LD_LIBRARY_PATH:-}
  export CMAKE_PREFIX_PATH=$P:${CMAKE_PREFIX_PATH:-}
  export CPATH=$P/include:$P/include/x86_64-linux-gnu/openmpi:${CPATH:-}
  export OPAL_PREFIX=$P  # OpenMPI relocated from /usr
  EXTRA_CMAKE="-DMPI_CXX_COMPILER=$P/bin/mpicxx -DProtobuf_PROTOC_EXECUTABLE=$P/bin/protoc"
fi

# 3. Build: Ninja on every core, CUDA for sm_90.
stamp "configure"
GEN=""; command -v ninja > /dev/null && GEN="-G Ninja"
cmake $GEN -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DSWITCHYARD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  ${EXTRA_CMAKE:-} > "$OUT/configure.log" 2>&1 || { tail -40 "$OUT/configure.log"; exit 1; }
stamp "build"
cmake --build build-gpu -j "$(nproc)" > "$OUT/build.log" 2>&1 || { grep -E "error|Error" "$OUT/build.log" | head -40; exit 1; }

# 4. Every test (the CUDA instances run here), GPU ones summarised.
stamp "tests"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir build-gpu -j 8 --timeout 300 --output-on-failure > "$OUT/ctest.log" 2>&1
ctest_rc=$?
grep -E "tests passed|tests failed|\(Failed\)|\(Timeout\)|Skipped" "$OUT/ctest.log" | tail -25
build-gpu/bin/backend_ops_test --gtest_filter='*cuda*' > "$OUT/backend_ops_cuda.log" 2>&1
grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|differs|never written" "$OUT/backend_ops_cuda.log" | head -30
# The sparse attention layer on the GPU (routed, local and block top-k heads):
# no leak in training mode, its controls, CPU agreement and bitwise reruns
# (the op cases are in backend_ops_test).
build-gpu/bin/routed_attention_test --gtest_filter='RoutedAttentionCuda.*' > "$OUT/routed_attention_cuda.log" 2>&1
grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|leaked|differ" "$OUT/routed_attention_cuda.log" | head -20

# 4b. Communication: the conformance suite with a 1-rank NCCL communicator;
# NCCL with 2 ranks on the one GPU (unsupported by NVIDIA: each process its own
# NCCL_HOSTID, sockets over loopback; reported, never fatal); expert
# parallelism on the GPU through the MPI communicator (ranks share the GPU):
# EP=4 and EP=2 on 4 ranks against 1 rank, fp32, 1e-5.
stamp "communication"
M=(mpirun --allow-run-as-root --oversubscribe)
"${M[@]}" -np 1 build-gpu/bin/communicator_conformance_test > "$OUT/conformance_np1.log" 2>&1
echo "conformance -np 1 (rc $?): $(grep -cE '^\[       OK \]' "$OUT/conformance_np1.log") ok, $(grep -cE '^\[  SKIPPED \]' "$OUT/conformance_np1.log") skipped, $(grep -cE '^\[  FAILED  \]' "$OUT/conformance_np1.log") failed"
timeout 180 "${M[@]}" -np 2 -x SY_NCCL_SHARED_GPU=1 -x NCCL_P2P_DISABLE=1 -x NCCL_SHM_DISABLE=1 \
  bash -c 'NCCL_HOSTID=sy$OMPI_COMM_WORLD_RANK exec build-gpu/bin/communicator_conformance_test --gtest_filter="*nccl*"' \
  > "$OUT/nccl_shared_gpu_np2.log" 2>&1
echo "NCCL 2 ranks on one GPU (rc $?): $(grep -E '^\[  (PASSED|FAILED) ' "$OUT/nccl_shared_gpu_np2.log" | tr '\n' ' ')$(grep -m1 -iE 'error|duplicate' "$OUT/nccl_shared_gpu_np2.log")"
SY_TEST_ARGS="--set backend=CUDA" bash tests/parallel_equivalence_test.sh "$PWD/build-gpu/bin/train_switch" "$PWD" mpirun \
  > "$OUT/parallel_equivalence_cuda.log" 2>&1
grep -E '^(ok|FAIL)' "$OUT/parallel_equivalence_cuda.log"

# 5. Benchmarks, table last.
if [ "$BENCH" = 1 ]; then
  stamp "benchmarks"
  build-gpu/bin/bench_ops --device cuda --overwrite --json "$OUT/bench_ops.json" > "$OUT/bench_ops.txt" 2>&1
  for py in scripts/bench/torch_*.py; do
    [ -f "$py" ] || continue
    PYTHONUNBUFFERED=1 timeout 120 python3 "$py" --json "$OUT/$(basename "$py" .py).json" > "$OUT/$(basename "$py" .py).txt" 2>&1
  done
  stamp "done (ctest rc $ctest_rc)"
  for f in "$OUT"/torch_*.txt; do [ -f "$f" ] && { echo "== $(basename "$f")"; tail -15 "$f"; }; done
  echo "== bench_ops"
  cat "$OUT/bench_ops.txt"
fi
exit $ctest_rc
