#!/usr/bin/env bash
# Issue 3: switch_tiny as configured, the two Gumbel settings closest to the
# load bar (moe_frontier.sh) and load-balance coefficients 0.03 and 0.1, on more
# seeds and on both corpora, with every training batch's load logged (train.log_interval=1), so "over 1.5" counts
# batches, not logged steps. 2000 steps, 16 sequences, two runs at a time, one
# thread each (~4.5 min a run on one core; 23 runs, ~55 min on 2 cores). Runs
# whose docs/runs/seeds/NAME.jsonl exists are skipped.
#
# The full metrics (2.3 MB a run) go to SCRATCH; docs/runs/seeds/NAME.jsonl
# keeps every 10th step, every evaluation, and a last line {"load_stats": ...}
# from moe_load_stats.py (over-1.5 batches after warm-up, the lasting part of
# the load and the batch-to-batch spread). The table is docs/runs/seeds/seeds.txt.
# Usage: moe_seeds.sh [SCRATCH] [--table-only]
set -euo pipefail
cd "$(dirname "$0")/../.."
SCRATCH=${1:-build/moe_seeds}
OUT=docs/runs/seeds
BIN=build/bin/train_switch
SHAKE=../shared/data/tinyshakespeare.txt
mkdir -p "$OUT" "$SCRATCH"
export OPENBLAS_NUM_THREADS=1
common="--set train.steps=2000 --set train.eval_interval=100 --set train.log_interval=1"
S="--config configs/switch_tiny.pbtxt"
D="--config configs/tiny.pbtxt"
T="--set data.source=TEXT_FILE --set data.path=$SHAKE"
gum="--set moe.router_noise_kind=GUMBEL --set moe.router_noise"
# name | config and overrides (word-split on purpose). Names end in
# _{syn,txt}_s<seed>: the corpus and the seed, which pair a run with dense tiny.
runs=(
  "switch_syn_s1234|$S"
  "switch_syn_s2|$S --set train.seed=2"
  "switch_syn_s3|$S --set train.seed=3"
  "switch_txt_s1234|$S $T"
  "switch_txt_s2|$S $T --set train.seed=2"
  "gumbel0.5_syn_s1234|$S $gum=0.5"
  "gumbel0.5_syn_s2|$S $gum=0.5 --set train.seed=2"
  "gumbel0.5_syn_s3|$S $gum=0.5 --set train.seed=3"
  "gumbel0.5_txt_s1234|$S $gum=0.5 $T"
  "gumbel0.5_nolb_syn_s1234|$S $gum=0.5 --set moe.load_balance_coef=0"
  "gumbel0.4_syn_s1234|$S $gum=0.4"
  "gumbel0.4_syn_s2|$S $gum=0.4 --set train.seed=2"
  "gumbel0.4_txt_s1234|$S $gum=0.4 $T"
  # The bar's coefficient is 0.01; is it what leaves the lasting imbalance?
  "switch_lb0.03_syn_s1234|$S --set moe.load_balance_coef=0.03"
  "switch_lb0.03_txt_s1234|$S $T --set moe.load_balance_coef=0.03"
  "switch_lb0.1_syn_s1234|$S --set moe.load_balance_coef=0.1"
  "switch_lb0.1_syn_s2|$S --set moe.load_balance_coef=0.1 --set train.seed=2"
  "switch_lb0.1_txt_s1234|$S $T --set moe.load_balance_coef=0.1"
  "switch_lb0.1_txt_s2|$S $T --set moe.load_balance_coef=0.1 --set train.seed=2"
  "gumbel0.5_lb0.1_syn_s1234|$S $gum=0.5 --set moe.load_balance_coef=0.1"
  "gumbel0.5_lb0.1_txt_s1234|$S $gum=0.5 $T --set moe.load_balance_coef=0.1"
  "dense_syn_s3|$D --set train.seed=3"
  "dense_txt_s2|$D $T --set train.seed=2"
)
if [ "${2:-}" != "--table-only" ]; then
  for r in "${runs[@]}"; do
    name=${r%%|*}
    [ -f "$OUT/$name.jsonl" ] && continue
    full="$SCRATCH/$name.jsonl"
    echo "$BIN ${r#*|} $common --metrics $full.part --overwrite > $SCRATCH/$name.log 2>&1 && mv $full.part $full && python3 scripts/experiments/moe_load_stats.py $full --thin $OUT/$name.jsonl > /dev/null && echo done $name || { echo FAILED $name; tail -3 $SCRATCH/$name.log; }"
  done | xargs -P 2 -I{} bash -c '{}'
fi

# Dense tiny at the seeds that earlier scripts already ran (logged every 10th
# step; only their val loss is read here).
python3 - "$OUT" > "$OUT/seeds.txt" <<'PY'
import glob, json, os, re, sys
out = sys.argv[1]
dense = {("syn", "1234"): "docs/runs/tiny_synthetic.jsonl",
         ("syn", "2"): "docs/runs/frontier/dense_seed2.jsonl",
         ("txt", "1234"): "docs/runs/tiny_shakespeare.jsonl"}
runs = {}
for f in sorted(glob.glob(out + "/*.jsonl")):
    name = os.path.basename(f)[:-6]
    m = re.fullmatch(r"(.*)_(syn|txt)_s(\d+)", name)
    if not m:
        continue
    if m.group(1) == "dense":
        dense[(m.group(2), m.group(3))] = f
    else:
        runs[name] = (m.group(2), m.group(3), f)

def last_val(f):
    rows = [json.loads(l) for l in open(f) if l.strip()]
    return [d["val_loss"] for d in rows if "val_loss" in d][-1]

print("# 2000 steps, 16 sequences. over: training batches after warm-up (steps 21-2000)"
      " with max/mean load >= 1.5; max: the largest; lasting: largest E * (an expert's"
      " mean load over 200 steps), from step 100; spread: median relative sd of an"
      " expert's per-batch load within those windows. L0 | L1.")
print("name corpus seed val dense_val over max lasting spread")
for name, (corpus, seed, f) in runs.items():
    stats = json.loads(open(f).read().strip().splitlines()[-1])["load_stats"]
    d = dense.get((corpus, seed))
    dv = f"{last_val(d):.4f}" if d else "-"
    L = stats["layers"]
    col = lambda k, fmt: "|".join(fmt % x[k] for x in L)
    print(name, corpus, seed, f"{stats['val_loss']:.4f}", dv,
          col("over", "%d"), col("max", "%.2f"), col("lasting", "%.2f"), col("spread", "%.2f"))
PY
grep '^# 2000' "$OUT/seeds.txt"; grep -v '^# 2000' "$OUT/seeds.txt" | column -t

# docs/moe_load_parts.png: switch_tiny as configured (seed 1234), each layer's
# per-batch max/mean (every 10th batch) and its lasting part (largest expert's
# mean load over each 200-step window, times E), on both corpora.
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for c in syn txt; do
  f="$OUT/switch_${c}_s1234.jsonl"
  [ -f "$f" ] || { echo "no $f: plot skipped"; exit 0; }
  python3 - "$f" "$tmp/$c" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
stats = rows[-1]["load_stats"]["layers"]
for l in range(len(stats)):
    with open(f"{sys.argv[2]}.batch{l}", "w") as f:
        for d in rows:
            if "moe" in d and d["step"] > 20:
                f.write(f'{d["step"]} {d["moe"][l]["max_over_mean"]}\n')
    with open(f"{sys.argv[2]}.lasting{l}", "w") as f:
        w = stats[l]["lasting_by_window"]
        for (s, v), nxt in zip(w, w[1:] + [[2000, None]]):
            f.write(f"{s} {v}\n{nxt[0]} {v}\n\n")
PY
done
gnuplot <<GP
set terminal pngcairo noenhanced size 1100,420 font ",10"
set output "docs/moe_load_parts.png"
set multiplot layout 1,2 title "switch_tiny (seed 1234): per-batch max/mean load and its lasting part (200-step windows)"
set xlabel "step"; set ylabel "max / mean load"; set grid; set yrange [0.9:2.4]; set key top right
do for [c in "syn txt"] {
  set title (c eq "syn" ? "synthetic corpus" : "tinyshakespeare")
  plot "$tmp/".c.".batch0" w p pt 7 ps 0.3 lc rgb "#9fb8e0" t "layer 0, batch", \
       "$tmp/".c.".batch1" w p pt 7 ps 0.3 lc rgb "#f0a89a" t "layer 1, batch", \
       "$tmp/".c.".lasting0" w l lw 3 lc rgb "#1f4e9c" t "layer 0, lasting", \
       "$tmp/".c.".lasting1" w l lw 3 lc rgb "#b22222" t "layer 1, lasting", \
       1.5 w l dt 2 lc rgb "black" t "1.5"
}
unset multiplot
GP
echo "wrote docs/moe_load_parts.png"
