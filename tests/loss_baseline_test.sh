#!/usr/bin/env bash
# Loss-curve regression: tiny, switch_tiny, depth_tiny and routed_copy, noise
# off, 50 steps logged at every step, against tests/baseline/<config>.losses
# (recorded at the commit named in tests/baseline/README). Every step's loss
# must agree to 1e-6 relative: restructuring that keeps the arithmetic keeps it.
#   loss_baseline_test.sh TRAIN_SWITCH SOURCE_DIR [config ...]
set -euo pipefail
# One OpenBLAS kernel on every x86-64 machine with AVX2: the library picks its
# GEMM kernel by CPU (Haswell, Zen, SkylakeX, Cooperlake...) and the kernels
# round differently, which routed_copy's cluster decisions amplify past 1e-6
# (an AVX-512 machine's Cooperlake kernel: 5.9e-4 by step 30). The baselines
# were recorded with the Haswell kernel (the one Zen machines also get).
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
  export OPENBLAS_CORETYPE=Haswell
fi
bin=$1 src=$2
shift 2
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(tiny switch_tiny depth_tiny routed_copy)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for c in "${configs[@]}"; do
  # The overrides the baseline was recorded with (tests/baseline/README).
  "$bin" --config "$src/configs/$c.pbtxt" --set train.steps=50 --set train.log_interval=1 \
    --set train.eval_interval=1000 --set train.warmup_steps=10 --set moe.router_noise=0 --set moe.jitter=0 \
    --set moe.load_balance_coef=0.01 --set moe.bias_balance_rate=0 --metrics "$tmp/$c.jsonl" > "$tmp/$c.log" 2>&1 \
    || { echo "$c: train_switch failed"; cat "$tmp/$c.log"; status=1; continue; }
  python3 - "$tmp/$c.jsonl" "$src/tests/baseline/$c.losses" "$c" <<'PY' || status=1
import json, sys
got = [json.loads(l)["loss"] for l in open(sys.argv[1])]
want = [float(l) for l in open(sys.argv[2])]
name = sys.argv[3]
if len(got) != len(want):
    sys.exit(f"{name}: {len(got)} logged steps, baseline has {len(want)}")
worst = max(abs(g - w) / abs(w) for g, w in zip(got, want))
bad = [i + 1 for i, (g, w) in enumerate(zip(got, want)) if abs(g - w) > 1e-6 * abs(w)]
print(f"{name}: 50 steps, worst relative difference {worst:.2e}")
if bad:
    sys.exit(f"{name}: steps {bad[:10]} differ from the baseline by more than 1e-6 relative")
PY
done
exit $status
