#!/usr/bin/env bash
# Sinkhorn-balanced selection (moe.sinkhorn_iters) against switch_tiny as
# shipped (load-balance loss 0.1, router noise 0.3, a balancing bias moved by
# the noiseless loads): synthetic corpus, 2000 steps, every training batch
# logged, seeds 1234 and 2 (docs/experiments/sinkhorn-routing.md). One
# thread a run, two at a time: ~8 min on 2 cores. Runs whose
# $RUNS/sinkhorn/NAME.jsonl exists are skipped (RUNS defaults to build/runs);
# the table goes to docs/sinkhorn.csv.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-build/runs}
OUT=$RUNS/sinkhorn
BIN=build/bin/train_switch
export OPENBLAS_NUM_THREADS=1
S="--config configs/switch_tiny.pbtxt --set train.steps=2000 --set train.log_interval=1"
# Sinkhorn replaces the bias (the two are refused together).
SK="--set moe.bias_balance_rate=0 --set moe.sinkhorn_iters"
runs=(
  "shipped_s1234|$S"
  "shipped_s2|$S --set train.seed=2"
  "sk8_lb0_s1234|$S $SK=8 --set moe.load_balance_coef=0"
  "sk8_lb0_s2|$S $SK=8 --set moe.load_balance_coef=0 --set train.seed=2"
  "sk8_lb0.1_s1234|$S $SK=8"
  "sk8_lb0.1_s2|$S $SK=8 --set train.seed=2"
  "sk8_lb0_noise0_s1234|$S $SK=8 --set moe.load_balance_coef=0 --set moe.router_noise=0"
  "sk2_lb0_s1234|$S $SK=2 --set moe.load_balance_coef=0"
  "sk32_lb0_s1234|$S $SK=32 --set moe.load_balance_coef=0"
  "nobalance_s1234|$S --set moe.bias_balance_rate=0 --set moe.load_balance_coef=0"
  # evaluation by the logits plus the running mean of the offsets (moe.sinkhorn_at_eval)
  "sk8_lb0_eval_s1234|$S $SK=8 --set moe.load_balance_coef=0 --set moe.sinkhorn_at_eval=true"
  "sk8_lb0_eval_s2|$S $SK=8 --set moe.load_balance_coef=0 --set moe.sinkhorn_at_eval=true --set train.seed=2"
)
mkdir -p "$OUT"
for r in "${runs[@]}"; do
  name=${r%%|*}
  [ -f "$OUT/$name.jsonl" ] && continue
  echo "$BIN ${r#*|} --metrics $OUT/$name.jsonl.part --overwrite > $OUT/$name.log 2>&1 && mv $OUT/$name.jsonl.part $OUT/$name.jsonl && echo done $name || { echo FAILED $name; tail -3 $OUT/$name.log; }"
done | xargs -P 2 -I{} bash -c '{}'
args=()
for r in "${runs[@]}"; do args+=("${r%%|*}=$OUT/${r%%|*}.jsonl"); done
python3 scripts/experiments/load_table.py "${args[@]}" > docs/sinkhorn.csv
column -s, -t docs/sinkhorn.csv
