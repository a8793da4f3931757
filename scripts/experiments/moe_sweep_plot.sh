#!/usr/bin/env bash
# Plots docs/moe_sweep.png from the metrics of moe_sweep.sh (docs/runs/sweep/)
# and of moe_vs_dense.sh (docs/runs/): left, val loss at 64 sequences per step
# for two seeds, dense vs switch_tiny with the per-sequence balance loss; right,
# switch_tiny's layer-1 expert load per training batch vs over the held-out
# pass (router in evaluation mode: no noise), with router noise 0.3 and 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=docs/runs
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cols() {  # file, what (val | train | heldout), layer -> "step value" rows
  python3 - "$@" <<'PY'
import json, sys
path, what, layer = sys.argv[1], sys.argv[2], int(sys.argv[3])
for line in open(path):
    d = json.loads(line)
    if what == "val" and "val_loss" in d:
        print(d["step"], d["val_loss"])
    elif what == "train" and "moe" in d:
        print(d["step"], next(m["max_over_mean"] for m in d["moe"] if m["layer"] == layer))
    elif what == "heldout" and "val_moe" in d:
        print(d["step"], next(m["max_over_mean"] for m in d["val_moe"] if m["layer"] == layer))
PY
}
cols $R/sweep/dense_b64.jsonl val 0 > "$tmp/d1"
cols $R/sweep/dense_b64_seed2.jsonl val 0 > "$tmp/d2"
cols $R/switch_tiny_synthetic_b64_seq.jsonl val 0 > "$tmp/s1"
cols $R/sweep/switch_b64_seq_seed2.jsonl val 0 > "$tmp/s2"
cols $R/switch_tiny_synthetic.jsonl train 1 > "$tmp/tr"
cols $R/switch_tiny_synthetic.jsonl heldout 1 > "$tmp/ho"
cols $R/switch_tiny_synthetic_noise0.jsonl train 1 > "$tmp/tr0"
cols $R/switch_tiny_synthetic_noise0.jsonl heldout 1 > "$tmp/ho0"
gnuplot <<GP
set terminal pngcairo noenhanced size 1200,440 font ",10"
set output "docs/moe_sweep.png"
set multiplot layout 1,2
set grid; set xlabel "step"
set title "64 sequences per step: the same pair, two seeds"
set ylabel "val loss (nats/byte)"; set key top right
plot "$tmp/d1" w l lw 2 lc rgb "#1f77b4" t "dense tiny, seed 1234", \
     "$tmp/s1" w l lw 2 lc rgb "#d62728" t "switch_tiny per-seq. balance, seed 1234", \
     "$tmp/d2" w l lw 2 dt 2 lc rgb "#1f77b4" t "dense tiny, seed 2", \
     "$tmp/s2" w l lw 2 dt 2 lc rgb "#d62728" t "switch_tiny per-seq. balance, seed 2"
set title "switch_tiny layer 1 expert load (16 sequences): training batch vs held-out pass"
set ylabel "max / mean load"; set yrange [0:5]; set key top right
plot 1.5 w l lc rgb "black" dt 3 t "1.5", \
     "$tmp/tr" w l lc rgb "#ff7f0e" t "training batch, noise 0.3", \
     "$tmp/ho" w lp pt 7 ps 0.6 lc rgb "#ff7f0e" t "held-out pass, noise 0.3 (eval: none)", \
     "$tmp/tr0" w l lc rgb "#2ca02c" t "training batch, noise 0", \
     "$tmp/ho0" w lp pt 7 ps 0.6 lc rgb "#2ca02c" t "held-out pass, noise 0"
unset multiplot
GP
echo "wrote docs/moe_sweep.png"
