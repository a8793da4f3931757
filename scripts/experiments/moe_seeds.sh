#!/usr/bin/env bash
# switch_tiny as configured, the two Gumbel settings closest to the load bar
# (moe_frontier.sh) and load-balance coefficients 0.03 and 0.1, on more seeds and
# on both corpora, with every training batch's load logged
# (train.log_interval=1), so "over 1.5" counts batches, not logged steps
# (docs/experiments/moe-balance.md). 2000 steps, 16 sequences, two runs at a
# time, one thread each (~4.5 min a run on one core; 23 runs, ~55 min on 2
# cores). Runs whose $RUNS/seeds/NAME.jsonl exists are skipped (RUNS defaults
# to build/runs).
#
# The full metrics (2.3 MB a run) go to SCRATCH (default $RUNS/seeds_full);
# $RUNS/seeds/NAME.jsonl keeps every 10th step, every evaluation, and a last
# line {"load_stats": ...} from moe_load_stats.py (over-1.5 batches after
# warm-up, the lasting part of the load and the batch-to-batch spread). The
# table is docs/moe_seeds.csv; docs/moe_load_parts.png is drawn from
# docs/moe_load_parts.csv. Dense tiny at seeds 1234 and 2 comes from
# moe_vs_dense.sh's and moe_frontier.sh's runs in $RUNS.
# Usage: moe_seeds.sh [SCRATCH] [--table-only]   (--table-only: no runs; the
# table and plot from the CSVs)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-build/runs}
OUT=$RUNS/seeds
SCRATCH=$RUNS/seeds_full
table_only=0
for a in "$@"; do
  if [ "$a" = "--table-only" ]; then table_only=1; else SCRATCH=$a; fi
done
BIN=build/bin/train_switch
source scripts/experiments/jobs.sh
# seeds_run NAME ARGS...: the full metrics in SCRATCH, the thinned in OUT.
seeds_run() {
  local name=$1; shift
  train_run "$SCRATCH" "$name" "$@" || return 1
  python3 scripts/experiments/moe_load_stats.py "$SCRATCH/$name.jsonl" --thin "$OUT/$name.jsonl" > /dev/null
}
SHAKE=../shared/data/tinyshakespeare.txt
export OPENBLAS_NUM_THREADS=1
common="--set train.steps=2000 --set train.eval_interval=100 --set train.log_interval=1"
S="--config configs/switch_tiny.pbtxt"
D="--config configs/tiny.pbtxt"
T="--set data.source=TEXT_FILE --set data.path=$SHAKE"
gum="--set moe.router_noise_kind=GUMBEL --set moe.router_noise"
# name | config and overrides (word-split on purpose). Names end in
# _{syn,txt}_s<seed>: the corpus and the seed, which pair a run with dense tiny.
runs=(
  "switch_syn_s1234|$S"
  "switch_syn_s2|$S --set train.seed=2"
  "switch_syn_s3|$S --set train.seed=3"
  "switch_txt_s1234|$S $T"
  "switch_txt_s2|$S $T --set train.seed=2"
  "gumbel0.5_syn_s1234|$S $gum=0.5"
  "gumbel0.5_syn_s2|$S $gum=0.5 --set train.seed=2"
  "gumbel0.5_syn_s3|$S $gum=0.5 --set train.seed=3"
  "gumbel0.5_txt_s1234|$S $gum=0.5 $T"
  "gumbel0.5_nolb_syn_s1234|$S $gum=0.5 --set moe.load_balance_coef=0"
  "gumbel0.4_syn_s1234|$S $gum=0.4"
  "gumbel0.4_syn_s2|$S $gum=0.4 --set train.seed=2"
  "gumbel0.4_txt_s1234|$S $gum=0.4 $T"
  # The bar's coefficient is 0.01; is it what leaves the lasting imbalance?
  "switch_lb0.03_syn_s1234|$S --set moe.load_balance_coef=0.03"
  "switch_lb0.03_txt_s1234|$S $T --set moe.load_balance_coef=0.03"
  "switch_lb0.1_syn_s1234|$S --set moe.load_balance_coef=0.1"
  "switch_lb0.1_syn_s2|$S --set moe.load_balance_coef=0.1 --set train.seed=2"
  "switch_lb0.1_txt_s1234|$S $T --set moe.load_balance_coef=0.1"
  "switch_lb0.1_txt_s2|$S $T --set moe.load_balance_coef=0.1 --set train.seed=2"
  "gumbel0.5_lb0.1_syn_s1234|$S $gum=0.5 --set moe.load_balance_coef=0.1"
  "gumbel0.5_lb0.1_txt_s1234|$S $gum=0.5 $T --set moe.load_balance_coef=0.1"
  "dense_syn_s3|$D --set train.seed=3"
  "dense_txt_s2|$D $T --set train.seed=2"
)
if [ $table_only = 0 ]; then
  mkdir -p "$OUT" "$SCRATCH"
  for r in "${runs[@]}"; do
    name=${r%%|*}
    [ -f "$OUT/$name.jsonl" ] && continue
    run_bg seeds_run "$name" ${r#*|} $common
  done
  wait_all
  python3 scripts/experiments/runs_to_csv.py moe_seeds "$RUNS" > docs/moe_seeds.csv
  python3 scripts/experiments/runs_to_csv.py moe_load_parts "$RUNS" > docs/moe_load_parts.csv
fi
# over: training batches after warm-up (steps 21-2000) with max/mean load >=
# 1.5; max: the largest; lasting: largest E * (an expert's mean load over 200
# steps), from step 100; spread: median relative sd of an expert's per-batch
# load within those windows. _L0, _L1: the MoE layer.
column -s, -t docs/moe_seeds.csv

# docs/moe_load_parts.png: switch_tiny as configured (seed 1234), each layer's
# per-batch max/mean (every 10th batch) and its lasting part (largest expert's
# mean load over each 200-step window, times E, drawn across its window), on
# both corpora.
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
awk -F, -v d="$tmp" -v end=2000 '
  NR == 1 { next }
  $2 ~ /^batch/ { print $3, $4 > (d "/" $1 "." $2); next }
  { f = d "/" $1 "." $2; if (f in open) print $3, v[f] "\n" > f; open[f] = 1; print $3, $4 > f; v[f] = $4 }
  END { for (f in open) print end, v[f] > f }' docs/moe_load_parts.csv
gnuplot <<GP
set terminal pngcairo noenhanced size 1100,420 font ",10"
set output "docs/moe_load_parts.png"
set multiplot layout 1,2 title "switch_tiny (seed 1234): per-batch max/mean load and its lasting part (200-step windows)"
set xlabel "step"; set ylabel "max / mean load"; set grid; set yrange [0.9:2.4]; set key top right
do for [c in "syn txt"] {
  set title (c eq "syn" ? "synthetic corpus" : "tinyshakespeare")
  plot "$tmp/".c.".batch_L0" w p pt 7 ps 0.3 lc rgb "#9fb8e0" t "layer 0, batch", \
       "$tmp/".c.".batch_L1" w p pt 7 ps 0.3 lc rgb "#f0a89a" t "layer 1, batch", \
       "$tmp/".c.".lasting_L0" w l lw 3 lc rgb "#1f4e9c" t "layer 0, lasting", \
       "$tmp/".c.".lasting_L1" w l lw 3 lc rgb "#b22222" t "layer 1, lasting", \
       1.5 w l dt 2 lc rgb "black" t "1.5"
}
unset multiplot
GP
echo "wrote docs/moe_load_parts.png"
