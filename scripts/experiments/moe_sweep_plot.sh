#!/usr/bin/env bash
# Draws docs/moe_sweep.png from docs/moe_sweep.csv, which it first extracts
# from the metrics of moe_sweep.sh ($RUNS/sweep) and of moe_vs_dense.sh ($RUNS;
# RUNS defaults to build/runs): left, val loss at 64 sequences per step for two
# seeds, dense vs switch_tiny with the per-sequence balance loss; right,
# switch_tiny's layer-1 expert load per training batch vs over the held-out pass
# (router in evaluation mode: no noise), with router noise 0.3 and 0.
# --plot-only redraws from the CSV.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-build/runs}
if [ "${1:-}" != "--plot-only" ]; then
  python3 scripts/experiments/runs_to_csv.py moe_sweep "$RUNS" > docs/moe_sweep.csv
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# CSV -> one "step value" file per series
awk -F, -v d="$tmp" 'NR > 1 { print $2, $3 > (d "/" $1) }' docs/moe_sweep.csv
gnuplot <<GP
set terminal pngcairo noenhanced size 1200,440 font ",10"
set output "docs/moe_sweep.png"
set multiplot layout 1,2
set grid; set xlabel "step"
set title "64 sequences per step: the same pair, two seeds"
set ylabel "val loss (nats/byte)"; set key top right
plot "$tmp/val_dense_s1234" w l lw 2 lc rgb "#1f77b4" t "dense tiny, seed 1234", \
     "$tmp/val_switch_s1234" w l lw 2 lc rgb "#d62728" t "switch_tiny per-seq. balance, seed 1234", \
     "$tmp/val_dense_s2" w l lw 2 dt 2 lc rgb "#1f77b4" t "dense tiny, seed 2", \
     "$tmp/val_switch_s2" w l lw 2 dt 2 lc rgb "#d62728" t "switch_tiny per-seq. balance, seed 2"
set title "switch_tiny layer 1 expert load (16 sequences): training batch vs held-out pass"
set ylabel "max / mean load"; set yrange [0:5]; set key top right
plot 1.5 w l lc rgb "black" dt 3 t "1.5", \
     "$tmp/load_train_noise0.3" w l lc rgb "#ff7f0e" t "training batch, noise 0.3", \
     "$tmp/load_heldout_noise0.3" w lp pt 7 ps 0.6 lc rgb "#ff7f0e" t "held-out pass, noise 0.3 (eval: none)", \
     "$tmp/load_train_noise0" w l lc rgb "#2ca02c" t "training batch, noise 0", \
     "$tmp/load_heldout_noise0" w lp pt 7 ps 0.6 lc rgb "#2ca02c" t "held-out pass, noise 0"
unset multiplot
GP
echo "wrote docs/moe_sweep.png"
