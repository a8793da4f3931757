#!/usr/bin/env bash
# The GPU machine's one call: inventory, a build of the GPU targets, then
# stages in the order the GPU issues come (17 training step, 19 NCCL, 18
# routed attention's benchmarks) under one time budget, the benchmark tables,
# and the summary last (the device tool returns the end of the output).
#
#   here first:   bash scripts/gpu_deps.sh        (C++ libraries that machine lacks -> .gpudeps/)
#   rehearse:     bash scripts/gpu_rehearse.sh    (this script's set-up and build here, system copies hidden)
#   prebuild:     bash scripts/gpu_prebuild.sh    (the GPU targets built here -> .gpubin/; optional)
#   device run:   bash scripts/gpu_check.sh       carry: [".gpudeps", ".gpubin"], timeout_s: 600
#   after it:     bash scripts/gpu_collect.sh FILES_AT DATE   (the JSON kept in docs/gpu, set beside
#                 the records, logs unpacked, the attention plot, the summary)
#   15 minutes of device time in all (start-up included): two calls, issue 17's stages first,
#                 --stages ops,train,bench,mfu --budget 400 (timeout_s 480), then
#                 --stages comm,scale,attn,extra --budget <what is left less a minute>
#                 (stages run in the order below, whatever the order of --stages)
#
#   --budget S    start no stage after S seconds from the start (default 540);
#                 each stage's own limit is cut to what is left
#   --stages L    comma-separated, in this order by default:
#                   ops    the op tests on CUDA (backend_ops_test and the layer's CUDA cases);
#                          past a kernel fault, the op cases again without the faulting one;
#                          those that fail again under compute-sanitizer (memcheck, racecheck)
#                   train  tests/gpu_training_test.sh: tiny and switch_tiny, 200 steps, CPU vs CUDA, fp32 then bf16
#                          (one head of 64: bf16 GEMMs and bf16 attention)
#                   bench  bench_ops --device cuda, then the PyTorch peers (scripts/bench/torch_*.py)
#                   mfu    switch_gpu for 30 steps in one run: MFU, tokens/s, device memory (steps
#                          11-20); steps 26-30 with --op-profile (each op's time by CUDA events);
#                          then batch 64 in as few micro-batches as the GPU holds (the optimizer's
#                          share); a rerun, bit for bit
#                   comm   the communicator conformance suite (NCCL, 1 and 2 ranks; MPI on device tensors,
#                          2 ranks), EP on the GPU, a failing rank,
#                          bench_comm --nccl (our all_to_all_v beside ncclAlltoAll, 1 and 2 ranks)
#                   scale  issue 19's measurements on this machine's cores and GPU: the share of the
#                          gradient all-reduce hidden at 4 CPU ranks (scripts/bench/grad_overlap.py);
#                          scaling_sweep over 1, 2, 4 ranks on the GPU (MPI path), with the projection,
#                          its model fed the links bench_comm --device measures for that path (switch_tiny)
#                   attn   issue 18: bench_attention at n = 4k/16k/64k beside PyTorch SDPA; a
#                          routed_copy-style model at n = 16k, routed and dense attention
#                   extra  what no issue's figure rests on: scale's sweep on a GPU-busy variant (d 512,
#                          seq 512, bf16); short trainings over NCCL (recomputation, the optimizer
#                          sharded, gradients reduce-scattered) beside the MPI path's;
#                          tests/shard_optimizer_test.sh on the GPU (MPI)
#                   more   the training comparison for depth_tiny, routed_copy, mixtral_tiny, and switch_tiny
#                          padded (moe.padded, moe.pad_to_largest)
#
# Nothing is installed from a registry (that machine has none). Logs and JSON
# go to $OUT (the device tool brings back at most 8 files: the logs are
# written outside it and tarred into one there after every command, so $OUT
# holds a handful of files even when a call is cut off before its end) or
# build-gpu/out here; $OUT/summary.txt has a line a stage.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-$PWD/build-gpu/out}
LOG=$PWD/build-gpu/gpu_check_logs/logs
rm -rf "$LOG"
mkdir -p "$OUT" "$LOG"
BUDGET=540
STAGES=ops,train,bench,mfu,comm,scale,attn,extra,more
while [ $# -gt 0 ]; do
  case $1 in
    --budget) BUDGET=$2; shift 2 ;;
    --stages) STAGES=$2; shift 2 ;;
    --no-bench) STAGES=ops,train,comm; shift ;;
    *) echo "gpu_check.sh: unknown argument '$1' (allowed: --budget S, --stages LIST, --no-bench)"; exit 2 ;;
  esac
done
# (a misspelt stage would run nothing and cost a whole call)
for st in ${STAGES//,/ }; do
  [[ ",ops,train,bench,mfu,comm,scale,attn,extra,more," == *",$st,"* ]] ||
    { echo "gpu_check.sh: --stages: '$st' is no stage (ops, train, bench, mfu, comm, scale, attn, extra, more)"; exit 2; }
done
[[ $BUDGET =~ ^[0-9]+$ ]] && [ "$BUDGET" -ge 150 ] ||
  { echo "gpu_check.sh: --budget $BUDGET: seconds, at least 150 (a build may take all but two minutes of it)"; exit 2; }
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
STARTS=""  # each stamp's second, for the summary's last line (the next plan's budgets)
stamp() { echo "[gpu_check $(elapsed)s] $*"; STARTS+="${STARTS:+, }${1%% *} $(elapsed)s"; }
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
want() { [[ ",$STAGES," == *",$1,"* ]]; }
# compare_with_record NAME JSON: this run's JSON beside the run of record's
# (the newest docs/gpu/NAME_*.json), row by row, into $LOG/compare_NAME.log;
# the summary gets its count line and its device line where they differ.
compare_with_record() {
  local record
  # (byte order: a locale's collation skips punctuation, and put _2026-12-04.json after _2026-12-04b.json)
  record=$(ls docs/gpu/"$1"_*.json 2> /dev/null | LC_ALL=C sort | tail -1)
  [ -n "$record" ] && [ -s "$2" ] || return 0
  local rc
  python3 scripts/bench/compare_runs.py "$record" "$2" --min-change 0.05 > "$LOG/compare_$1.log" 2>&1
  rc=$?
  summary "$1 against $(basename "$record") rc $rc: $(grep -E '^(devices differ|[0-9]+ of [0-9]+ rows|compare_runs:)' \
    "$LOG/compare_$1.log" | paste -sd ' ' -) (logs/compare_$1.log)"
}
# limit WANTED: the seconds a command may take, cut to the budget left (0: none left).
limit() {
  local left=$(( BUDGET - $(elapsed) ))
  [ "$left" -lt 20 ] && { echo 0; return; }
  [ "$1" -lt "$left" ] && echo "$1" || echo "$left"
}
# run_limited NAME WANTED CMD...: runs CMD under `timeout`, output to $LOG/NAME.log.
# MIN_S=S before it (a command that shows nothing unless it ends: a table
# printed after its last run, losses compared at the end): not started
# with less than S seconds left (default 20), its seconds left to the next.
run_limited() {
  local name=$1 want_s=$2 lim s rc need=${MIN_S:-20}
  shift 2
  [ "$need" -gt "$want_s" ] && need=$want_s
  lim=$(limit "$want_s")
  if [ "$lim" -lt "$need" ]; then
    summary "$name: not run (budget of ${BUDGET}s spent$([ "$lim" = 0 ] ||
      echo ": $(( BUDGET - $(elapsed) ))s left, it needs ${need}s"))"
    return 124
  fi
  s=$(date +%s)
  # -k: a train_switch stopped by SIGTERM writes a checkpoint before it
  # exits (switch_gpu's is 22 GB); 10 s later it is killed.
  timeout -k 10 "$lim" "$@" > "$LOG/$name.log" 2>&1
  rc=$?
  rm -rf "$CKPT"
  { [ $rc = 124 ] || [ $rc = 137 ]; } && echo "(stopped after ${lim}s)" >> "$LOG/$name.log"
  echo "[$name: rc $rc in $(( $(date +%s) - s ))s]" >> "$LOG/$name.log"
  # The logs so far, should the call be cut off (written aside and renamed:
  # runs side by side each write it).
  tar -C "$(dirname "$LOG")" -czf "$OUT/logs.tar.gz.$BASHPID" logs 2> /dev/null
  mv -f "$OUT/logs.tar.gz.$BASHPID" "$OUT/logs.tar.gz" 2> /dev/null
  return $rc
}
finish() {
  rm -f "$OUT"/logs.tar.gz.*
  tar -C "$(dirname "$LOG")" -czf "$OUT/logs.tar.gz" logs 2> /dev/null
  rm -rf "$CKPT" "$OUT/bench_ops.json.partial"  # (bench_ops stopped between a write and its rename)
}
# Checkpoints a stopped run writes: on /tmp, removed after each run.
CKPT=/tmp/sy_gpu_check_ckpt
trap finish EXIT
: > "$OUT/summary.txt"

# 1. What the machine has.
{
  nvidia-smi -L 2>&1 | head -2
  nvidia-smi --query-gpu=driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -1
  nvcc --version 2>&1 | tail -1
  echo "cores $(nproc), g++ $(g++ -dumpfullversion 2>/dev/null || echo missing)"
  for tool in cmake ninja mpirun mpicxx protoc python3 dpkg xz; do printf '%-8s %s\n' "$tool" "$(command -v $tool || echo missing)"; done
  for h in gtest/gtest.h cblas.h CLI/CLI.hpp nlohmann/json.hpp google/protobuf/message.h; do
    f=$(find /usr/include /usr/local/include /usr/include/x86_64-linux-gnu -path "*/$h" 2>/dev/null | head -1)
    printf '%-28s %s\n' "$h" "${f:-missing}"
  done
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))' 2>&1 | tail -1
} > "$OUT/inventory.txt" 2>&1
cat "$OUT/inventory.txt"

# 2. Libraries the machine lacks, from the carried Debian packages. dpkg -x
# does not run the packages' scripts, so the alternatives links Debian makes
# (mpirun, mpicxx, cblas.h, libblas) are absent: name the real files.
# The carried OpenMPI (and what it loads) only where the machine has no MPI
# of its own: its libraries ahead of the machine's would mix two OpenMPIs
# (and two PMIx plugin sets) in one job.
EXTRA_CMAKE=()
# unpack_deb DEB DIR: dpkg -x, or where the machine has no dpkg, the same
# in Python (a .deb is an ar archive holding data.tar.xz).
unpack_deb() {
  command -v dpkg > /dev/null && { dpkg -x "$1" "$2"; return; }
  python3 - "$1" "$2" <<'PY'
import io, sys, tarfile
blob = open(sys.argv[1], "rb").read()
assert blob[:8] == b"!<arch>\n", sys.argv[1] + ": not a .deb"
at = 8
while at < len(blob):
    name, size = blob[at:at + 16].decode().strip().rstrip("/"), int(blob[at + 48:at + 58])
    if name.startswith("data.tar"):
        tarfile.open(fileobj=io.BytesIO(blob[at + 60:at + 60 + size])).extractall(sys.argv[2])
        break
    at += 60 + size + size % 2
PY
}
# (dpkg and xz are listed for the unpacking itself, not as libraries to carry)
if grep -vE '^(dpkg|xz) ' "$OUT/inventory.txt" | grep -q missing && ls .gpudeps/*.deb > /dev/null 2>&1; then
  stamp "unpacking .gpudeps into /tmp/sydeps"
  HAVE_MPI=0
  # (the wrapper must run: gpu_rehearse.sh hides the system's behind /dev/null)
  mpicxx --showme > /dev/null 2>&1 && mpirun --version > /dev/null 2>&1 && HAVE_MPI=1
  for f in .gpudeps/*.deb; do
    [ $HAVE_MPI = 1 ] && [[ $(basename "$f") =~ ^(openmpi|libopenmpi|libpmix|libhwloc|libevent|libfabric|libucx|libibverbs|librdmacm|libpsm|libnl-|libmunge|libnuma) ]] && continue
    unpack_deb "$f" /tmp/sydeps
  done
  P=/tmp/sydeps/usr
  A=$P/lib/x86_64-linux-gnu
  export PATH=$P/bin:$PATH
  export LD_LIBRARY_PATH=$A:$A/openblas-pthread:${LD_LIBRARY_PATH:-}
  export CMAKE_PREFIX_PATH=$P:${CMAKE_PREFIX_PATH:-}
  export CPATH=$P/include:$P/include/x86_64-linux-gnu/openblas-pthread:${CPATH:-}
  EXTRA_CMAKE=(-DBLAS_LIBRARIES="$A/openblas-pthread/libopenblas.so")
  [ -x "$P/bin/protoc" ] && EXTRA_CMAKE+=(-DProtobuf_PROTOC_EXECUTABLE="$P/bin/protoc")
  if [ $HAVE_MPI = 0 ]; then
    ln -sf mpirun.openmpi "$P/bin/mpirun"
    ln -sf mpicxx.openmpi "$P/bin/mpicxx"
    export LD_LIBRARY_PATH=$A/openmpi/lib:$LD_LIBRARY_PATH
    export OPAL_PREFIX=$P  # OpenMPI relocated from /usr
    EXTRA_CMAKE+=(-DMPI_CXX_COMPILER="$P/bin/mpicxx.openmpi")
  fi
fi

# NCCL: beside the CUDA toolkit, or in PyTorch's nvidia-nccl package.
# (-f follows links: NVIDIA's packages make /usr/local/cuda/include one.)
if [ ! -f /usr/local/cuda/include/nccl.h ] && [ ! -f /usr/include/nccl.h ]; then
  NCCL_DIR=$(python3 -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))' 2> /dev/null ||
             python3 -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' 2> /dev/null)
  if [ -n "$NCCL_DIR" ] && [ -f "$NCCL_DIR/include/nccl.h" ]; then
    export NCCL_HOME=$NCCL_DIR
    export LD_LIBRARY_PATH=$NCCL_DIR/lib:${LD_LIBRARY_PATH:-}
    echo "NCCL     $NCCL_DIR (python package)"
  else
    echo "NCCL     missing (parallel.backend NCCL is not built)"
  fi
fi

# 3. Build: the GPU targets only, Ninja on every core, sm_90.
TARGETS=(train_switch)
want ops && TARGETS+=(backend_ops_test routed_attention_test tensor_test model_test moe_layer_test recompute_test
                      init_from_test)
want bench && TARGETS+=(bench_ops)
want comm && TARGETS+=(communicator_conformance_test bench_comm)
want scale && TARGETS+=(scaling_sweep bench_comm)
want extra && TARGETS+=(scaling_sweep)
want attn && TARGETS+=(bench_attention)
mapfile -t TARGETS < <(printf '%s\n' "${TARGETS[@]}" | awk '!seen[$0]++')  # (comm, scale and extra share some)
status=0
# Binaries built here before the call (scripts/gpu_prebuild.sh: .gpubin/,
# carried) where every source they were built from is unchanged and every
# library they need resolves on this machine: the build's minutes go to the
# stages. Else the build below.
prebuilt() {
  [ -f .gpubin/bin.tar.xz ] && [ -f .gpubin/sources.sha256 ] || return 1
  sha256sum --quiet -c .gpubin/sources.sha256 > "$LOG/prebuilt.log" 2>&1 ||
    { summary "build: .gpubin is stale ($(grep -c FAILED "$LOG/prebuilt.log") sources changed since gpu_prebuild.sh): building"; return 1; }
  mkdir -p build-gpu
  tar -C build-gpu -xJf .gpubin/bin.tar.xz 2> /dev/null ||
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .gpubin/bin.tar.xz build-gpu || return 1
  # (their run path names this machine's CUDA libraries as /usr/local/cuda/lib)
  export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib
  local t missing=()
  for t in "${TARGETS[@]}"; do
    # (-r: every symbol resolved now, not at its first call mid-stage)
    # (grep reads it all: with -q its early exit could end ldd by SIGPIPE,
    # which pipefail and the ! would then count as resolved)
    { [ -x "build-gpu/bin/$t" ] && ! ldd -r "build-gpu/bin/$t" 2>&1 | grep -E "not found|undefined symbol" > /dev/null; } ||
      missing+=("$t")
  done
  [ ${#missing[@]} = 0 ] && build-gpu/bin/train_switch --help > /dev/null 2>> "$LOG/prebuilt.log" && return 0
  ldd "build-gpu/bin/${missing[0]:-train_switch}" 2>&1 | grep "not found" | head -5 | tee -a "$LOG/prebuilt.log"
  summary "build: the prebuilt binaries do not run here (${missing[*]:-train_switch --help}): building"
  rm -rf build-gpu/bin
  return 1
}
if prebuilt; then
  summary "build: prebuilt binaries from .gpubin (${#TARGETS[@]} targets, sources unchanged)"
else
stamp "configure"
GEN=()
command -v ninja > /dev/null && GEN=(-G Ninja)
cmake "${GEN[@]}" -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DSWITCHYARD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  "${EXTRA_CMAKE[@]}" > "$LOG/configure.log" 2>&1 || { tail -40 "$LOG/configure.log"; exit 1; }
grep -E "CUDA backend|NCCL|SentencePiece" "$LOG/configure.log"
stamp "build: ${TARGETS[*]}"
s=$(date +%s)
# (The build may take the budget less two minutes: without it nothing runs.)
# It keeps going past a failing target (-k 0 / -k): the stages whose
# binaries were built still run, the others fail at once.
KEEP=(-k)
[ ${#GEN[@]} -gt 0 ] && KEEP=(-k 0)
if timeout "$(limit $(( BUDGET - 120 )))" cmake --build build-gpu -j "$(nproc)" --target "${TARGETS[@]}" -- "${KEEP[@]}" \
     > "$LOG/build.log" 2>&1; then
  summary "build: ${#TARGETS[@]} targets in $(( $(date +%s) - s ))s"
else
  grep -E "error:|FAILED:|Error [0-9]" "$LOG/build.log" | head -40
  tail -3 "$LOG/build.log"
  built=()
  for t in "${TARGETS[@]}"; do [ -x "build-gpu/bin/$t" ] && built+=("$t"); done
  summary "build: FAILED after $(( $(date +%s) - s ))s; built: ${built[*]:-nothing}"
  [ -x build-gpu/bin/train_switch ] || exit 1
  status=1
fi
fi
# (no binding: OpenMPI binds each of 2 or fewer ranks to a core, cores 0
# and 1 for every such job, so jobs side by side would share two cores)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 GTEST_COLOR=no OMPI_MCA_hwloc_base_binding_policy=none
B=build-gpu/bin
M=(mpirun --allow-run-as-root --oversubscribe)
LINK=()  # scaling_sweep's link figures: the scale stage's measurement, else its defaults

# gtest_line NAME: "n passed, n failed, n skipped" from a gtest log.
# (Each test's result line ends in its time; the closing list repeats names without.)
gtest_line() {
  local f=$LOG/$1.log
  echo "$(grep -cE '^\[       OK \] .* \([0-9]+ ms\)$' "$f") ok, $(grep -cE '^\[  FAILED  \] .* \([0-9]+ ms\)$' "$f") failed," \
       "$(grep -cE '^\[  SKIPPED \] .* \([0-9]+ ms\)$' "$f") skipped$(grep -q 'stopped after' "$f" && echo ', STOPPED AT THE LIMIT')$([ -f "$f" ] && died "$1" && echo ", DIED in $(grep '^\[ RUN' "$f" | tail -1 | cut -c14-)")"
}

# died NAME: whether the process ended without gtest's closing "... ran."
# line, other than by the stage's time limit (a kernel fault can end it).
died() {
  ! grep -qE '^\[==========\] .* ran\.' "$LOG/$1.log" && ! grep -q 'stopped after' "$LOG/$1.log"
}
# why NAME RC: nothing where RC is 0, else the log's first error line (the
# reason, which a summary line should carry: the logs come back only as
# logs.tar.gz).
# (An error that names another log, scaling_sweep's "... failed; see F":
# F's first error line instead.)
# A Python traceback: the log's last line (the exception) instead.
why() {
  [ "$2" = 0 ] && return 0
  local pat='^(error|Error|FAIL|terminate|Traceback|not run)|^[a-z_]+\.py: |: error' line f sub
  line=$(grep -m1 -E "$pat" "$LOG/$1.log" 2> /dev/null)
  case $line in
    *"failed; see "*) f=${line##*failed; see }
                      sub=$([ -f "$f" ] && grep -m1 -E "$pat" "$f")
                      [ -n "$sub" ] && line="$(basename "$f"): $sub" ;;
    Traceback*) line=$(grep . "$LOG/$1.log" | grep -v '^\[' | tail -1) ;;
  esac
  [ -n "$line" ] && echo " [$(echo "$line" | cut -c1-200)]"
  return 0
}
# failed_tests NAME: the tests a gtest log failed, in the order they failed
# (after a sticky CUDA error every later test fails too: the first matters),
# ':'-joined (a gtest filter): those with a FAILED line, and the one running
# when the process died.
failed_tests() {
  local f=$LOG/$1.log
  [ -f "$f" ] || return 0
  { grep -oE '^\[  FAILED  \] [A-Za-z_][A-Za-z0-9_/.]*' "$f" | cut -c14-
    died "$1" && grep -E '^\[ RUN      \] ' "$f" | tail -1 | cut -c14-
  } | awk '!seen[$0]++' | head -4 | paste -sd: -
}
# failed_cases NAME: backend_ops_test's op cases that failed, in order,
# ','-joined: the case each failure or thrown exception came in (the last
# "[ op case ]" line before it: a kernel fault surfaces as a CUDA error
# thrown at a later check, with no trace naming the case), and the case it
# was in when it died.
failed_cases() {
  local f=$LOG/$1.log
  [ -f "$f" ] || return 0
  { awk '/^\[ op case  \] /{c=substr($0,14)} /^\[ RUN      \] /{c=""} (/: Failure$/||/^C\+\+ exception/)&&c!=""{print c}' "$f"
    died "$1" && grep -E '^\[ op case  \] ' "$f" | tail -1 | cut -c14-
  } | awk '!seen[$0]++' | head -6 | paste -sd, -
}
# sanitize NAME BINARY: the tests NAME's log failed, again under
# compute-sanitizer's memcheck (the kernel, thread and address of a bad
# access: what a next session fixes from, without a GPU), then, where memcheck
# found nothing, racecheck (shared-memory hazards); only where some failed,
# each run cut short.
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
sanitize() {
  local name=$1 bin=$2 tests cases tool rc
  tests=$(failed_tests "$name")
  [ -n "$tests" ] || return 0
  cases=$(failed_cases "$name")
  [ -x "$SAN" ] || { summary "ops: $name failed ($tests${cases:+; cases $cases}); no compute-sanitizer to say why"; return 0; }
  for tool in memcheck racecheck; do
    run_limited "${tool}_$name" 75 env SY_OP_CASES="$cases" "$SAN" --tool "$tool" --print-limit 12 --error-exitcode 9 \
      "$bin" --gtest_filter="$tests"
    rc=$?
    summary "ops: $tool on $name's failures ($tests${cases:+; cases $cases}) rc $rc:" \
      "$(grep -E '^=========' "$LOG/${tool}_$name.log" | grep -vE 'COMPUTE-SANITIZER|SUMMARY' | head -4 | tr -s ' \n' ' ' | cut -c1-500)" \
      "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOG/${tool}_$name.log" | tail -1)"
    [ "$rc" = 9 ] && break  # memcheck's finding first; racecheck's time to the later stages
  done
}

# 4. Issue 17: every op on CUDA against the CPU, then the whole step.
if want ops; then
  stamp "ops"
  # The smaller suites beside backend_ops_test, each its own process on the
  # one GPU (they check values, which sharing it does not change): device
  # time is lent by the minute.
  run_limited layer_cuda 90 $B/routed_attention_test --gtest_filter='*Cuda*' & p_layer=$!
  run_limited tensor_cuda 30 $B/tensor_test --gtest_filter='*Cuda*' & p_tensor=$!
  run_limited model_cuda 60 $B/model_test --gtest_filter='*Cuda*' & p_model=$!
  run_limited moe_cuda 30 $B/moe_layer_test --gtest_filter='*Cuda*' & p_moe=$!
  run_limited recompute_cuda 60 $B/recompute_test --gtest_filter='*Cuda*' & p_recompute=$!
  run_limited upcycle_cuda 30 $B/init_from_test --gtest_filter='*Cuda*' & p_upcycle=$!
  run_limited backend_ops_cuda 150 $B/backend_ops_test --gtest_filter='*cuda*:*Cuda*:WholeStep.*' || status=1
  summary "ops: backend_ops_test (cuda): $(gtest_line backend_ops_cuda)"
  grep -E "^\[  FAILED  \] [A-Za-z]|Failure|differs|never written" "$LOG/backend_ops_cuda.log" | head -20
  # The op cases run in one test: a case whose kernel faults leaves a sticky
  # CUDA error that fails every later case (or ends the process), hiding
  # what the rest would show. Past such a fault the cases run again in a new
  # process without the ones that failed so far (twice at most), so one bad
  # kernel does not cost a session the state of all the others.
  skip="" prev=backend_ops_cuda
  for pass in 1 2; do
    grep -qiE 'an illegal|unspecified launch failure|misaligned address|hardware exception|launch timed out' \
      "$LOG/$prev.log" || died "$prev" || break
    first=$(failed_cases "$prev" | cut -d, -f1)
    [ -n "$first" ] || break
    skip=${skip:+$skip,}$first
    run_limited "backend_ops_cuda_past$pass" 120 env SY_OP_SKIP="$skip" $B/backend_ops_test \
      --gtest_filter='*EveryOpAgreesWithTheCpuAndReruns/cuda'
    summary "ops: the op cases again past a fault, without $skip: $(gtest_line "backend_ops_cuda_past$pass");" \
      "failing: $(failed_cases "backend_ops_cuda_past$pass")"
    prev=backend_ops_cuda_past$pass
  done
  wait $p_layer || status=1
  summary "ops: routed_attention_test (the sparse attention layer on CUDA): $(gtest_line layer_cuda)"
  grep -E "^\[  FAILED  \] [A-Za-z]|Failure|leaked|differ" "$LOG/layer_cuda.log" | head -10
  wait $p_tensor || status=1
  summary "ops: tensor_test (cuda): $(gtest_line tensor_cuda)"
  wait $p_model || status=1
  summary "ops: model_test (mixtral_tiny's first step, GPU vs CPU): $(gtest_line model_cuda)"
  wait $p_moe || status=1
  summary "ops: moe_layer_test (a padded MoE step waits for nothing): $(gtest_line moe_cuda)"
  grep -E "Failure|Expected|actual" "$LOG/moe_cuda.log" | head -6
  wait $p_recompute || status=1
  summary "ops: recompute_test (train.recompute on CUDA: losses and gradients bit for bit): $(gtest_line recompute_cuda)"
  grep -E "Failure|step [0-9]|forward [0-9]" "$LOG/recompute_cuda.log" | head -6
  wait $p_upcycle || status=1
  summary "ops: init_from_test (--init-from upcycling into a CUDA model, GPU vs CPU): $(gtest_line upcycle_cuda)"
  grep -E "Failure|Expected|actual" "$LOG/upcycle_cuda.log" | head -6
  sanitize backend_ops_cuda $B/backend_ops_test
  sanitize layer_cuda $B/routed_attention_test
fi
if want train; then
  stamp "train"
  # fp32 and bf16 side by side (every run of each at once, too:
  # gpu_training_test.sh). One head of 64: the bf16 run covers the
  # tensor-core attention kernels too (bf16_attention in runtime/model.h);
  # the fp32 run covers head dim 16.
  run_limited gpu_training 240 bash tests/gpu_training_test.sh "$PWD/$B/train_switch" "$PWD" tiny switch_tiny &
  p_fp32=$!
  run_limited gpu_training_bf16 150 env SY_GPU_ARGS="--set precision=BF16 --set model.n_heads=1" \
    bash tests/gpu_training_test.sh "$PWD/$B/train_switch" "$PWD" tiny switch_tiny &
  p_bf16=$!
  # Beside them, never run on a GPU before: a run stopped and resumed from
  # its checkpoint of device tensors gives the uninterrupted run's losses and
  # checkpoint files bit for bit (1 rank and EP=2 through MPI, MoE and routed
  # attention with depth routing; then --eval-only), and the non-finite
  # policy on the GPU (a NaN weight for one step skipped, kept NaN stops).
  run_limited checkpoint_resume_cuda 150 env SY_TEST_ARGS="--set backend=CUDA" \
    bash tests/checkpoint_resume_test.sh "$PWD/$B/train_switch" "$PWD" mpirun &
  p_resume=$!
  run_limited nonfinite_cuda 150 env SY_TEST_ARGS="--set backend=CUDA" \
    bash tests/nonfinite_test.sh "$PWD/$B/train_switch" "$PWD" mpirun &
  p_nonfinite=$!
  wait $p_fp32
  rc=$?; [ $rc = 0 ] || status=1
  summary "train (rc $rc): $(grep -vE '^\[' "$LOG/gpu_training.log" | tr '\n' ' ' | cut -c1-900)"
  wait $p_bf16
  rc=$?; [ $rc = 0 ] || status=1
  summary "train bf16 (rc $rc): $(grep -vE '^\[' "$LOG/gpu_training_bf16.log" | tr '\n' ' ' | cut -c1-900)"
  for t in checkpoint_resume_cuda:$p_resume nonfinite_cuda:$p_nonfinite; do
    wait "${t#*:}"
    rc=$?; [ $rc = 0 ] || status=1
    summary "train: ${t%%:*} (rc $rc): $(grep -E '^(ok|FAIL)' "$LOG/${t%%:*}.log" | cut -c1-110 | tr '\n' ';')"
  done
fi

# 5. Issue 17's and 18's benchmarks, with the PyTorch peers.
if want bench; then
  stamp "bench"
  rm -f "$OUT/bench_ops.json" "$OUT/bench_ops.json.partial"
  run_limited bench_ops 180 $B/bench_ops --device cuda --json "$OUT/bench_ops.json"  # (the attention variants: ~10 s more)
  summary "bench: bench_ops rc $? ($(grep -c . "$LOG/bench_ops.log") lines)"
  # A kernel that faults fails every later row (the CUDA error is sticky):
  # the rows past it run again in a new process without it (--resume keeps
  # the rows before it), twice at most; so do the rows a time limit cut off
  # (the JSON not "complete": --resume goes on after its last row).
  for pass in 1 2; do
    python3 - "$OUT/bench_ops.json" <<'PY' 2> /dev/null || break
import json, sys
j = json.load(open(sys.argv[1]))
notes = [r.get("note", "") for r in j["ops"]]
fault = any((": CUDA: " in n or ": cuBLAS: " in n) and not n.startswith("skipped by --resume") for n in notes)
sys.exit(0 if fault or not j.get("complete", True) else 1)
PY
    run_limited "bench_ops_resume$pass" 150 $B/bench_ops --device cuda --resume "$OUT/bench_ops.json" \
      --json "$OUT/bench_ops.json" --overwrite
    summary "bench: bench_ops again past a fault or its time limit, pass $pass, rc $?: $(python3 -c 'import json, sys
print("; ".join(r["op"] + " " + r["shape"] for r in json.load(open(sys.argv[1]))["ops"] if r.get("note", "").startswith("skipped by --resume")))' "$OUT/bench_ops.json" 2>&1 | cut -c1-300) left out"
  done
  for name in torch_moe torch_attention; do
    run_limited "$name" 60 env PYTHONUNBUFFERED=1 python3 "scripts/bench/$name.py" --json "$LOG/$name.json"
    summary "bench: $name rc $?"
  done
  # Issue 17's bars from these three (one line each, measured beside the bar).
  python3 scripts/bench/bar_ratios.py --bench-ops "$OUT/bench_ops.json" --torch-moe "$LOG/torch_moe.json" \
    --torch-attention "$LOG/torch_attention.json" 2>&1 | tee -a "$OUT/summary.txt"
  compare_with_record bench_ops "$OUT/bench_ops.json"
fi
if want mfu; then
  stamp "mfu"
  # MFU from steps 11-20 (the step-20 line), unprofiled; steps 26-30 with
  # every op timed by CUDA events, the top of that table in the summary.
  # (Its 1.9B parameters are drawn on every core: a few seconds.)
  SG=($B/train_switch --config configs/switch_gpu.pbtxt --set backend=CUDA --set precision=BF16
      --set train.steps=30 --set train.warmup_steps=5 --set train.log_interval=10 --set train.eval_interval=100000
      --set train.eval_batches=1 --set train.checkpoint_interval=0 --set train.checkpoint_dir="$CKPT" --overwrite)
  run_limited switch_gpu 150 "${SG[@]}" --metrics "$LOG/switch_gpu.jsonl" \
    --op-profile "$LOG/switch_gpu_ops.json" --op-profile-steps 5
  summary "mfu: switch_gpu rc $?: $(grep -E '^step +20/' "$LOG/switch_gpu.log" | tail -1)"
  # The bar's denominator is the H100 SXM's 989 TFLOP/s, whatever part this is.
  mfu_of() {  # mfu_of METRICS: the step-20 line's MFU (steps 11-20)
    python3 -c 'import json, sys
rows = [l for l in map(json.loads, open(sys.argv[1])) if l.get("step") == 20]
t = rows[-1]["tflops"] if rows else None
print("no step-20 line" if t is None else f"{100 * t / 989:.1f}% ({t:.0f} TFLOP/s, steps 11-20)")
' "$1" 2>&1 | tail -1
  }
  summary "mfu: batch 16 at 989 TFLOP/s (issue 17's bar >= 40%): $(mfu_of "$LOG/switch_gpu.jsonl")"
  summary "mfu: op profile (steps 26-30): $(grep -A12 '^op profile' "$LOG/switch_gpu.log" | tr -s ' ' | tr '\n' ';' | cut -c1-900)"
  compare_with_record switch_gpu_ops "$LOG/switch_gpu_ops.json"  # (the record: docs/gpu/switch_gpu_ops_*.json)
  # Batch 64: the optimizer's pass over all 1.9B parameters (~65 GB of
  # traffic a step, whatever the batch; docs/PERF.md) is paid once per 4x the
  # tokens, which the bar needs; the gap between the two MFUs is that pass's
  # share. In as few micro-batches as the GPU holds (an H200's 141 GB holds
  # one pass; an 80 GB H100 two or four by the peak measured; micro-batches
  # after the first read and write the expert gradients again): the batch-16
  # run's reserved peak R less the
  # parameters' state P (~31 GiB: fp32 value, gradient, moments, bf16 shadow)
  # is one micro-batch of 16's activations; m micro-batches of 64 / m need
  # P + (R - P) x 4 / m, within 90% of the GPU's memory.
  MB=$(python3 -c 'import json, sys
rows = [l for l in map(json.loads, open(sys.argv[1])) if "device_reserved_gib" in l]
total = float(sys.argv[2]) / 1024  # MiB -> GiB
P = 31.0
R = max(r["device_reserved_gib"] for r in rows)
print(next((m for m in (1, 2) if P + (R - P) * 4 / m <= 0.9 * total), 4))
' "$LOG/switch_gpu.jsonl" "$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)" 2>/dev/null || echo 4)
  run_limited switch_gpu_b64 120 "${SG[@]}" --set train.batch=64 --set train.micro_batches="$MB" --set train.steps=20 \
    --metrics "$LOG/switch_gpu_b64.jsonl"
  summary "mfu: switch_gpu batch 64 in $MB micro-batch(es) rc $?: $(grep -E '^step +20/' "$LOG/switch_gpu_b64.log" | tail -1 | cut -c1-300)"
  summary "mfu: batch 64 ($MB x $(( 64 / MB ))) at 989 TFLOP/s: $(mfu_of "$LOG/switch_gpu_b64.jsonl")"
  # Where batch 64 needed micro-batches: one pass with activation
  # recomputation instead (train.recompute: a forward more, no second pass
  # over the expert gradients) - its memory peak and MFU beside them.
  if [ "$MB" -gt 1 ]; then
    run_limited switch_gpu_b64_recompute 90 "${SG[@]}" --set train.batch=64 --set train.recompute=true \
      --set train.steps=20 --metrics "$LOG/switch_gpu_b64_recompute.jsonl"
    summary "mfu: switch_gpu batch 64 in one pass, recomputed, rc $?: $(grep -E '^step +20/' "$LOG/switch_gpu_b64_recompute.log" | tail -1 | cut -c1-300)"
    summary "mfu: batch 64 recomputed at 989 TFLOP/s: $(mfu_of "$LOG/switch_gpu_b64_recompute.jsonl")"
  fi
  # The same run again, unprofiled: its losses bit for bit the first's (issue 17).
  run_limited switch_gpu_rerun 90 "${SG[@]}" --metrics "$LOG/switch_gpu_rerun.jsonl"
  summary "mfu: switch_gpu rerun rc $?: $(python3 -c 'import json, sys
runs = [{l["step"]: l["loss"] for l in map(json.loads, open(f)) if "loss" in l} for f in sys.argv[1:]]
same = [s for s in runs[0] if runs[1].get(s) == runs[0][s]]
print(f"losses identical at {len(same)}/{len(runs[0])} logged steps:", {s: (runs[0][s], runs[1].get(s)) for s in runs[0]})
' "$LOG/switch_gpu.jsonl" "$LOG/switch_gpu_rerun.jsonl" 2>&1 | tail -1 | cut -c1-400)"
fi

# A program as one rank of 2 on the one GPU over NCCL (each its own
# NCCL_HOSTID, sockets over loopback; unsupported by NVIDIA): a wrapper
# that sets the rank's environment itself (nothing rests on what mpirun
# forwards) and execs the program, the path baked in. Prints its path.
loopback() {
  local w="$LOG/loopback_$(basename "$1").sh"
  printf '%s\n' '#!/usr/bin/env bash' \
    'export NCCL_HOSTID=sy$OMPI_COMM_WORLD_RANK NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1' \
    'export SY_NCCL_SHARED_GPU=1' "exec $PWD/$1 \"\$@\"" > "$w"
  chmod +x "$w"
  echo "$w"
}
# 6. Issue 19: the conformance suite with a 1-rank NCCL communicator, and
# over MPI on device tensors at 2 ranks (the reducer's thread on the GPU); NCCL
# with 2 ranks on the one GPU (unsupported by NVIDIA: each process its own
# NCCL_HOSTID, sockets over loopback; reported, never fatal); expert
# parallelism on the GPU through MPI (ranks share the GPU): EP=4 and EP=2 on
# 4 ranks against 1 rank, fp32 to 1e-5, then bf16 to 1e-2.
if want comm; then
  stamp "comm"
  # Our all_to_all_v against ncclAlltoAll on the same device buffers (bar:
  # within 80%, the ours/nccl column >= 0.8), 1 rank; first: a figure.
  run_limited bench_comm_nccl_np1 45 "${M[@]}" -np 1 $B/bench_comm --nccl --iters 20 --json "$LOG/bench_comm_nccl_np1.json" --overwrite
  rc=$?; [ $rc = 0 ] || status=1
  summary "comm: bench_comm --nccl -np 1 rc $rc: $(grep -E '^ +[0-9]' "$LOG/bench_comm_nccl_np1.log" | awk '{print $1":"$9" ("$2" us, non-blocking "$3", nccl "$4"; wrong "$10"/"$11")"}' | tr '\n' ' ')"
  # (NCCL's ENV lines: the launch order our default set before NCCL's first read of it)
  run_limited conformance_np1 45 "${M[@]}" -np 1 env NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=ENV \
    $B/communicator_conformance_test || status=1
  summary "comm: conformance -np 1: $(gtest_line conformance_np1); NCCL read LAUNCH_ORDER_IMPLICIT as 1:" \
    "$(grep -c 'NCCL_LAUNCH_ORDER_IMPLICIT set by environment to 1' "$LOG/conformance_np1.log") times"
  # MPI on device tensors at 2 ranks sharing the GPU: the gradient reducer's
  # thread waits for each bucket's event and stages it on its own stream.
  run_limited conformance_mpi_device_np2 60 "${M[@]}" -np 2 $B/communicator_conformance_test --gtest_filter='*mpi_device*' || status=1
  summary "comm: conformance, MPI on device tensors, -np 2: $(gtest_line conformance_mpi_device_np2)"
  # (120 s: the suite now runs over both NCCL modes, at 0.1-0.2 GB/s over loopback sockets)
  run_limited nccl_np2 120 "${M[@]}" -np 2 "$(loopback $B/communicator_conformance_test)" --gtest_filter='*nccl*'
  summary "comm: NCCL 2 ranks on one GPU (not fatal): $(gtest_line nccl_np2)"
  # (240 s: 9 runs of 4 ranks, the deduplicated dispatch's among them; fp32
  # and bf16 side by side, 8 ranks on 16 cores: they check values, which
  # sharing the GPU does not change)
  run_limited parallel_equivalence_cuda 240 env SY_TEST_ARGS="--set backend=CUDA" \
    bash tests/parallel_equivalence_test.sh "$PWD/$B/train_switch" "$PWD" mpirun &
  p_eq=$!
  run_limited parallel_equivalence_cuda_bf16 240 env SY_TEST_ARGS="--set backend=CUDA --set precision=BF16" SY_TEST_TOL=1e-2 \
    bash tests/parallel_equivalence_test.sh "$PWD/$B/train_switch" "$PWD" mpirun &
  p_eq16=$!
  wait $p_eq || status=1
  summary "comm: EP on the GPU: $(grep -E '^(ok|FAIL)' "$LOG/parallel_equivalence_cuda.log" | tr '\n' ' ')"
  wait $p_eq16 || status=1
  summary "comm: EP on the GPU, bf16: $(grep -E '^(ok|FAIL)' "$LOG/parallel_equivalence_cuda_bf16.log" | tr '\n' ' ')"
  # A rank that throws, hangs, exits or is killed mid-step on the GPU ends
  # the job within the timeout, with the one-line error.
  run_limited parallel_fault_cuda 150 env SY_TEST_ARGS="--set backend=CUDA" \
    bash tests/parallel_fault_test.sh "$PWD/$B/train_switch" "$PWD" mpirun || status=1
  summary "comm: a failing rank on the GPU: $(grep -E '^(ok|FAIL)' "$LOG/parallel_fault_cuda.log" | cut -c1-60 | tr '\n' ';')"
  # The same at 2 ranks on the one GPU, as above (not fatal).
  run_limited bench_comm_nccl_np2 60 "${M[@]}" -np 2 "$(loopback $B/bench_comm)" --nccl --iters 10 --max-mib 64 \
    --overwrite --json "$LOG/bench_comm_nccl_np2.json"
  summary "comm: bench_comm --nccl -np 2 (not fatal) rc $?: $(grep -E '^ +[0-9]' "$LOG/bench_comm_nccl_np2.log" | awk '{print $1":"$9" ("$2" us, non-blocking "$3", nccl "$4"; wrong "$10"/"$11")"}' | tr '\n' ' ')"
  # The NCCL communicator's timeouts in training (its blocking mode: the
  # watchdog holds each call from before it enters NCCL), 2 ranks on the one
  # GPU as above: a rank that throws, hangs or exits ends the job with the
  # one-line error (not fatal; the kill case needs BIN on the rank's
  # command line, which the wrapper's exec replaces).
  run_limited parallel_fault_nccl 120 env \
    SY_FAULT_KINDS="throw hang exit" SY_TEST_ARGS="--set backend=CUDA --set parallel.backend=NCCL" \
    bash tests/parallel_fault_test.sh "$(loopback $B/train_switch)" "$PWD" mpirun
  summary "comm: a failing rank over NCCL, 2 ranks on one GPU (not fatal): $(grep -E '^(ok|FAIL)' "$LOG/parallel_fault_nccl.log" | cut -c1-90 | tr '\n' ';')"
fi
# scaling_sweep's points from its log: mode, ranks, step, the model's
# error, its compute term (m: measured side by side) and what the experts'
# load imbalance adds to it.
sweep_points() {
  grep -E '^(weak|strong)' "$LOG/$1.log" |
    awk '{print $1, $2, $4 "ms", $12, "(model compute " $14 "ms" ($15 == "m" ? " measured" : "") " + imbalance " $13 "ms)"}' |
    tr '\n' ';'
}
# Issue 19 on this machine's 16 cores: the gradient all-reduce hidden behind
# backward at 4 CPU ranks (a dense model, overlap on then off; bar 60%), then
# weak and strong scaling over 1, 2, 4 ranks sharing the GPU through MPI,
# with the alpha-beta model's error on each point and its projection.
if want scale; then
  stamp "scale"
  # (its table comes after both runs: not started with under 60 s left)
  MIN_S=60 run_limited grad_overlap 150 env PYTHONUNBUFFERED=1 python3 scripts/bench/grad_overlap.py --np 4 --bin $B/train_switch \
    --mpirun "mpirun --allow-run-as-root --oversubscribe --bind-to none" --json "$LOG/grad_overlap.json"
  rc=$?
  summary "scale: grad_overlap rc $rc: $(grep -E '^hidden' "$LOG/grad_overlap.log")$(why grad_overlap $rc)"
  # The model's links are those the ranks use: MPI with device tensors staged
  # through the host, measured here at 4 ranks (latency at 1 KiB, bus
  # bandwidth at 1 MiB), else scaling_sweep's defaults (this CPU machine's MPI).
  LINK=()
  run_limited bench_comm_device 60 "${M[@]}" -np 4 $B/bench_comm --device --iters 30 --overwrite \
    --json "$LOG/bench_comm_device_np4.json" &&
    read -r lat gbs < <(python3 -c 'import json, sys
rows = {r["bytes_per_rank"]: r for r in json.load(open(sys.argv[1]))}
print(rows[1024]["ours_s"] * 1e6, rows[1048576]["ours_busbw_gbs"])' "$LOG/bench_comm_device_np4.json") &&
    LINK=(--cpu-link-latency-us "$lat" --cpu-link-gbs "$gbs")
  summary "scale: MPI links with staged device tensors, 4 ranks: ${LINK[*]:-not measured}"
  # (At 2 and 4 ranks on the one GPU the model's compute term is measured:
  # N independent one-rank runs side by side, scaling_sweep's
  # --compute-basis auto; its error is then what the links add.)
  # (stdbuf: the points finished before a time limit stay in the log)
  # (parallel.timeout_s 60: a rank stuck in a collective ends its point in a
  # minute, with the one-line error, not at the stage's limit)
  MIN_S=60 run_limited scaling_gpu 180 stdbuf -oL $B/scaling_sweep --config configs/switch_tiny.pbtxt --set backend=CUDA \
    --set data.source=SYNTHETIC --set data.path= --set parallel.timeout_s=60 --ranks 1,2,4 --repeats 1 --steps 12 "${LINK[@]}" \
    --out "$LOG/scaling_gpu" --overwrite
  rc=$?
  summary "scale: scaling_sweep (GPU, MPI path) rc $rc: $(sweep_points scaling_gpu)$(why scaling_gpu $rc)"
fi
# 7. Issue 18: long-context attention beside PyTorch SDPA (its JSON feeds
# bench_attention's "x SDPA" column; without it the column stays empty; its
# --shapes are the floor rows' batches, as bench_attention lists them).
if want attn; then
  stamp "attn"
  FLOOR=$($B/bench_attention --list-floor-shapes 2> /dev/null)
  run_limited torch_attention_long 90 env PYTHONUNBUFFERED=1 python3 scripts/bench/torch_attention.py \
    --lengths 4096,16384,65536 --head-dims 64 --batch 1 --shapes "$FLOOR" --json "$LOG/torch_attention_long.json"
  summary "attn: torch_attention (SDPA) rc $?"
  SDPA=()
  [ -s "$LOG/torch_attention_long.json" ] && SDPA=(--sdpa "$LOG/torch_attention_long.json")
  rm -f "$OUT/bench_attention.json"
  run_limited bench_attention 200 $B/bench_attention --device cuda "${SDPA[@]}" --json "$OUT/bench_attention.json"
  summary "attn: bench_attention rc $? ($(grep -c . "$LOG/bench_attention.log") lines)"
  compare_with_record bench_attention "$OUT/bench_attention.json"
  # A routed_copy-style model at n = 16k (d 256, 4 heads of 64, bf16; 128
  # clusters): tokens/s, then the same model with dense attention.
  for kind in ROUTED DENSE; do
    run_limited "routed_copy_16k_$kind" 60 $B/train_switch --config configs/routed_copy.pbtxt --set backend=CUDA \
      --set precision=BF16 --set model.seq_len=16384 --set model.d_model=256 --set model.ffn_hidden=1024 \
      --set train.batch=1 --set train.steps=12 --set train.warmup_steps=2 --set train.log_interval=4 \
      --set train.eval_interval=100000 --set train.eval_batches=1 --set train.checkpoint_interval=0 \
      --set train.checkpoint_dir="$CKPT" \
      --set attention.kind=$kind
    rc=$?
    summary "attn: routed_copy n=16k $kind rc $rc: $(grep -E '^step' "$LOG/routed_copy_16k_$kind.log" | tail -1)$(why "routed_copy_16k_$kind" $rc)"
  done
fi
# What no issue's figure rests on, after issue 18's (the second call's
# budget reaches it only where comm, scale and attn leave time): the sweep on
# a model that keeps the GPU busy, training over NCCL with recomputation, the
# sharded optimizer and reduce-scattered gradients beside the MPI path, then
# ZeRO-1 on device tensors through MPI (none fatal).
if want extra; then
  stamp "extra"
  # The same sweep on a model that keeps the GPU busy (d 512, sequences of
  # 512, bf16): switch_tiny's steps are launch-bound, so ranks sharing the
  # GPU overlap their host work; this one's ranks contend for the GPU itself.
  MIN_S=60 run_limited scaling_gpu_busy 180 stdbuf -oL $B/scaling_sweep --config configs/switch_tiny.pbtxt --set backend=CUDA \
    --set data.source=SYNTHETIC --set data.path= --set parallel.timeout_s=60 --set precision=BF16 --set model.d_model=512 --set model.n_heads=8 \
    --set model.ffn_hidden=2048 --set model.seq_len=512 --ranks 1,2,4 --repeats 1 --steps 12 "${LINK[@]}" \
    --out "$LOG/scaling_gpu_busy" --overwrite
  rc=$?
  summary "extra: scaling_sweep (GPU busy: d 512, seq 512, bf16) rc $rc: $(sweep_points scaling_gpu_busy)$(why scaling_gpu_busy $rc)"
  # Training over NCCL, 2 ranks on the one GPU as above, with what issues
  # collectives inside backward and end_step: activation recomputation (the
  # replayed routers' all-reduce beside the gradient buckets' on their own
  # stream) and Sinkhorn's evaluation offsets (an all-reduce a layer in
  # end_step); its losses beside the MPI path's (not fatal).
  # (a checkpoint at step 6: with the optimizer sharded, its moments gathered over NCCL)
  NT=(--config configs/switch_tiny.pbtxt --set backend=CUDA --set data.source=SYNTHETIC --set data.path=
      --set train.steps=6 --set train.warmup_steps=1 --set train.log_interval=1 --set train.eval_interval=6
      --set train.checkpoint_interval=6
      --set train.checkpoint_dir="$CKPT" --overwrite --set train.recompute=true --set parallel.expert_parallel=2
      --set moe.bias_balance_rate=0 --set moe.sinkhorn_iters=4 --set moe.sinkhorn_at_eval=true
      --set parallel.timeout_s=30)
  # (parallel.timeout_s 30, where the default is 300: a collective stuck over
  # NCCL ends the run with the one-line error naming it, inside the run's 90 s;
  # and where a run still reaches its limit, the later NCCL runs, which would
  # hang alike, are not started)
  # same_losses A B: whether runs A and B logged the same losses, bit for
  # bit (their metrics files; the done lines print 6 digits).
  same_losses() {
    python3 - "$LOG/$1.jsonl" "$LOG/$2.jsonl" <<'PY' 2>&1 | tail -1
import json, sys
try:
    a, b = ({l["step"]: (repr(l.get("loss")), repr(l.get("val_loss"))) for l in map(json.loads, open(f))} for f in sys.argv[1:])
except Exception as e:
    sys.exit(print(f"not compared ({type(e).__name__})"))
diff = [s for s in a if b.get(s) != a[s]]
print(f"losses bit for bit at {len(a)} steps" if a and not diff and set(a) == set(b)
      else f"losses DIFFER (steps {sorted(diff)[:3]} of {len(a)}, {len(b)} logged)")
PY
  }
  # nccl_run NAME ARGS...: an NCCL training, unless an earlier one reached
  # its time limit
  NSKIP=0
  nccl_run() {
    local name=$1 rc
    shift
    if [ $NSKIP = 1 ]; then
      echo "not run: an NCCL training before it reached its time limit" > "$LOG/$name.log"
      return 125
    fi
    MIN_S=40 run_limited "$name" 90 "$@"
    rc=$?
    grep -qs 'stopped after' "$LOG/$name.log" && NSKIP=1
    return $rc
  }
  nccl_run nccl_train_np2 "${M[@]}" -np 2 "$(loopback $B/train_switch)" "${NT[@]}" --set parallel.backend=NCCL \
    --metrics "$LOG/nccl_train_np2.jsonl"
  rc_nccl=$?
  MIN_S=40 run_limited mpi_train_np2 90 "${M[@]}" -np 2 $B/train_switch "${NT[@]}" --set parallel.backend=MPI \
    --metrics "$LOG/mpi_train_np2.jsonl"
  rc_mpi=$?
  summary "extra: training over NCCL, recompute + Sinkhorn offsets, 2 ranks (not fatal) rc $rc_nccl: $(grep -hs '^done' "$LOG/nccl_train_np2.log" | head -1)$(why nccl_train_np2 $rc_nccl); over MPI rc $rc_mpi: $(grep -hs '^done' "$LOG/mpi_train_np2.log" | head -1)$(why mpi_train_np2 $rc_mpi); NCCL against MPI: $(same_losses nccl_train_np2 mpi_train_np2)"
  # The same over NCCL with the optimizer sharded (its broadcasts of arena
  # views and the shadows after them): the same losses as without (not fatal).
  nccl_run nccl_train_np2_shard "${M[@]}" -np 2 "$(loopback $B/train_switch)" "${NT[@]}" --set parallel.backend=NCCL \
    --set parallel.shard_optimizer=true --metrics "$LOG/nccl_train_np2_shard.jsonl"
  rc_shard=$?
  summary "extra: training over NCCL with the optimizer sharded (not fatal) rc $rc_shard, against without: $(same_losses nccl_train_np2 nccl_train_np2_shard): $(grep -hs '^done' "$LOG/nccl_train_np2_shard.log" | head -1)$(why nccl_train_np2_shard $rc_shard)"
  # And with the gradients reduce-scattered (parallel.reduce_scatter_grads:
  # NCCL's group of in-place reduces for the uneven parts): the same losses
  # to rounding (2 ranks add a + b either way; the norm may differ in its
  # last bit). Not fatal.
  nccl_run nccl_train_np2_rs "${M[@]}" -np 2 "$(loopback $B/train_switch)" "${NT[@]}" --set parallel.backend=NCCL \
    --set parallel.shard_optimizer=true --set parallel.reduce_scatter_grads=true --metrics "$LOG/nccl_train_np2_rs.jsonl"
  rc_rs=$?
  scat=$(grep -qs "gradients reduce-scattered" "$LOG/nccl_train_np2_rs.log" && echo "scattered" || echo "NOT scattered")
  summary "extra: training over NCCL, gradients reduce-scattered (not fatal) rc $rc_rs, $scat, against without (rounding may differ): $(same_losses nccl_train_np2 nccl_train_np2_rs): $(grep -hs '^done' "$LOG/nccl_train_np2_rs.log" | head -1 | cut -c1-120)$(why nccl_train_np2_rs $rc_rs)"
  # The deduplicated dispatch over NCCL (top-2: a token's rows for one rank
  # sent once; the route's index tensors staged through NCCL on the
  # caller's stream, in the recomputed forward too): the same losses as
  # without it (not fatal).
  nccl_run nccl_train_np2_top2 "${M[@]}" -np 2 "$(loopback $B/train_switch)" "${NT[@]}" --set parallel.backend=NCCL \
    --set moe.top_k=2 --metrics "$LOG/nccl_train_np2_top2.jsonl"
  rc_top2=$?
  nccl_run nccl_train_np2_dedup "${M[@]}" -np 2 "$(loopback $B/train_switch)" "${NT[@]}" --set parallel.backend=NCCL \
    --set moe.top_k=2 --set parallel.dedup_dispatch=true --metrics "$LOG/nccl_train_np2_dedup.jsonl"
  rc_dedup=$?
  summary "extra: training over NCCL, top-2 with the deduplicated dispatch (not fatal) rc $rc_top2/$rc_dedup, against without: $(same_losses nccl_train_np2_top2 nccl_train_np2_dedup): $(grep -hs '^done' "$LOG/nccl_train_np2_dedup.log" | head -1 | cut -c1-120)$(why nccl_train_np2_top2 $rc_top2)$(why nccl_train_np2_dedup $rc_dedup)"
  # ZeRO-1 (parallel.shard_optimizer) on device tensors through MPI, last in
  # the stage (no issue's figure depends on it; not fatal): the CUDA update
  # over views of a part, the values' all-gather and the bf16 shadows of
  # what arrives; losses and checkpoints bit for bit those without it; the
  # gradients reduce-scattered, within 1e-5.
  run_limited shard_optimizer_cuda 240 env SY_TEST_ARGS="--set backend=CUDA" \
    bash tests/shard_optimizer_test.sh "$PWD/$B/train_switch" "$PWD" mpirun
  summary "extra: sharded optimizer on the GPU (not fatal): $(grep -E '^(ok|FAIL)' "$LOG/shard_optimizer_cuda.log" | cut -c1-70 | tr '\n' ';')"
fi
if want more; then
  stamp "more"
  run_limited gpu_training_more 150 bash tests/gpu_training_test.sh "$PWD/$B/train_switch" "$PWD" depth_tiny routed_copy
  summary "more (rc $?, not fatal): $(grep -vE '^\[' "$LOG/gpu_training_more.log" | tr '\n' ' ' | cut -c1-900)"
  # mixtral_tiny reads tinyshakespeare, which does not travel: the synthetic corpus instead.
  run_limited gpu_training_mixtral 90 env SY_GPU_ARGS="--set data.source=SYNTHETIC --set data.path=" \
    bash tests/gpu_training_test.sh "$PWD/$B/train_switch" "$PWD" mixtral_tiny
  summary "more (rc $?, not fatal): $(grep -vE '^\[' "$LOG/gpu_training_mixtral.log" | tr '\n' ' ' | cut -c1-600)"
  # switch_tiny on padded expert buffers (switch_gpu's layout): the strided-batched path in training.
  run_limited gpu_training_padded 90 env SY_GPU_ARGS="--set moe.padded=true" \
    bash tests/gpu_training_test.sh "$PWD/$B/train_switch" "$PWD" switch_tiny
  summary "more (rc $?, not fatal): padded $(grep -vE '^\[' "$LOG/gpu_training_padded.log" | tr '\n' ' ' | cut -c1-600)"
  # ... and padded to each step's largest expert (moe.pad_to_largest: counted route, offsets uploaded).
  run_limited gpu_training_largest 90 env SY_GPU_ARGS="--set moe.pad_to_largest=true" \
    bash tests/gpu_training_test.sh "$PWD/$B/train_switch" "$PWD" switch_tiny
  summary "more (rc $?, not fatal): pad_to_largest $(grep -vE '^\[' "$LOG/gpu_training_largest.log" | tr '\n' ' ' | cut -c1-600)"
fi

stamp "done (status $status)"
summary "seconds from the start at which each step began: $STARTS"
# The tables first (whole in the JSON files and logs.tar.gz), then the
# summary, last: the device tool shows the last 12,000 characters, and the
# summary's line a check is what a reader needs first (summary.txt comes
# back too).
for f in "$LOG"/torch_*.log; do [ -f "$f" ] && { echo "== $(basename "$f" .log)"; tail -8 "$f"; }; done
[ -f "$LOG/bench_attention.log" ] && { echo "== bench_attention"; tail -90 "$LOG/bench_attention.log"; }
# (bench_ops' table: its last run's that printed one, a rerun past a fault holding every row)
for f in bench_ops_resume2 bench_ops_resume1 bench_ops; do
  [ -f "$LOG/$f.log" ] && grep -q '^device ' "$LOG/$f.log" &&
    { echo "== $f (its table)"; sed -n '/^device /,$p' "$LOG/$f.log"; break; }
done
echo "== summary"
cat "$OUT/summary.txt"
exit $status
