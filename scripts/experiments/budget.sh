#!/usr/bin/env bash
# The compute budget (docs/experiments/budget.md): switch_tiny with 4 small
# (hidden 64, cost 0.25) + 4 large (hidden 512, cost 2) experts under a hard
# budget B of 0.5, 0.75 and 1.0 dense-FFN FLOPs per token (moe.budget_mode HARD,
# the realised-cost budget loss at coefficient 1), next to the same compute
# spent uniformly: switch_tiny with 8 experts of hidden 256 B (cost B each),
# and dense tiny with ffn_hidden 256 B; and the B = 0.75 heterogeneous run
# without router noise. 1000 steps each on the synthetic
# corpus, evaluated every 100. Runs go to $RUNS/budget (RUNS defaults to
# build/runs); docs/budget.csv (one row per run: val loss, realised compute)
# and docs/budget_costs.csv (the heterogeneous runs' realised, expected and
# before-budget cost per logged step) are extracted, docs/budget.png drawn
# from them. Two runs at a time, one thread each (~75 min on 2 cores; runs
# whose jsonl exists are skipped). BIN overrides the binary.
# Usage: budget.sh [--plot-only]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-build/runs}
OUT=$RUNS/budget
BIN=${BIN:-build/bin/train_switch}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
source scripts/experiments/jobs.sh
export OPENBLAS_NUM_THREADS=1
common="--threads 1 --set train.steps=1000 --set train.eval_interval=100 --set train.log_interval=10"
S="--config configs/switch_tiny.pbtxt"
het="$S --set moe.expert_hidden=64,64,64,64,512,512,512,512 --set moe.budget_mode=HARD --set moe.budget_coef=1"
# name | config and overrides (word-split on purpose)
runs=(
  "hetero_b0.5|$het --set moe.budget=0.5"
  "uniform_b0.5|$S --set moe.expert_hidden=128"
  "hetero_b0.75|$het --set moe.budget=0.75"
  "uniform_b0.75|$S --set moe.expert_hidden=192"
  "hetero_b1.0|$het --set moe.budget=1.0"
  "uniform_b1.0|$S --set moe.expert_hidden=256"
  "dense_b0.5|--config configs/tiny.pbtxt --set model.ffn_hidden=128"
  "dense_b0.75|--config configs/tiny.pbtxt --set model.ffn_hidden=192"
  "dense_b1.0|--config configs/tiny.pbtxt"
  # Without router noise, so training routes as evaluation does (noise-free).
  "hetnoise0_b0.75|$het --set moe.budget=0.75 --set moe.router_noise=0"
)
if [ "${1:-}" != "--plot-only" ]; then
  mkdir -p "$OUT"
  renice -n 10 -p $$ > /dev/null  # (the runs after it inherit it: behind interactive work)
  for r in "${runs[@]}"; do
    name=${r%%|*}
    [ -f "$OUT/$name.jsonl" ] && continue  # finished earlier (a run writes .part, renamed at the end)
    run_bg train_run "$OUT" "$name" ${r#*|} $common
  done
  wait_all
  python3 scripts/experiments/runs_to_csv.py budget "$RUNS" > docs/budget.csv
  python3 scripts/experiments/runs_to_csv.py budget_costs "$RUNS" > docs/budget_costs.csv
fi
column -s, -t docs/budget.csv
# Plot: val loss against measured compute per kind; the heterogeneous runs'
# realised, before-budget and expected cost over training.
for k in hetero uniform dense hetnoise0; do
  awk -F, -v k=$k 'NR > 1 && $2 == k { print $6, $4, "B=" $3 }' docs/budget.csv | sort -n > "$tmp/$k"
done
for b in 0.5 0.75 1.0; do awk -F, -v r=hetero_b$b '$1 == r { print $2, $3, $4, $5 }' docs/budget_costs.csv > "$tmp/c$b"; done
gnuplot <<GP
set terminal pngcairo noenhanced size 1400,600 font ",10"
set output "docs/budget.png"
set multiplot layout 1,2
set title "switch_tiny, 1000 steps: val loss vs measured compute (training forward FLOPs per token / dense tiny's)"
set xlabel "compute per token, fraction of dense tiny (ffn_hidden 256)"
set ylabel "val loss at step 1000 (nats/byte)"
set grid; set key top right
plot "$tmp/hetero" u 1:2 w lp pt 7 ps 1.3 t "4 x 64 + 4 x 512 experts, hard budget B", \
     "" u 1:2:3 w labels offset 0,1 notitle, \
     "$tmp/uniform" u 1:2 w lp pt 5 ps 1.2 t "8 experts of hidden 256 B", \
     "" u 1:2:3 w labels left offset 1,0.6 notitle, \
     "$tmp/dense" u 1:2 w lp pt 9 ps 1.4 t "dense, ffn_hidden 256 B", \
     "" u 1:2:3 w labels left offset 1,-0.6 notitle, \
     "$tmp/hetnoise0" u 1:2 w p pt 6 ps 1.6 t "4 x 64 + 4 x 512, B, no router noise", \
     "" u 1:2:3 w labels offset 0,-1 notitle
set title "heterogeneous runs: cost per token over training (dense-FFN units, mean of the 2 MoE layers)"
set xlabel "step"; set ylabel "cost per token"
set key top right; set yrange [0:*]
bs = "0.5 0.75 1.0"
set key bottom right
plot for [i=1:3] "$tmp/c".word(bs, i) u 1:2 w l lw 2 lc i t "realised, B=".word(bs, i), \
     for [i=1:3] "$tmp/c".word(bs, i) u 1:3 w l dt 2 lc i t "before the budget's drops, B=".word(bs, i), \
     for [i=1:3] "$tmp/c".word(bs, i) u 1:4 w l dt 3 lw 2 lc i t "expected (soft), B=".word(bs, i)
unset multiplot
GP
echo "wrote docs/budget.png"
