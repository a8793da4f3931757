#!/usr/bin/env bash
# Fuzzing in CI: builds the libFuzzer targets (fuzz/, clang, ASan + UBSan,
# CUDA off) in build-asan/ (scripts/clang_build.sh: after ci_sanitize.sh,
# only the targets' own files are left to build) and runs each for FUZZ_SECONDS (default 45, so
# that CI's whole run stays under 30 minutes on 2 cores) from its committed
# seed corpus (fuzz/corpus/<target>/; config_fuzz also reads
# configs/*.pbtxt and a dictionary printed from the schema; checkpoint_fuzz
# has fuzz/checkpoint_fuzz.dict). New inputs go to
# build-asan/corpus/<target>/, never into the committed seeds.
#
# The targets run side by side, as many at once as there are cores (each
# fuzzer is one process, one core): on CI's 2 cores, 4 targets take two turns
# of FUZZ_SECONDS, not four. Each still gets its full time.
#
# A finding (crash, sanitizer report, leak, an input slower than 10 s or over
# 2 GB; for checkpoint_fuzz one allocation of 64 MB) fails the run; the input
# is kept in build-asan/findings/ and printed in base64 so it can be replayed
# from the log:
#   base64 -d > crash && build-asan/bin/<target> crash
# Run after scripts/setup.sh (its packages); installs clang's if missing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_EACH=${FUZZ_SECONDS:-45}
TARGETS=(config_fuzz data_fuzz shard_fuzz checkpoint_fuzz)
source "$ROOT/scripts/clang_build.sh"
start=$(date +%s)
clang_build "${TARGETS[@]}" config_fuzz_dict
echo "fuzz: built in $(( $(date +%s) - start )) s"
"$BUILD/bin/config_fuzz_dict" > "$BUILD/config.dict"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
# One target's run; its report (ok or FAIL, and a finding's log and input in
# base64) goes to $BUILD/<target>.report, printed in the targets' order below.
fuzz_one() {
  local t=$1 work=$BUILD/corpus/$1 findings=$BUILD/findings/$1 report=$BUILD/$1.report
  rm -rf "$findings"; mkdir -p "$work" "$findings"
  local opts=() seeds=("$ROOT/fuzz/corpus/$t")
  if [ "$t" = config_fuzz ]; then opts=(-dict="$BUILD/config.dict"); seeds+=("$ROOT/configs"); fi
  # Its inputs are a few KB: one allocation of 64 MB is one not bounded by the file's size.
  if [ "$t" = checkpoint_fuzz ]; then opts=(-dict="$ROOT/fuzz/checkpoint_fuzz.dict" -malloc_limit_mb=64); fi
  local start=$(date +%s)
  if "$BUILD/bin/$t" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="$findings/" "${opts[@]}" "$work" "${seeds[@]}" \
       > "$BUILD/$t.log" 2>&1; then
    echo "ok   $t: $(grep -m1 -o 'Done [0-9]* runs in [0-9]* second(s)' "$BUILD/$t.log"), $(ls "$work" | wc -l) inputs in its corpus, $(( $(date +%s) - start )) s" > "$report"
  else
    {
      echo "FAIL $t: a finding (log: $BUILD/$t.log)"
      grep -v -E '^#[0-9]+' "$BUILD/$t.log" | tail -60
      for f in "$findings"/*; do
        [ -f "$f" ] || continue
        echo "--- $f ($(stat -c %s "$f") bytes), base64:"; base64 "$f"
      done
    } > "$report"
  fi
}
AT_ONCE=${FUZZ_JOBS:-$(nproc)}
start=$(date +%s)
for t in "${TARGETS[@]}"; do
  rm -f "$BUILD/$t.report"
  fuzz_one "$t" &
  while [ "$(jobs -rp | wc -l)" -ge "$AT_ONCE" ]; do wait -n || true; done
done
wait
fail=0
for t in "${TARGETS[@]}"; do
  if [ -s "$BUILD/$t.report" ]; then cat "$BUILD/$t.report"; else echo "FAIL $t: no report (the fuzzer's shell died)"; fail=1; fi
  grep -q '^FAIL' "$BUILD/$t.report" 2>/dev/null && fail=1
done
echo "fuzz: ${#TARGETS[@]} targets, $AT_ONCE at once, in $(( $(date +%s) - start )) s"
exit $fail
