#!/usr/bin/env bash
# Issue 3: the trade-off between switch_tiny's two bars at its configured 16
# sequences per step. Each run is switch_tiny with one change that spreads the
# load more evenly per batch (load-balance groups, larger noise, the expert
# drawn from the router by Gumbel noise), 2000 steps on the synthetic corpus;
# then docs/moe_frontier.png: val loss at step 2000 against the share of logged
# steps (from step 100) whose per-batch max/mean load is 1.5 or more, dense tiny
# as a line (switch_tiny and dense tiny as configured come from moe_vs_dense.sh's
# docs/runs/). Runs two at a time, one thread each (~40 min on 2 cores; about 4.5
# min a run; runs whose OUT/NAME.jsonl exists are skipped). Usage:
# moe_frontier.sh [OUT] [--plot-only]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-docs/runs/frontier}
BIN=build/bin/train_switch
mkdir -p "$OUT"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
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
if [ "${2:-}" != "--plot-only" ]; then
  for r in "${runs[@]}"; do
    name=${r%%|*}
    [ -f "$OUT/$name.jsonl" ] && continue  # finished earlier (a run writes .part, renamed at the end)
    echo "$BIN ${r#*|} $common --metrics $OUT/$name.jsonl.part --overwrite > $tmp/$name.log 2>&1 && mv $OUT/$name.jsonl.part $OUT/$name.jsonl && echo done $name || { echo FAILED $name; tail -3 $tmp/$name.log; }"
  done | xargs -P 2 -I{} bash -c '{}'
fi

# One row per switch run: name, val at the last step, % of logged steps from
# 100 over 1.5 in layer 0 and in layer 1 (the plot takes the worse layer).
python3 - "$OUT" docs/runs/switch_tiny_synthetic.jsonl > "$OUT/frontier.txt" <<'PY'
import glob, json, os, sys
files = sorted(glob.glob(sys.argv[1] + "/*.jsonl")) + sys.argv[2:]
print("# name val_loss over_L0_pct over_L1_pct")
for f in files:
    rows = [json.loads(l) for l in open(f) if l.strip()]
    val = [d["val_loss"] for d in rows if "val_loss" in d][-1]
    moe = [d["moe"] for d in rows if "moe" in d and d["step"] >= 100]
    if not moe:
        continue
    over = [100.0 * sum(m[l]["max_over_mean"] >= 1.5 for m in moe) / len(moe) for l in range(len(moe[0]))]
    print(os.path.basename(f)[:-6], f"{val:.4f}", *(f"{o:.1f}" for o in over))
PY
cat "$OUT/frontier.txt"
# Plot rows (seed 1234 only): worse layer's %, val, and one label per point
# (runs that land on the same point share it).
python3 - "$OUT/frontier.txt" > "$tmp/points" <<'PY'
import sys
pts = {}
for line in open(sys.argv[1]):
    if line.startswith("#") or "seed2" in line:
        continue
    name, val, *over = line.split()
    pts.setdefault((max(map(float, over)), float(val)), []).append(name)
for (x, y), names in pts.items():
    print(x, y, "/".join(n.replace("switch_tiny_synthetic", "switch_tiny_as_configured") for n in names))
PY
dense=$(grep '"val_loss"' docs/runs/tiny_synthetic.jsonl | tail -1 | sed -E 's/.*"val_loss":([-0-9.e]+).*/\1/')
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
