#!/usr/bin/env bash
# Issue 5's measurement: on the synthetic long-range copy task (gaps 48-160
# bytes, sequences of 256, several times the local window of 32), local +
# routing heads against local heads only, at equal steps. Writes
# docs/runs/{routed,local}_copy.jsonl and docs/routed_vs_local.png.
# 5000 steps of 32 sequences each, and the same pair again with train.seed=2
# (another corpus and initialisation: docs/runs/*_copy_seed2.jsonl). Run from
# the repo root after building (~45 min per pair on 2 cores; --plot-only
# replots from docs/runs/).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=build/bin/train_switch
OUT=docs/runs
mkdir -p "$OUT"
if [ "${1:-}" != "--plot-only" ]; then
  "$BIN" --config configs/routed_copy.pbtxt --metrics "$OUT/routed_copy.jsonl" --overwrite | grep -E "attention FLOPs|done" &
  "$BIN" --config configs/routed_copy.pbtxt --set attention.num_routing_heads=0 --metrics "$OUT/local_copy.jsonl" --overwrite | grep done &
  wait
  s2=(--set train.seed=2)
  "$BIN" --config configs/routed_copy.pbtxt "${s2[@]}" --metrics "$OUT/routed_copy_seed2.jsonl" --overwrite | grep done &
  "$BIN" --config configs/routed_copy.pbtxt "${s2[@]}" --set attention.num_routing_heads=0 \
    --metrics "$OUT/local_copy_seed2.jsonl" --overwrite | grep done &
  wait
fi
for r in routed_copy local_copy routed_copy_seed2 local_copy_seed2; do
  grep '"val_loss"' "$OUT/$r.jsonl" | sed -E 's/.*"step":([0-9]+).*"val_loss":([-0-9.e]+).*/\1 \2/' > "/tmp/$r.val"
  echo "$r: $(tail -1 /tmp/$r.val) (step, val loss)"
done
gnuplot <<GP
set terminal pngcairo noenhanced size 1100,420 font ",10"
set output "docs/routed_vs_local.png"
set multiplot layout 1,2 title "Long-range copy (gap 48-160, window 32): val loss at equal steps"
set xlabel "step"; set ylabel "val loss (nats/byte)"; set grid; set yrange [0.478:0.492]
set title "train.seed 1234"
plot "/tmp/local_copy.val" w lp t "4 local heads", "/tmp/routed_copy.val" w lp t "2 local + 2 routing heads (16 clusters)"
set title "train.seed 2"
plot "/tmp/local_copy_seed2.val" w lp t "4 local heads", "/tmp/routed_copy_seed2.val" w lp t "2 local + 2 routing heads (16 clusters)"
unset multiplot
GP
echo "wrote docs/routed_vs_local.png"
