#!/usr/bin/env bash
# Issue 7's measurement: dense tiny vs depth_tiny (capacity 0.5 on every other
# block) at equal steps on the synthetic corpus; val loss against the training
# FLOPs spent. Writes docs/runs/{tiny,depth_tiny}_flops.jsonl and
# docs/depth_vs_dense.png. Run from the repo root after building (~2 min).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=build/bin/train_switch
OUT=docs/runs
mkdir -p "$OUT"
common=(--set train.eval_interval=50 --set train.log_interval=10)
if [ "${1:-}" != "--plot-only" ]; then
  "$BIN" --config configs/tiny.pbtxt "${common[@]}" --metrics "$OUT/tiny_flops.jsonl" --overwrite | tail -1 &
  "$BIN" --config configs/depth_tiny.pbtxt "${common[@]}" --metrics "$OUT/depth_tiny_flops.jsonl" --overwrite | tail -1 &
  wait
fi
tokens=$((16 * 128))
# step, val_loss, the model's flops_per_token (the top-level one, after
# elapsed_s; layers[] hold per-block ones) -> cumulative training TFLOP
# (3x forward) and val loss
for r in tiny_flops depth_tiny_flops; do
  grep '"val_loss"' "$OUT/$r.jsonl" |
    sed -E 's/.*"elapsed_s":[-0-9.e+]+,"flops_per_token":([-0-9.e+]+).*"step":([0-9]+).*"val_loss":([-0-9.e]+).*/\2 \1 \3/' |
    awk -v t=$tokens '{ printf "%g %s\n", $1 * 3 * $2 * t / 1e12, $3 }' > "/tmp/$r.dat"
  frac=$(tail -1 "$OUT/$r.jsonl" | sed -E 's/.*"compute_fraction":([-0-9.e+]+).*/\1/')
  echo "$r: final $(tail -1 /tmp/$r.dat) (TFLOP, val loss); compute fraction $frac"
done
gnuplot <<GP
set terminal pngcairo noenhanced size 700,420 font ",10"
set output "docs/depth_vs_dense.png"
set title "Adaptive depth: val loss against training compute (synthetic corpus)"
set xlabel "training compute spent (TFLOP, forward + backward)"; set ylabel "val loss (nats/byte)"; set grid
plot "/tmp/tiny_flops.dat" w lp t "dense tiny", "/tmp/depth_tiny_flops.dat" w lp t "depth_tiny (capacity 0.5, every other block)"
GP
echo "wrote docs/depth_vs_dense.png"
