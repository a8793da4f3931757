#!/usr/bin/env bash
# mixtral_tiny (RoPE, RMSNorm, SwiGLU experts, 8 experts top-2 renormalised,
# no biases; d_model 64, 2 layers) against shakespeare_small (dense GPT-2
# layout; d_model 128, 4 layers) on tinyshakespeare at equal steps
# (docs/experiments/model-options.md). $STEPS steps each (default 800: what
# fits in about 15 minutes of one core each on a loaded 2-core machine), the
# two runs side by side, val loss every 100 steps over 16 batches. Then, to
# tell the layer options from the MoE and the sizes, mixtral_tiny in the
# GPT-2 layout (learned positions, LayerNorm, GELU experts of hidden 256 (about
# the same weights as SwiGLU's 176), biases): same routing, lr and steps. The runs
# go to $RUNS (default build/runs); docs/mixtral_tiny_vs_shakespeare_small.csv
# is extracted from them and docs/mixtral_tiny_vs_shakespeare_small.png drawn
# from it. $DATA is the corpus (default the configs' own
# ../shared/data/tinyshakespeare.txt, relative to the repository root). Run
# from the repo root after building. --plot-only redraws from the CSV.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-build/bin/train_switch}
export OPENBLAS_NUM_THREADS=1
OUT=${RUNS:-build/runs}
STEPS=${STEPS:-800}
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
PLOT=mixtral_tiny_vs_shakespeare_small
common=(--set data.path="$DATA" --set train.steps="$STEPS" --set train.eval_interval=100 --set train.eval_batches=16
        --set train.log_interval=25)
if [ "${1:-}" != "--plot-only" ]; then
  mkdir -p "$OUT"
  source scripts/experiments/jobs.sh
  run() { nice "$BIN" --config "configs/$1.pbtxt" "${common[@]}" --metrics "$OUT/$1.jsonl" --overwrite | grep -E "^model|done"; }
  run_bg run mixtral_tiny
  run_bg run shakespeare_small
  wait_all
  nice "$BIN" --config configs/mixtral_tiny.pbtxt "${common[@]}" --set model.position=LEARNED --set model.norm=LAYERNORM \
    --set model.activation=GELU --set model.bias=true --set model.ffn_hidden=256 \
    --metrics "$OUT/mixtral_tiny_gpt2_layout.jsonl" --overwrite | grep -E "^model|done"
  python3 scripts/experiments/runs_to_csv.py $PLOT "$OUT" > docs/$PLOT.csv
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
awk -F, -v d="$tmp" 'NR > 1 { print $2, $3 > (d "/" $1 ".val"); last[$1] = $2 " " $3 }
  END { for (r in last) print r ": " last[r] " (step, val loss)" }' docs/$PLOT.csv
gnuplot <<GP
set terminal pngcairo noenhanced size 760,440 font ",10"
set output "docs/$PLOT.png"
set title "tinyshakespeare: val loss at equal steps (16 x 128 bytes per step)"
set xlabel "step"; set ylabel "val loss (nats/byte)"; set grid; set key top right spacing 1.3
set yrange [1.7:2.7]
plot "$tmp/shakespeare_small.val" w lp t "shakespeare_small: dense GPT-2 layout, d 128, 4 layers", \
     "$tmp/mixtral_tiny.val" w lp t "mixtral_tiny: RoPE, RMSNorm, 8 SwiGLU experts top-2, d 64, 2 layers", \
     "$tmp/mixtral_tiny_gpt2_layout.val" w lp dt 2 t "mixtral_tiny in the GPT-2 layout (learned pos., LayerNorm, GELU, biases)"
GP
echo "wrote docs/$PLOT.png"
