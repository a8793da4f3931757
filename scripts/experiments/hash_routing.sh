#!/usr/bin/env bash
# Hash routing (moe.router HASH: each token id to a fixed, hashed expert)
# against switch_tiny's learned router as shipped: synthetic corpus and
# tinyshakespeare, 2000 steps, every batch logged, seeds 1234 and 2
# (docs/experiments/hash-routing.md). Hash runs drop the balancing loss and
# bias (they cannot move a hashed choice); "renorm": combine weight 1;
# "balanced": moe.hash_assignment BALANCED (ids by frequency).
# One thread a run, two at a time: ~15 min on 2 cores; DATA names
# tinyshakespeare (default ../shared/data/tinyshakespeare.txt). Runs whose
# $RUNS/hash/NAME.jsonl exists are skipped (RUNS defaults to build/runs);
# the table goes to docs/hash_routing.csv.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-build/runs}
OUT=$RUNS/hash
source scripts/experiments/run_set.sh
S="--config configs/switch_tiny.pbtxt --set train.steps=2000 --set train.log_interval=1"
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
T="--set data.source=TEXT_FILE --set data.path=$DATA"
H="--set moe.router=HASH --set moe.load_balance_coef=0 --set moe.bias_balance_rate=0"
runs=(
  "learned_syn_s1234|$S"
  "learned_syn_s2|$S --set train.seed=2"
  "hash_syn_s1234|$S $H"
  "hash_syn_s2|$S $H --set train.seed=2"
  "hash_renorm_syn_s1234|$S $H --set moe.renormalize=true"
  "learned_txt_s1234|$S $T"
  "hash_txt_s1234|$S $H $T"
  "hash_txt_s2|$S $H $T --set train.seed=2"
  "learned_txt_s2|$S $T --set train.seed=2"
  # controls: the learned router without its balancing (as the hash runs),
  # and hash routing without drops, or with weight 1
  "learned_nobal_txt_s1234|$S $T --set moe.load_balance_coef=0 --set moe.bias_balance_rate=0"
  "learned_nobal_txt_s2|$S $T --set moe.load_balance_coef=0 --set moe.bias_balance_rate=0 --set train.seed=2"
  "hash_dropless_txt_s1234|$S $H $T --set moe.dropless=true"
  "hash_renorm_txt_s1234|$S $H $T --set moe.renormalize=true"
  # what the learned router loses to the hash by: its noise, its loss's weight
  "learned_noise0_txt_s1234|$S $T --set moe.router_noise=0"
  "learned_noise0_txt_s2|$S $T --set moe.router_noise=0 --set train.seed=2"
  "learned_lb0.01_txt_s1234|$S $T --set moe.load_balance_coef=0.01"
  "learned_lb0.01_txt_s2|$S $T --set moe.load_balance_coef=0.01 --set train.seed=2"
  # balanced assignment: the ids by their frequency in the training split
  "balanced_syn_s1234|$S $H --set moe.hash_assignment=BALANCED"
  "balanced_syn_s2|$S $H --set moe.hash_assignment=BALANCED --set train.seed=2"
  "balanced_txt_s1234|$S $H $T --set moe.hash_assignment=BALANCED"
  "balanced_txt_s2|$S $H $T --set moe.hash_assignment=BALANCED --set train.seed=2"
  "balanced_dropless_txt_s1234|$S $H $T --set moe.hash_assignment=BALANCED --set moe.dropless=true"
)
run_set "$OUT" docs/hash_routing.csv "${runs[@]}"
