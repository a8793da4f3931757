#!/usr/bin/env bash
# Sigmoid routers' balance loss over raw scores (commit a571b7d and before)
# against over each token's scores divided by their sum (817e418 on):
# switch_tiny with sigmoid scores, top-2, no balancing bias, renormalised or
# not, 600 steps (docs/experiments/sigmoid-balance.md). OLD_BIN is
# train_switch built at a571b7d (e.g. `git worktree add /tmp/old a571b7d`,
# then `cmake -S /tmp/old -B /tmp/old/build -DSWITCHYARD_CUDA=OFF
# -DCMAKE_BUILD_TYPE=Release && make -C /tmp/old/build train_switch`); BIN
# this tree's. One thread a run, one at a time: ~5 min on 2 cores. The
# per-step table goes to docs/sigmoid_balance.csv, the plot to
# docs/sigmoid_balance.png (gnuplot).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-build/bin/train_switch}
OLD_BIN=${OLD_BIN:?set OLD_BIN to a train_switch built at a571b7d}
OUT=${RUNS:-build/runs}/sigmoid_balance
mkdir -p "$OUT"
export OPENBLAS_NUM_THREADS=1
common=(--config configs/switch_tiny.pbtxt --threads 1 --set moe.score_function=SIGMOID --set moe.top_k=2
        --set moe.bias_balance_rate=0 --set train.steps=600 --overwrite)
for renorm in true false; do
  for build in old new; do
    bin=$BIN; sha=$(git rev-parse --short HEAD)
    if [ $build = old ]; then bin=$OLD_BIN; sha=a571b7d; fi
    tag=${build}_renorm_${renorm}
    "$bin" "${common[@]}" --set moe.renormalize=$renorm --set train.checkpoint_dir="$OUT/ck_$tag" \
      --metrics "$OUT/$tag.jsonl" > "$OUT/$tag.log" 2>&1
    echo "$tag" "$sha" >> "$OUT/builds.txt"
  done
done
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
builds = dict(l.split() for l in open(f'{out}/builds.txt'))
with open('docs/sigmoid_balance.csv', 'w') as f:
    f.write('run,build,renormalize,step,loss,lb_over_alpha,max_over_mean,z_loss\n')
    for tag in ['old_renorm_true', 'new_renorm_true', 'old_renorm_false', 'new_renorm_false']:
        for x in map(json.loads, open(f'{out}/{tag}.jsonl')):
            m = x['moe']
            mean = lambda k: sum(y[k] for y in m) / len(m)
            f.write('%s,%s,%s,%d,%.5f,%.5f,%.4f,%.6f\n' % (tag, builds[tag], tag.split('_')[-1], x['step'], x['loss'],
                                                           mean('lb_loss') / 0.1, mean('max_over_mean'), mean('z_loss')))
PY
gnuplot <<'GP'
set datafile separator ","
set terminal pngcairo size 960,420
set output "docs/sigmoid_balance.png"
set multiplot layout 1,2
set logscale y
set xlabel "step"; set ylabel "balance loss / alpha (mean of 2 layers)"
set title "sigmoid top-2: P over raw scores vs over p / sum p"
set key center right
plot "< grep old_renorm_true docs/sigmoid_balance.csv" u 4:6 w l t "raw P, renormalize", \
     "< grep new_renorm_true docs/sigmoid_balance.csv" u 4:6 w l t "normalised P, renormalize", \
     "< grep old_renorm_false docs/sigmoid_balance.csv" u 4:6 w l dt 2 t "raw P", \
     "< grep new_renorm_false docs/sigmoid_balance.csv" u 4:6 w l dt 2 t "normalised P"
unset logscale y
set ylabel "router z-loss (mean of 2 layers)"
set title "router z-loss"
plot "< grep old_renorm_true docs/sigmoid_balance.csv" u 4:8 w l t "raw P, renormalize", \
     "< grep new_renorm_true docs/sigmoid_balance.csv" u 4:8 w l t "normalised P, renormalize", \
     "< grep old_renorm_false docs/sigmoid_balance.csv" u 4:8 w l dt 2 t "raw P", \
     "< grep new_renorm_false docs/sigmoid_balance.csv" u 4:8 w l dt 2 t "normalised P"
unset multiplot
GP
