#!/usr/bin/env bash
# bf16 GEMMs against fp32 (docs/experiments/bf16-gemms.md): tiny and
# switch_tiny, 200 steps each with precision FP32 and BF16 (the CPU's
# emulation of the bf16 GEMMs), loss logged every step, validation at step 200.
# Runs go to $RUNS/bf16 (RUNS defaults to build/runs); then prints the
# comparison. One thread per run, one run at a time (~8 min on the shared
# 2-core machine). BIN overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-build/runs}
OUT=$RUNS/bf16
BIN=${BIN:-build/bin/train_switch}
mkdir -p "$OUT"
for cfg in tiny switch_tiny; do
  for p in FP32 BF16; do
    OPENBLAS_NUM_THREADS=1 nice "$BIN" --config configs/$cfg.pbtxt --set train.steps=200 \
      --set train.log_interval=1 --set train.eval_interval=200 --set precision=$p \
      --metrics "$OUT/$cfg-$p.jsonl" --overwrite > "$OUT/$cfg-$p.log" 2>&1 \
      || { echo "bf16_vs_fp32: $cfg $p failed (exit $?; log: $OUT/$cfg-$p.log):"; tail -3 "$OUT/$cfg-$p.log"; exit 1; }
  done
done
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for cfg in ["tiny", "switch_tiny"]:
    loss, val, tps = {}, {}, {}
    for p in ["FP32", "BF16"]:
        rows = [json.loads(l) for l in open(f"{out}/{cfg}-{p}.jsonl")]
        loss[p] = {r["step"]: r["loss"] for r in rows}
        val[p] = [r["val_loss"] for r in rows if "val_loss" in r][-1]
        t = sorted(r["tokens_per_s"] for r in rows[10:])
        tps[p] = t[len(t) // 2]
    a, b = loss["FP32"], loss["BF16"]
    tail = lambda d: sum(d[s] for s in range(181, 201)) / 20
    worst = max(a, key=lambda s: abs(b[s] - a[s]) / a[s])
    print(f"{cfg}: step 1 {a[1]:.5f} / {b[1]:.5f}; steps 181-200 {tail(a):.4f} / {tail(b):.4f} "
          f"({abs(tail(b) - tail(a)) / tail(a):.2e}); worst step {worst} {abs(b[worst] - a[worst]) / a[worst]:.2e}; "
          f"val {val['FP32']:.4f} / {val['BF16']:.4f}; tokens/s {tps['FP32']:.0f} / {tps['BF16']:.0f}")
PY
