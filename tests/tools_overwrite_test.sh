#!/usr/bin/env bash
# bench_ops --json, bench_comm --json and scaling_sweep --out refuse an
# existing, non-empty output before any work (runtime/output_file.h): exit 2,
# one error line naming the option and the path, the file unchanged;
# --overwrite replaces it.
#   tools_overwrite_test.sh BIN_DIR SOURCE_DIR MPIEXEC
set -u
BIN=$1; SRC=$2; MPIEXEC=$3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
# refused NAME FILE OPTION COMMAND...: FILE holds "keep me"; the command must refuse it.
refused() {
  local name=$1 file=$2 option=$3; shift 3
  echo "keep me" > "$file"
  "$@" > "$tmp/out" 2> "$tmp/err"
  local rc=$?
  # mpirun adds its own lines about the exit code: count ours.
  if [ $rc -eq 2 ] && [ "$(grep -c '^error: ' "$tmp/err")" -eq 1 ] &&
     grep -q "^error: .*$option $file: exists and is not empty" "$tmp/err" && [ "$(cat "$file")" = "keep me" ]; then
    echo "ok   $name refused: $(grep '^error: ' "$tmp/err")"
  else
    echo "FAIL $name: exit $rc, $(cat "$file" 2>/dev/null | head -c 40)"; cat "$tmp/out" "$tmp/err"; fail=1
  fi
}
refused bench_ops "$tmp/ops.json" --json "$BIN/bench_ops" --device cpu --quick --iters 1 --json "$tmp/ops.json"
refused "bench_comm (1 rank)" "$tmp/comm.json" --json "$BIN/bench_comm" --iters 3 --json "$tmp/comm.json"
refused "bench_comm (2 ranks)" "$tmp/comm.json" --json \
  "$MPIEXEC" --oversubscribe -np 2 "$BIN/bench_comm" --iters 3 --json "$tmp/comm.json"
for suffix in .csv .png _projection.csv; do
  rm -f "$tmp"/sweep*
  refused "scaling_sweep ($suffix)" "$tmp/sweep$suffix" --out "$BIN/scaling_sweep" \
    --config "$SRC/configs/switch_tiny.pbtxt" --ranks 1 --steps 4 --repeats 1 --out "$tmp/sweep"
done
# --overwrite replaces the file with the results.
echo "keep me" > "$tmp/ops.json"
if "$BIN/bench_ops" --device cpu --quick --iters 1 --overwrite --json "$tmp/ops.json" > "$tmp/out" 2>&1 &&
   python3 -c 'import json, sys; assert json.load(open(sys.argv[1]))["ops"]' "$tmp/ops.json"; then
  echo "ok   bench_ops --overwrite replaced it with the results"
else
  echo "FAIL bench_ops --overwrite:"; cat "$tmp/out"; fail=1
fi
# Bad values on the command line: exit 2, one line, before any work (NaN
# passed CLI::Range: examples/cli.h's FiniteRange; --ranks was std::stoi's).
usage() {  # usage NAME NEEDLE COMMAND...
  local name=$1 needle=$2; shift 2
  "$@" > "$tmp/out" 2> "$tmp/err"
  local rc=$?
  if [ $rc -eq 2 ] && [ "$(wc -l < "$tmp/err")" -eq 1 ] && grep -qF -- "$needle" "$tmp/err"; then
    echo "ok   $name: $(cat "$tmp/err")"
  else
    echo "FAIL $name: exit $rc"; cat "$tmp/out" "$tmp/err"; fail=1
  fi
}
rm -f "$tmp"/sweep*
usage "sample --temperature nan" "--temperature: value nan not in [0 - 100]" \
  "$BIN/sample" --checkpoint "$tmp" --temperature nan
usage "scaling_sweep --ranks 1,x" "--ranks 1,x: 'x' is not a rank count" \
  "$BIN/scaling_sweep" --ranks 1,x --out "$tmp/sweep"
usage "scaling_sweep --compute-s nan" "--compute-s: value nan not in" \
  "$BIN/scaling_sweep" --compute-s nan --out "$tmp/sweep"
usage "scaling_sweep --per-rank-batch -3" "--per-rank-batch" \
  "$BIN/scaling_sweep" --per-rank-batch -3 --out "$tmp/sweep"
[ -z "$(ls "$tmp"/sweep* 2>/dev/null)" ] || { echo "FAIL refused sweeps wrote: $(ls "$tmp"/sweep*)"; fail=1; }
exit $fail
