#!/usr/bin/env bash
# What the routers decide by, and how much their choices still move, over
# training (docs/experiments/routing-over-training.md): mixtral_tiny on
# tinyshakespeare (1000 steps) and switch_tiny on its synthetic corpus (600
# steps), a checkpoint every 100 steps, then examples/route_report on each
# against the one before (16 validation batches). Writes
# docs/routing_over_training.csv and, where gnuplot is, the PNG beside it.
# Runs go to $RUNS/routing (RUNS defaults to build/runs); ~3 min on the
# shared 2-core machine. BIN and REPORT override the binaries.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-build/runs}
OUT=$RUNS/routing
BIN=${BIN:-build/bin/train_switch}
REPORT=${REPORT:-build/bin/route_report}
SRC=$PWD
mkdir -p "$OUT"
for cfg in mixtral_tiny switch_tiny; do
  rm -rf "$OUT/$cfg"
  mkdir -p "$OUT/$cfg"
  data=(); [ $cfg = mixtral_tiny ] && data=(--set data.path="$SRC/../shared/data/tinyshakespeare.txt")
  (cd "$OUT/$cfg" && "$SRC/$BIN" --config "$SRC/configs/$cfg.pbtxt" "${data[@]}" \
     --set train.checkpoint_interval=100 --set train.keep_checkpoints=0 --set train.checkpoint_dir=ck \
     --metrics m.jsonl > train.log 2>&1)
  prev=""
  for d in "$OUT/$cfg"/ck/step_*; do
    s=$((10#${d##*_}))
    "$REPORT" --checkpoint "$d" ${prev:+--compare "$prev"} --batches 16 --json "$OUT/$cfg/r_$s.json" --overwrite \
      > "$OUT/$cfg/r_$s.txt"
    prev=$d
  done
done
python3 - "$OUT" docs/routing_over_training.csv <<'PY'
import glob, json, os, sys
out, csv = sys.argv[1], sys.argv[2]
lines = ["config,step,layer,by_id,by_position,by_previous,changed"]
step_of = lambda path: int(path.rsplit("_", 1)[1][:-len(".json")])
cell = lambda l, k: f"{l[k]:.4f}" if k in l else ""  # (no previous layer, no earlier checkpoint)
for cfg in ["mixtral_tiny", "switch_tiny"]:
    for f in sorted(glob.glob(f"{out}/{cfg}/r_*.json"), key=step_of):
        for l in json.load(open(f))["layers"]:
            lines.append(",".join([cfg, str(step_of(f)), str(l["layer"])] +
                                  [cell(l, k) for k in ["by_id", "by_position", "by_previous", "changed"]]))
open(csv, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
command -v gnuplot > /dev/null || { echo "no gnuplot: docs/routing_over_training.png not drawn"; exit 0; }
gnuplot <<'GP'
set terminal pngcairo size 1100,420 font ",10" noenhanced
set output "docs/routing_over_training.png"
set datafile separator ","
set multiplot layout 1,2
set xlabel "training step"
set yrange [0:1]
set key bottom right
# the MoE layers: h0 and h1 of each
series = "mixtral_tiny,0 mixtral_tiny,1 switch_tiny,0 switch_tiny,1"
sel(s, extra) = sprintf("< awk -F, '$1\",\"$3==\"%s\"%s' docs/routing_over_training.csv", s, extra)
name(s) = system("echo ".s." | sed 's/,/ h/'")
set title "first choice explained by the token id (uncertainty coefficient)"
plot for [s in series] sel(s, "") using 2:4 with linespoints title name(s)
set title "first choices changed since the checkpoint 100 steps before"
set yrange [0:*]
set key top right
plot for [s in series] sel(s, " && $7!=\"\"") using 2:7 with linespoints title name(s)
unset multiplot
GP
echo "wrote docs/routing_over_training.csv and docs/routing_over_training.png"
