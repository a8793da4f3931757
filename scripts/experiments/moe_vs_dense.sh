#!/usr/bin/env bash
# Dense tiny vs switch_tiny at equal steps on the synthetic corpus and on
# tinyshakespeare, and switch_tiny with and without the load-balance loss, 2000
# steps each (docs/experiments/moe-balance.md). The runs' metrics go to
# $RUNS (default build/runs); docs/moe_vs_dense.csv and docs/moe_balance.csv
# are extracted from them, and docs/moe_vs_dense.png, docs/moe_balance.png drawn
# from the CSVs. Run from the repo root after building (~20 min, 2 cores).
# --batch64 adds the 64-sequence runs (dense, switch_tiny with the batch-wide and
# the per-sequence load-balance loss; ~50 min more). --plot-only redraws the
# plots from the CSVs.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=build/bin/train_switch
OUT=${RUNS:-build/runs}
SHAKE=../shared/data/tinyshakespeare.txt
common=(--set train.steps=2000 --set train.eval_interval=100 --set train.log_interval=10)
text=(--set data.source=TEXT_FILE --set data.path=$SHAKE)
run() { local name=$1; shift; echo "== $name"; "$BIN" "$@" "${common[@]}" --metrics "$OUT/$name.jsonl" --overwrite | tail -1; }
b64=(--set train.batch=64)
source scripts/experiments/jobs.sh
if [ "${1:-}" != "--plot-only" ]; then
  mkdir -p "$OUT"
  if [ "${1:-}" = "--batch64" ]; then
    run_bg run tiny_synthetic_b64 --config configs/tiny.pbtxt "${b64[@]}"
    run_bg run switch_tiny_synthetic_b64 --config configs/switch_tiny.pbtxt "${b64[@]}"
    wait_all
    run switch_tiny_synthetic_b64_seq --config configs/switch_tiny.pbtxt "${b64[@]}" --set moe.load_balance_tokens=128
  fi
  run_bg run tiny_synthetic --config configs/tiny.pbtxt
  run_bg run switch_tiny_synthetic --config configs/switch_tiny.pbtxt
  run_bg run switch_tiny_synthetic_nolb --config configs/switch_tiny.pbtxt --set moe.load_balance_coef=0
  if [ -f "$SHAKE" ]; then
    run_bg run tiny_shakespeare --config configs/tiny.pbtxt "${text[@]}"
    run_bg run switch_tiny_shakespeare --config configs/switch_tiny.pbtxt "${text[@]}"
  fi
  # Held-out load without router noise, and the per-sequence balance loss
  # (moe_sweep_plot.sh draws the first).
  run_bg run switch_tiny_synthetic_noise0 --config configs/switch_tiny.pbtxt --set moe.router_noise=0
  run_bg run switch_tiny_synthetic_seq --config configs/switch_tiny.pbtxt --set moe.load_balance_tokens=128
  wait_all
  python3 scripts/experiments/runs_to_csv.py moe_vs_dense "$OUT" > docs/moe_vs_dense.csv
  python3 scripts/experiments/runs_to_csv.py moe_balance "$OUT" > docs/moe_balance.csv
fi
# CSV -> "step value" rows of one run, for gnuplot.
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
split() { awk -F, -v d="$tmp" -v s="$2" 'NR > 1 { print $2, $3 > (d "/" $1 "." s) }' "$1"; }
split docs/moe_vs_dense.csv val
split docs/moe_balance.csv load
seq64=""
[ -s "$tmp/switch_tiny_synthetic_b64_seq.load" ] && seq64=', "'$tmp'/switch_tiny_synthetic_b64_seq.load" w l t "synthetic, 64 sequences, per-sequence loss 0.01"'
gnuplot <<GP
set terminal pngcairo noenhanced size 1100,420 font ",10"
set output "docs/moe_vs_dense.png"
set multiplot layout 1,2 title "Validation loss at equal steps: dense tiny vs switch_tiny (8 experts, top-1)"
set xlabel "step"; set ylabel "val loss (nats/byte)"; set grid; set key top right
set title "synthetic corpus"
plot "$tmp/tiny_synthetic.val" w lp t "dense tiny", "$tmp/switch_tiny_synthetic.val" w lp t "switch_tiny"
set title "tinyshakespeare"
plot "$tmp/tiny_shakespeare.val" w lp t "dense tiny", "$tmp/switch_tiny_shakespeare.val" w lp t "switch_tiny"
unset multiplot
set terminal pngcairo noenhanced size 700,420 font ",10"
set output "docs/moe_balance.png"
set title "switch_tiny expert load, layer 1 (max/mean over 8 experts, training batch)"
set xlabel "step"; set ylabel "max / mean load"; set yrange [0:*]
plot "$tmp/switch_tiny_synthetic.load" w l t "synthetic, load-balance coef 0.01", "$tmp/switch_tiny_synthetic_nolb.load" w l t "synthetic, coef 0", "$tmp/switch_tiny_shakespeare.load" w l t "tinyshakespeare, coef 0.01"$seq64, 1.5 w l dt 2 lc rgb "black" t "1.5"
GP
echo "wrote docs/moe_vs_dense.png docs/moe_balance.png"
