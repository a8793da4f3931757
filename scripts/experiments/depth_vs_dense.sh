#!/usr/bin/env bash
# Dense tiny vs depth_tiny (capacity 0.5 on every other block) at equal steps on
# the synthetic corpus; val loss against the training FLOPs spent
# (docs/experiments/adaptive-depth.md). The runs go to $RUNS (default
# build/runs); docs/depth_vs_dense.csv is extracted from them and
# docs/depth_vs_dense.png drawn from it. Run from the repo root after building
# (~2 min). --plot-only redraws from the CSV.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=build/bin/train_switch
OUT=${RUNS:-build/runs}
common=(--set train.eval_interval=50 --set train.log_interval=10)
if [ "${1:-}" != "--plot-only" ]; then
  mkdir -p "$OUT"
  source scripts/experiments/jobs.sh
  run() { "$BIN" --config "configs/$1.pbtxt" "${common[@]}" --metrics "$OUT/$2.jsonl" --overwrite | tail -1; }
  run_bg run tiny tiny_flops
  run_bg run depth_tiny depth_tiny_flops
  wait_all
  python3 scripts/experiments/runs_to_csv.py depth_vs_dense "$OUT" > docs/depth_vs_dense.csv
fi
# CSV (run, step, cumulative training TFLOP = step x 3 x FLOPs per token x
# 2048 tokens, val loss, compute fraction) -> "TFLOP val" rows per run
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
awk -F, -v d="$tmp" 'NR > 1 { print $3, $4 > (d "/" $1 ".dat"); last[$1] = $0 }
  END { for (r in last) { split(last[r], f, ","); printf "%s: step %s, %s TFLOP, val loss %s, compute fraction %s\n", r, f[2], f[3], f[4], f[5] } }' \
  docs/depth_vs_dense.csv
gnuplot <<GP
set terminal pngcairo noenhanced size 700,420 font ",10"
set output "docs/depth_vs_dense.png"
set title "Adaptive depth: val loss against training compute (synthetic corpus)"
set xlabel "training compute spent (TFLOP, forward + backward)"; set ylabel "val loss (nats/byte)"; set grid
plot "$tmp/tiny_flops.dat" w lp t "dense tiny", "$tmp/depth_tiny_flops.dat" w lp t "depth_tiny (capacity 0.5, every other block)"
GP
echo "wrote docs/depth_vs_dense.png"
