#!/usr/bin/env bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer:
# built with clang, CUDA off, in build-asan/ (scripts/clang_build.sh: the
# build ci_fuzz.sh's targets share), run through ctest. Any report
# (memory error, leak, undefined behaviour) ends the program that made it
# with a non-zero exit, so its test fails and ctest prints the report.
# LeakSanitizer skips only OpenMPI's own leaks (scripts/lsan_mpi.supp: MPI,
# PMIx, hwloc, libevent, UCX) and one false positive of the sanitizer's
# thread start-up (the same file); project code has no suppressions.
# Run after scripts/setup.sh (its packages); installs clang's if missing.
#   scripts/ci_sanitize.sh [ctest arguments]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/clang_build.sh"
# Allocation stacks come from the fast (frame-pointer) unwinder, ASan's
# default. A program that starts MPI has its leaks checked before
# MPI_Finalize (comm::MpiSession), while OpenMPI's components are loaded and
# its blocks reachable, and what MPI_Init itself leaks is not checked: the
# check at exit saw OpenMPI's blocks from components unloaded at
# MPI_Finalize, "<unknown module>" frames that only the DWARF unwinder's
# longer stacks (fast_unwind_on_malloc=0) let a suppression name, at 2-10x
# the time of every allocation.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$ROOT/scripts/lsan_mpi.supp:print_suppressions=0}
start=$(date +%s)
# Only the programs of the tests run below (tests/CMakeLists.txt's
# sanitize_test_programs): the tools that only skipped scripts drive
# (export_hf, tokenize, scaling_sweep, bench_ops, ...) are not built here.
clang_build sanitize_test_programs
echo "sanitize: built in $(( $(date +%s) - start )) s"
cd "$BUILD"
# Left out here (each runs in the normal build, scripts/test.sh): end-to-end
# scripts that drive the tools through many short runs, at 1.3-3.1 times
# the cost under the sanitizers (parallel_equivalence 15 -> 42 s, its bf16
# run 21 -> 67 s, micro_batches 11 -> 29 s, checkpoint_resume 14 -> 17 s),
# for code that the unit tests below already run under them (or that is not
# ours). Kept: sample (train_switch's one-rank
# checkpoint, runtime/generate.cc), check_checkpoint (EP=2 checkpoints
# written by 2 ranks), shard_optimizer (the sharded update, its gathers and
# loads) and import_hf_cli (the import's readers on broken files), the
# paths no unit test runs.
SKIP=(
  loss_baseline           # loss curves vs a baseline: Transformer.* and Trainer.* run the same steps
  parallel_equivalence    # EP=4/EP=2 losses vs one rank's: ExpertParallel.* (comm_test) run the sharded layer
  parallel_equivalence_bf16  # the same runs in bf16: ExpertParallel.* and the bf16 unit tests (ExpertFfn*, MoeLayer.*)
  micro_batches           # loss curves with micro-batches: Trainer.BalanceBiasMovesOnceAStep runs them in-process
  plot_metrics_dashboard  # gnuplot pages from metrics files: Python and gnuplot, not our C++
  bench_ops_smoke         # a timing loop over the ops that ops_test and backend_ops_test run
  bench_attention_smoke   # a timing loop over the attention ops that routed_attention_test runs
  bench_ops_resume        # bench_ops's rerun past a fault: bench_ops is not built here
  'scaling_sweep.*'       # timing sweeps of training runs under mpirun
  multihost               # MPI over TCP between network namespaces (root only): MPI's transport, not our memory
  train_switch_cli        # the CLI's flags and refusals: config_test runs the config loader and its checks
  tokenize_pipeline       # tokenize -> train -> sample: tokenizer_test and token_shard_test run that code
  rank_startup            # start-up agreement under mpirun: Communicator.* and conformance run the collectives
  parallel_fault          # one rank's failure ends the job: timeouts and exit codes, not memory
  checkpoint_resume       # bit-exact resume: Checkpoint.RoundTripTrainsOnBitForBit runs save and load
  checkpoint_reshard      # EP 4 -> 2 -> 1: Checkpoint.ExpertsUnderGlobalNames, check_checkpoint's EP=2 writes
  checkpoint_signal       # SIGTERM/SIGINT under mpirun: signal timing and exit codes
  checkpoint_corrupt      # refusals through the CLI: Refusal.* and checkpoint_fuzz run the reader
  nonfinite               # the non-finite policy through the CLI: NonFinite.* run it
  export_hf_cli           # export_hf's CLI: export_hf_test runs the exporter and the reference forward
  route_report_cli        # route_report's CLI: route_analysis_test runs the analysis, sample_test the forward
  tools_overwrite         # existing outputs refused by bench_ops, bench_comm, scaling_sweep: Metrics.* run the check
  layering                # a grep of includes: no compiled code runs
  experiment_jobs         # the experiment scripts' job helper: bash, no compiled code
  compare_runs            # benchmark JSON side by side: Python, no compiled code
)
EXCLUDE="^($(IFS='|'; echo "${SKIP[*]}"))\$"
ctest --output-on-failure --timeout 900 -j "${CTEST_JOBS:-2}" -E "$EXCLUDE" "$@" && exit 0

# Up to three reruns, for one fault only: LeakSanitizer's tracer thread
# itself crashing at exit ("Tracer caught signal 11 ... LeakSanitizer has
# encountered a fatal error"), a known intermittent fault of the sanitizer
# runtime (google/sanitizers #1353, #1170), seen in comm_test_np4 (4 ranks
# on 2 cores), whose tests had all passed: about 1 run in 40 on a quiet
# machine, twice in a row in one CI run while the machine was loaded. A failed
# test is rerun only if its output holds that message and no report of
# ours: no ASan or UBSan error, no leak list, no failed GoogleTest case.
# Anything else fails here.
tracer_crash_only() {  # $1: a test's name; its output from ctest's log
  local out
  out=$(awk -v t="$1" '
    $0 ~ "^[0-9]+/[0-9]+ Testing: " t "$" { on = 1; next }
    on && /^<end of output>$/ { exit }
    on { print }' Testing/Temporary/LastTest.log)
  grep -q 'Tracer caught signal' <<<"$out" &&
    grep -q 'LeakSanitizer has encountered a fatal error' <<<"$out" &&
    ! grep -Eq 'ERROR: (AddressSanitizer|LeakSanitizer: detected)|runtime error:|\[  FAILED  \]' <<<"$out"
}
for attempt in 1 2 3; do
  mapfile -t failed < <(sed 's/^[0-9]*://' Testing/Temporary/LastTestsFailed.log)
  [ "${#failed[@]}" -gt 0 ] || exit 1
  for t in "${failed[@]}"; do
    tracer_crash_only "$t" || exit 1
  done
  echo "sanitize: LeakSanitizer's tracer crashed at exit in ${failed[*]} (a sanitizer runtime fault, no report of ours); rerun $attempt of 3"
  ctest --output-on-failure --timeout 900 --rerun-failed -E "$EXCLUDE" "$@" && exit 0
done
exit 1
