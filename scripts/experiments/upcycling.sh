#!/usr/bin/env bash
# Sparse upcycling (train_switch --init-from) on tinyshakespeare: the dense
# shakespeare_small trained 1000 steps, then 1000 steps more as (a) the same
# dense model, (b) a MoE upcycled from it (8 experts of the FFN's size, top-2
# renormalised, on every other layer; each expert a copy of its layer's FFN),
# (c) the same MoE upcycled Switch-style (top-1, weight p, not renormalised:
# the copy does not keep the dense function), against the dense model and
# the MoE trained 2000 steps from scratch; (a) and (b) also at a quarter of
# the peak learning rate (5e-4), and (b) with half of each expert's hidden
# units re-drawn (Drop-Upcycling, train.upcycle_reinit 0.5). Seeds 1234 and
# 2 ((c): 1234).
# Every continuation starts a new warmup and cosine schedule and draws the
# batches the scratch runs draw at steps 1001-2000 (the data stream goes on).
# docs/experiments/upcycling.md; docs/upcycling.csv and docs/upcycling.png
# come from the runs' metrics. One thread a run, two at a time: ~40 min on 2
# cores. Runs whose $RUNS/upcycle/NAME.jsonl exists are skipped (RUNS
# defaults to build/runs); --plot-only redraws the plot from the CSV.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${RUNS:-build/runs}/upcycle
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
S="--config configs/shakespeare_small.pbtxt --set data.path=$DATA --set train.eval_interval=100 --set train.log_interval=25"
MOE="--set moe.num_experts=8 --set moe.top_k=2 --set moe.renormalize=true --set moe.every_n_layers=2"
SWITCH="--set moe.num_experts=8 --set moe.top_k=1 --set moe.every_n_layers=2"
source scripts/experiments/jobs.sh
# NAME|ARGS ...: one train_switch a NAME, two at a time.
phase() {
  local r name
  for r in "$@"; do
    name=${r%%|*}
    [ -f "$OUT/$name.jsonl" ] && continue
    run_bg train_run "$OUT" "$name" ${r#*|}
  done
  wait_all  # (a failed first phase ends the script: the second starts from its checkpoints)
}
if [ "${1:-}" != "--plot-only" ]; then
  mkdir -p "$OUT"
  first=() second=()
  for s in 1234 2; do
    seed="--set train.seed=$s"
    first+=("dense1000_s$s|$S $seed --set train.steps=1000 --set train.checkpoint_interval=1000 --set train.checkpoint_dir=$OUT/ckpt_s$s"
            "dense2000_s$s|$S $seed --set train.steps=2000"
            "moe2000_s$s|$S $MOE $seed --set train.steps=2000")
    second+=("dense_cont_s$s|$S $seed --set train.steps=1000 --init-from $OUT/ckpt_s$s"
             "upcycled_s$s|$S $MOE $seed --set train.steps=1000 --init-from $OUT/ckpt_s$s"
             "dense_cont_lr5e-4_s$s|$S $seed --set train.steps=1000 --set train.lr=0.0005 --init-from $OUT/ckpt_s$s"
             "upcycled_lr5e-4_s$s|$S $MOE $seed --set train.steps=1000 --set train.lr=0.0005 --init-from $OUT/ckpt_s$s"
             "upcycled_drop0.5_s$s|$S $MOE $seed --set train.steps=1000 --set train.upcycle_reinit=0.5 --init-from $OUT/ckpt_s$s")
  done
  second+=("upcycled_switch_s1234|$S $SWITCH --set train.seed=1234 --set train.steps=1000 --init-from $OUT/ckpt_s1234")
  phase "${first[@]}"
  phase "${second[@]}"
  python3 scripts/experiments/runs_to_csv.py upcycling "$OUT" > docs/upcycling.csv
fi
python3 - docs/upcycling.csv <<'PY'
import csv, sys
last = {}
for r in csv.DictReader(open(sys.argv[1])):
    last[r["run"]] = r
print(f"{'run':24s} {'step':>5s} {'val':>7s}")
for n, r in last.items():
    print(f"{n:24s} {r['step']:>5s} {float(r['val_loss']):7.4f}")
PY
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
awk -F, -v d="$tmp" 'NR > 1 { print $2, $3 > (d "/" $1) }' docs/upcycling.csv
command -v gnuplot > /dev/null || { echo "no gnuplot: docs/upcycling.png not drawn"; exit 0; }
gnuplot <<GP
set terminal pngcairo noenhanced size 1100,420 font ",10"
set output "docs/upcycling.png"
set multiplot layout 1,2 title "shakespeare_small: dense 1000 steps, then 1000 more dense or upcycled (8 experts, every other layer), seed 1234"
set xlabel "step (of 2000 in all)"; set ylabel "val loss (nats/byte)"; set grid; set key top right
set title "the whole run"
plot "$tmp/dense2000_s1234" w l t "dense, 2000 steps", "$tmp/moe2000_s1234" w l t "MoE top-2, 2000 steps", \
     "$tmp/dense1000_s1234" w l lw 2 t "dense, first 1000"
set title "steps 1000-2000"
set xrange [1000:2000]; set yrange [*:*]
plot "$tmp/dense2000_s1234" w lp t "dense, 2000 steps", "$tmp/moe2000_s1234" w lp t "MoE top-2, 2000 steps", \
     "$tmp/dense_cont_s1234" w lp t "dense, continued", "$tmp/upcycled_s1234" w lp t "upcycled, top-2 renormalised", \
     "$tmp/upcycled_switch_s1234" w lp t "upcycled, top-1 (Switch)", \
     "$tmp/dense_cont_lr5e-4_s1234" w l dt 2 t "dense, continued at lr 5e-4", \
     "$tmp/upcycled_lr5e-4_s1234" w l dt 2 t "upcycled at lr 5e-4", \
     "$tmp/upcycled_drop0.5_s1234" w lp t "upcycled, half of each expert re-drawn"
unset multiplot
GP
echo "wrote docs/upcycling.png"
