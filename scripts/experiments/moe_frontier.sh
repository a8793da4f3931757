#!/usr/bin/env bash
# The trade-off between switch_tiny's two bars at its configured 16 sequences
# per step (docs/experiments/moe-balance.md). Each run is switch_tiny with one
# change that spreads the load more evenly per batch (load-balance groups,
# larger noise, the expert drawn from the router by Gumbel noise), 2000 steps
# on the synthetic corpus. The runs go to $RUNS/frontier (RUNS defaults to
# build/runs); docs/moe_frontier.csv holds, per run, val loss at step 2000 and
# the share of logged steps (from step 100) whose per-batch max/mean load is 1.5
# or more, and docs/moe_frontier.png is drawn from it, dense tiny as a line
# (switch_tiny and dense tiny as configured come from moe_vs_dense.sh's runs in
# $RUNS). Runs two at a time, one thread each (~40 min on 2 cores; about 4.5 min
# a run; runs whose jsonl exists are skipped). Usage: moe_frontier.sh [--plot-only]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-build/runs}
OUT=$RUNS/frontier
BIN=build/bin/train_switch
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
source scripts/experiments/jobs.sh
export OPENBLAS_NUM_THREADS=1
common="--set train.steps=2000 --set train.eval_interval=100 --set train.log_interval=10"
S="--config configs/switch_tiny.pbtxt"
gum="--set moe.router_noise_kind=GUMBEL --set moe.router_noise"
# name | config and overrides (word-split on purpose)
runs=(
  "dense_seed2|--config configs/tiny.pbtxt --set train.seed=2"
  "switch_seed2|$S --set train.seed=2"
  "groups32|$S --set moe.load_balance_tokens=32"
  "groups16|$S --set moe.load_balance_tokens=16"
  "groups8|$S --set moe.load_balance_tokens=8"
  "groups16_noise0.5|$S --set moe.load_balance_tokens=16 --set moe.router_noise=0.5"
  "groups16_z0.01|$S --set moe.load_balance_tokens=16 --set moe.z_loss_coef=0.01"
  "groups32_noise0|$S --set moe.load_balance_tokens=32 --set moe.router_noise=0"
  "gumbel0.3|$S $gum=0.3"
  "gumbel0.5|$S $gum=0.5"
  "gumbel0.7|$S $gum=0.7"
  "gumbel1|$S $gum=1"
  "gumbel0.5_groups16|$S $gum=0.5 --set moe.load_balance_tokens=16"
  "gumbel1_groups16|$S $gum=1 --set moe.load_balance_tokens=16"
  "gumbel0.7_seed2|$S $gum=0.7 --set train.seed=2"
)
if [ "${1:-}" != "--plot-only" ]; then
  mkdir -p "$OUT"
  for r in "${runs[@]}"; do
    name=${r%%|*}
    [ -f "$OUT/$name.jsonl" ] && continue  # finished earlier (a run writes .part, renamed at the end)
    LOGDIR=$tmp run_bg train_run "$OUT" "$name" ${r#*|} $common
  done
  wait_all
  python3 scripts/experiments/runs_to_csv.py moe_frontier "$RUNS" > docs/moe_frontier.csv
fi
column -s, -t docs/moe_frontier.csv
# Plot rows (seed 1234 only): worse layer's %, val, and one label per point
# (runs that land on the same point share it).
python3 - docs/moe_frontier.csv > "$tmp/points" <<'PY'
import csv, sys
pts = {}
for name, val, *over in list(csv.reader(open(sys.argv[1])))[1:]:
    if "seed2" in name or name == "dense_tiny":
        continue
    pts.setdefault((max(map(float, over)), float(val)), []).append(name)
for (x, y), names in pts.items():
    print(x, y, "/".join(n.replace("switch_tiny_synthetic", "switch_tiny_as_configured") for n in names))
PY
dense=$(awk -F, '$1 == "dense_tiny" { print $2 }' docs/moe_frontier.csv)
gnuplot <<GP
set terminal pngcairo noenhanced size 1000,760 font ",10"
set output "docs/moe_frontier.png"
set title "switch_tiny at 16 sequences, seed 1234, 2000 steps: balance per batch vs val loss"
set xlabel "logged steps from step 100 with max/mean load >= 1.5, worse layer (%)"
set ylabel "val loss at step 2000 (nats/byte)"
set grid; set key bottom right
set xrange [-3:125]
plot "$tmp/points" u 1:2 w p pt 7 ps 1.2 t "switch_tiny variants", \
     "" u 1:2:3 w labels left offset 0.8,0 notitle, \
     $dense w l lw 2 t sprintf("dense tiny (%.4f)", $dense)
GP
echo "wrote docs/moe_frontier.png"
