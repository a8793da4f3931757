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
source scripts/experiments/run_set.sh
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
run_set "$OUT" docs/sinkhorn.csv "${runs[@]}"
