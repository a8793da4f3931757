#!/usr/bin/env bash
# The whole training step on the GPU against the CPU reference (issue 17,
# item 6): for each config, 200 steps on the CPU and twice on CUDA (every
# run at once), every step logged.
#   - the first step's loss within 1e-3 relative of the CPU's;
#   - every step's loss within 2% relative of the CPU's (the curves);
#   - the two CUDA runs bit-identical at every step (no atomics in the step).
# Skips (exit 77) where no GPU is visible.
#   gpu_training_test.sh TRAIN_SWITCH SOURCE_DIR [config ...]     (default: tiny switch_tiny)
# SY_GPU_STEPS overrides the 200 steps (a planted-bug check, say; the warm-up
# is then a tenth of them, as a config's may be longer); SY_GPU_ARGS
# adds overrides to every run (--set precision=BF16: both sides in bf16 GEMMs).
set -uo pipefail
bin=$1 src=$2
shift 2
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(tiny switch_tiny)
steps=${SY_GPU_STEPS:-200}
if ! nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
  echo "no GPU visible: the CUDA training step is not tested here"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
# Every config's three runs side by side (the CPU runs on the cores, the
# CUDA runs sharing the GPU: no atomics, so sharing it changes no bit): on
# the GPU machine this stage's time is device time, lent by the minute, and
# most of a tiny run's is its start.
declare -A pid=()
for c in "${configs[@]}"; do
  common=(--config "$src/configs/$c.pbtxt" --set train.steps="$steps" --set train.log_interval=1
          --set train.eval_interval=100000 --set train.checkpoint_interval=0 ${SY_GPU_ARGS:-})
  [ -n "${SY_GPU_STEPS:-}" ] && common+=(--set train.warmup_steps=$(( steps / 10 )))
  for run in cpu cuda1 cuda2; do
    backend=CPU
    [ "$run" = cpu ] || backend=CUDA
    "$bin" "${common[@]}" --set backend=$backend --metrics "$tmp/$c.$run.jsonl" > "$tmp/$c.$run.log" 2>&1 &
    pid[$c.$run]=$!
  done
done
for c in "${configs[@]}"; do
  failed=0
  for run in cpu cuda1 cuda2; do
    if ! wait "${pid[$c.$run]}"; then
      echo "$c: train_switch ($run) failed:"
      tail -5 "$tmp/$c.$run.log"
      failed=1
    fi
  done
  if [ $failed = 1 ]; then
    status=1
    continue
  fi
  python3 - "$tmp/$c" "$c" "$steps" <<'PY' || status=1
import json, sys
base, name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
def load(run):
    return [json.loads(l) for l in open(f"{base}.{run}.jsonl")]
cpu, g1, g2 = load("cpu"), load("cuda1"), load("cuda2")
for run, rows in (("cpu", cpu), ("cuda1", g1), ("cuda2", g2)):
    if len(rows) != steps:
        sys.exit(f"{name}: {run} logged {len(rows)} steps, expected {steps}")
rel = [abs(g["loss"] - c["loss"]) / abs(c["loss"]) for g, c in zip(g1, cpu)]
worst = max(range(steps), key=lambda i: rel[i])
same = sum(a["loss"] == b["loss"] for a, b in zip(g1, g2))
tps = lambda rows: sum(r["tokens_per_s"] for r in rows[steps // 2:]) / (steps - steps // 2)
print(f"{name}: step 1 loss cpu {cpu[0]['loss']:.6f} cuda {g1[0]['loss']:.6f} (rel {rel[0]:.2e}); "
      f"worst step {worst + 1} rel {rel[worst]:.2e}; final cpu {cpu[-1]['loss']:.4f} cuda {g1[-1]['loss']:.4f}; "
      f"reruns identical at {same}/{steps} steps; tokens/s (the runs side by side) cpu {tps(cpu):.0f} cuda {tps(g1):.0f}")
bad = []
if rel[0] > 1e-3: bad.append(f"first-step loss differs by {rel[0]:.2e} relative (bar 1e-3)")
if rel[worst] > 2e-2: bad.append(f"step {worst + 1} loss differs by {rel[worst]:.2e} relative (bar 2e-2)")
if same != steps:
    first = next(i for i, (a, b) in enumerate(zip(g1, g2)) if a["loss"] != b["loss"])
    bad.append(f"the two CUDA runs differ from step {first + 1} ({g1[first]['loss']!r} vs {g2[first]['loss']!r})")
if bad:
    sys.exit(f"{name}: " + "; ".join(bad))
PY
done
exit $status
