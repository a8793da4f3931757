#!/usr/bin/env bash
# On the synthetic long-range copy task (gaps 48-160 bytes, sequences of 256,
# several times the local window of 32), local + routing heads against local
# heads only, at equal steps (docs/experiments/routed-attention.md). 5000 steps
# of 32 sequences each, and the same pair again with train.seed=2 (another
# corpus and initialisation). The runs go to $RUNS (default build/runs);
# docs/routed_vs_local.csv is extracted from them and docs/routed_vs_local.png
# drawn from it. Run from the repo root after building (~45 min per pair on 2
# cores). --plot-only redraws from the CSV.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=build/bin/train_switch
OUT=${RUNS:-build/runs}
if [ "${1:-}" != "--plot-only" ]; then
  mkdir -p "$OUT"
  source scripts/experiments/jobs.sh
  # run NAME ARGS...: one run, its summary lines shown
  run() { local name=$1; shift; "$BIN" --config configs/routed_copy.pbtxt "$@" --metrics "$OUT/$name.jsonl" --overwrite | grep -E "attention FLOPs|done"; }
  local_only=(--set attention.num_routing_heads=0)
  s2=(--set train.seed=2)
  run_bg run routed_copy
  run_bg run local_copy "${local_only[@]}"
  run_bg run routed_copy_seed2 "${s2[@]}"
  run_bg run local_copy_seed2 "${s2[@]}" "${local_only[@]}"
  wait_all
  python3 scripts/experiments/runs_to_csv.py routed_vs_local "$OUT" > docs/routed_vs_local.csv
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
awk -F, -v d="$tmp" 'NR > 1 { print $2, $3 > (d "/" $1 ".val"); last[$1] = $2 " " $3 }
  END { for (r in last) print r ": " last[r] " (step, val loss)" }' docs/routed_vs_local.csv
gnuplot <<GP
set terminal pngcairo noenhanced size 1100,420 font ",10"
set output "docs/routed_vs_local.png"
set multiplot layout 1,2 title "Long-range copy (gap 48-160, window 32): val loss at equal steps"
set xlabel "step"; set ylabel "val loss (nats/byte)"; set grid; set yrange [0.478:0.492]
set title "train.seed 1234"
plot "$tmp/local_copy.val" w lp t "4 local heads", "$tmp/routed_copy.val" w lp t "2 local + 2 routing heads (16 clusters)"
set title "train.seed 2"
plot "$tmp/local_copy_seed2.val" w lp t "4 local heads", "$tmp/routed_copy_seed2.val" w lp t "2 local + 2 routing heads (16 clusters)"
unset multiplot
GP
echo "wrote docs/routed_vs_local.png"
