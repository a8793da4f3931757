#!/usr/bin/env bash
# routed_vs_local.sh again with rotary positions (--set model.position=ROPE):
# on the synthetic long-range copy task (gaps 48-160 bytes, sequences of 256,
# local window 32), 2 local + 2 routing heads against 4 local heads, at equal
# steps (docs/experiments/routed-attention.md, "With rotary positions").
# $STEPS steps of 32 sequences each (default 1500: about 50 minutes of one
# core each on an otherwise idle 2-core machine, ~90 under a load average of
# 15; the runs in the doc were stopped after step 1000), seed 1234, the two
# runs side by side. The runs go to $RUNS (default build/runs);
# docs/routed_vs_local_rope.csv is extracted from them and
# docs/routed_vs_local_rope.png drawn from it. Run from the repo root after
# building. --plot-only redraws from the CSV.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-build/bin/train_switch}
export OPENBLAS_NUM_THREADS=1
OUT=${RUNS:-build/runs}
STEPS=${STEPS:-1500}
common=(--set model.position=ROPE --set train.steps="$STEPS")
if [ "${1:-}" != "--plot-only" ]; then
  mkdir -p "$OUT"
  source scripts/experiments/jobs.sh
  run() { local name=$1; shift; nice "$BIN" --config configs/routed_copy.pbtxt "${common[@]}" "$@" --metrics "$OUT/$name.jsonl" --overwrite | grep done; }
  run_bg run routed_copy_rope
  run_bg run local_copy_rope --set attention.num_routing_heads=0
  wait_all
  python3 scripts/experiments/runs_to_csv.py routed_vs_local_rope "$OUT" > docs/routed_vs_local_rope.csv
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
awk -F, -v d="$tmp" 'NR > 1 { print $2, $3 > (d "/" $1 ".val"); last[$1] = $2 " " $3 }
  END { for (r in last) print r ": " last[r] " (step, val loss)" }' docs/routed_vs_local_rope.csv
gnuplot <<GP
set terminal pngcairo noenhanced size 760,440 font ",10"
set output "docs/routed_vs_local_rope.png"
set title "Long-range copy (gap 48-160, window 32), rotary positions: val loss at equal steps"
set xlabel "step"; set ylabel "val loss (nats/byte)"; set grid; set key top right
plot "$tmp/local_copy_rope.val" w lp t "4 local heads, RoPE", \
     "$tmp/routed_copy_rope.val" w lp t "2 local + 2 routing heads (16 clusters), RoPE"
GP
echo "wrote docs/routed_vs_local_rope.png"
