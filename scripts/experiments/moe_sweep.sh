#!/usr/bin/env bash
# Why does dense tiny overtake switch_tiny at 64 sequences per step, and which
# switch_tiny settings keep the load bar (max/mean < 1.5)?
# (docs/experiments/moe-balance.md). Runs every variant below at once, one
# thread each (on a 16-core machine: 28 min; on 2 cores about 3 hours).
# Synthetic corpus, 2000 steps unless named otherwise. Plot with
# moe_sweep_plot.sh, which reads OUTDIR from $RUNS/sweep (RUNS defaults to
# build/runs). Usage: moe_sweep.sh [OUTDIR [BIN]]   (OUTDIR: $RUNS/sweep)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-${RUNS:-build/runs}/sweep}
BIN=${2:-build/bin/train_switch}
mkdir -p "$OUT"
export OPENBLAS_NUM_THREADS=1
common=(--set train.steps=2000 --set train.eval_interval=100 --set train.log_interval=10)
b64=(--set train.batch=64)
seq=(--set moe.load_balance_tokens=128)
D=(--config configs/tiny.pbtxt)
S=(--config configs/switch_tiny.pbtxt)
source scripts/experiments/jobs.sh
JOBS=${JOBS:-15}  # (every run at once, as many as there are runs)
run() {
  local name=$1 rc=0; shift
  "$BIN" "$@" --metrics "$OUT/$name.jsonl" --overwrite > "$OUT/$name.log" 2>&1 || rc=$?
  echo "$name rc=$rc" >> "$OUT/done.txt"
  return $rc
}
run_bg run dense_b64 "${D[@]}" "${b64[@]}" "${common[@]}"
run_bg run dense_b64_seed2 "${D[@]}" "${b64[@]}" "${common[@]}" --set train.seed=2
run_bg run dense_b64_lr15 "${D[@]}" "${b64[@]}" "${common[@]}" --set train.lr=0.0015
run_bg run dense_b64_wd0 "${D[@]}" "${b64[@]}" "${common[@]}" --set train.weight_decay=0
run_bg run dense_b64_wu200 "${D[@]}" "${b64[@]}" "${common[@]}" --set train.warmup_steps=200
run_bg run switch_b64_seq_seed2 "${S[@]}" "${b64[@]}" "${seq[@]}" "${common[@]}" --set train.seed=2
run_bg run switch_b64_seq_noise0 "${S[@]}" "${b64[@]}" "${seq[@]}" "${common[@]}" --set moe.router_noise=0
run_bg run switch_b64_noise0 "${S[@]}" "${b64[@]}" "${common[@]}" --set moe.router_noise=0
run_bg run switch_b64_seq_lr15 "${S[@]}" "${b64[@]}" "${seq[@]}" "${common[@]}" --set train.lr=0.0015
run_bg run switch_b64_seq_wd0 "${S[@]}" "${b64[@]}" "${seq[@]}" "${common[@]}" --set train.weight_decay=0
run_bg run switch_b64_seq_wu200 "${S[@]}" "${b64[@]}" "${seq[@]}" "${common[@]}" --set train.warmup_steps=200
run_bg run switch_b64_seq_every2 "${S[@]}" "${b64[@]}" "${seq[@]}" "${common[@]}" --set moe.every_n_layers=2
run_bg run switch_b64_nolb "${S[@]}" "${b64[@]}" "${common[@]}" --set moe.load_balance_coef=0
# The configured batch (16) for four times the steps: the same tokens as 2000 steps of 64.
long=(--set train.steps=8000 --set train.eval_interval=400 --set train.log_interval=40)
run_bg run dense_b16_8k "${D[@]}" "${long[@]}"
run_bg run switch_b16_8k "${S[@]}" "${long[@]}"
wait_all || { echo "some runs failed (their logs: $OUT/NAME.log)"; exit 1; }
echo all >> "$OUT/done.txt"
