#!/usr/bin/env bash
# scaling_sweep is reproducible to the extent the machine allows: each point
# is repeated and the CSV gives the median and spread, the load average and
# the cores; a busy machine is warned about. Run as root it passes mpirun
# what OpenMPI needs, so the consent variables are unset here on purpose.
set -u
BIN=$1; SRC=$2
unset OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
echo "99.00 98.00 97.00 3/456 7890" > "$tmp/busy"
echo "0.00 0.00 0.00 1/456 7890" > "$tmp/quiet"
"$BIN" --config "$SRC/configs/switch_tiny.pbtxt" --ranks 1,2 --steps 4 --repeats 2 --set data.synthetic_bytes=50000 \
  --loadavg-file "$tmp/busy" --out "$tmp/s" > "$tmp/out" 2> "$tmp/err" || { echo "FAIL sweep (uid $(id -u)):"; cat "$tmp/out" "$tmp/err" "$tmp"/*.log 2>/dev/null; exit 1; }
grep -q "^warning: load average 99.00 before the sweep, while its 2 ranks will need " "$tmp/err" \
  && echo "ok   busy machine warned: $(cat "$tmp/err")" || { echo "FAIL no warning for load 99:"; cat "$tmp/err"; fail=1; }
head -1 "$tmp/s.csv" | grep -q ",repeats,step_s_min,step_s_max,efficiency_min,efficiency_max,loadavg_1m,cores,model_compute_s,compute_basis,expert_share,load_imbalance,imbalance_s$" \
  || { echo "FAIL csv header: $(head -1 "$tmp/s.csv")"; fail=1; }
# Every row: 2 repeats, min <= median <= max for the step time and the
# efficiency, the load read before the point, this machine's cores.
bad=$(awk -F, -v cores="$(nproc)" 'NR > 1 {
  n++
  if ($11 != 2 || $12 > $4 || $4 > $13 || $14 > $8 + 1e-12 || $8 > $15 + 1e-12 || $16 != 99 || $17 != cores) print "row " NR ": " $0
  if ($19 != "single") print "row " NR ": the CPU default basis is single: " $0
} END { if (n != 4) print n " rows, want 4" }' "$tmp/s.csv")
[ -z "$bad" ] && echo "ok   csv: 4 points, medians within their spread" || { echo "FAIL csv: $bad"; cat "$tmp/s.csv"; fail=1; }
# The experts' load imbalance: at 2 ranks the term is the profiled 1-rank
# run's expert share of the 1-rank step (c1, or c1 / 2 strong) times the
# excess of the more loaded half of the experts, and at 1 rank nothing.
bad=$(awk -F, 'NR > 1 {
  if ($2 == 1) { step1[$1] = $4; if ($22 != 0) print "row " NR ": an imbalance at one rank: " $0; next }
  e = $20 * ($1 == "weak" ? step1[$1] : step1[$1] / $2)
  if (!($20 > 0 && $20 < 1 && $21 > 1 && $22 > 0)) print "row " NR ": share, imbalance or term out of range: " $0
  d = $22 - e * ($21 - 1); if (d < 0) d = -d
  if (d > 1e-4 * $22 + 1e-9) print "row " NR ": imbalance_s " $22 " is not " e * ($21 - 1) ": " $0
}' "$tmp/s.csv")
[ -z "$bad" ] && echo "ok   imbalance term: $(awk -F, 'NR > 1 && $2 == 2 {printf "%s: experts %.0f%% of the step, load %.3f, +%.2f ms; ", $1, 100 * $20, $21, 1e3 * $22}' "$tmp/s.csv")" \
  || { echo "FAIL imbalance: $bad"; cat "$tmp/s.csv"; fail=1; }
# The compute term measured side by side (--compute-basis concurrent, the
# default where CUDA ranks share a GPU): at 2 ranks it comes from two
# independent one-rank runs, and the projection adds the links' cost to it.
# (--no-imbalance: no term, so the links' share of each projection,
# projected - compute - imbalance, must be the same as with the term.)
"$BIN" --config "$SRC/configs/switch_tiny.pbtxt" --ranks 1,2 --steps 4 --repeats 1 --set data.synthetic_bytes=50000 \
  --compute-basis concurrent --no-imbalance --loadavg-file "$tmp/quiet" --out "$tmp/c" > "$tmp/out" 2> "$tmp/err" \
  || { echo "FAIL concurrent sweep:"; cat "$tmp/out" "$tmp/err" "$tmp"/*.log 2>/dev/null; fail=1; }
bad=$(awk -F, 'FNR == 1 { f++; next }
  f == 1 && $2 == 2 { links[$1] = $9 - $18 - $22 }
  f == 2 && $2 == 2 {
    if ($20 != 0 || $22 != 0) print "--no-imbalance row " FNR " has a term: " $0
    d = $9 - $18 - $22 - links[$1]; if (d < 0) d = -d
    if (d > 2e-6) print $1 ": the links add " links[$1] " s with the imbalance term, " $9 - $18 " without"
  }' "$tmp/s.csv" "$tmp/c.csv")
[ -z "$bad" ] && echo "ok   the projection adds the imbalance term to the compute, the links unchanged" \
  || { echo "FAIL projection: $bad"; cat "$tmp/s.csv" "$tmp/c.csv"; fail=1; }
bad=$(awk -F, 'NR > 1 {
  want = $2 == 1 ? "single" : "concurrent"
  if ($19 != want || $18 <= 0 || ($2 == 1 && $18 != $4) || ($2 > 1 && $9 <= $18)) print "row " NR ": " $0
}' "$tmp/c.csv")
[ -z "$bad" ] && grep -q "m: measured as N independent runs side by side" "$tmp/out" \
  && echo "ok   concurrent compute basis: $(awk -F, 'NR > 1 && $2 == 2 {printf "%s %.1f ms measured, %.1f ms projected; ", $1, $18 * 1e3, $9 * 1e3}' "$tmp/c.csv")" \
  || { echo "FAIL concurrent basis: $bad"; cat "$tmp/c.csv" "$tmp/out"; fail=1; }
# A directory that does not exist: one line before any run.
"$BIN" --config "$SRC/configs/switch_tiny.pbtxt" --out "$tmp/none/s" > "$tmp/out" 2> "$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q "^error: --out $tmp/none/s.csv: directory $tmp/none does not exist$" "$tmp/err" \
  && echo "ok   missing directory: $(cat "$tmp/err")" || { echo "FAIL missing directory: exit $rc: $(cat "$tmp/err")"; fail=1; }
# A quiet machine: no warning.
"$BIN" --config "$SRC/configs/switch_tiny.pbtxt" --ranks 1 --steps 4 --repeats 1 --set data.synthetic_bytes=50000 \
  --loadavg-file "$tmp/quiet" --out "$tmp/q" > "$tmp/out" 2> "$tmp/err" || { echo "FAIL quiet sweep:"; cat "$tmp/out" "$tmp/err"; fail=1; }
grep -q "^warning: load average" "$tmp/err" && { echo "FAIL quiet machine warned: $(cat "$tmp/err")"; fail=1; } || echo "ok   quiet machine: no warning"
exit $fail
