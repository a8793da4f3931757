#!/usr/bin/env bash
# Non-finite values, through train_switch --inject-fault:
#  - nan:RANK:3 poisons a weight for step 3 only: step 3 is skipped (its
#    metrics line counts bad_steps 1, the progress line says "bad steps 1"),
#    the checkpoints after steps 2 and 3 hold the same tensors (no parameter,
#    optimizer or routing-state update), and training goes on with finite
#    losses; one rank, rank 1 of EP=2 on 2 ranks (both ranks skip), and
#    rank 1 of 2 with the optimizer sharded and the gradients reduce-scattered.
#  - nan_stay:0:3 keeps it poisoned: after train.max_bad_steps = 2 bad steps
#    the run stops with exit 3 and one line naming the step and the first
#    non-finite layer (the poisoned weight is in block h1); the metrics file
#    ends on that step.
#   nonfinite_test.sh TRAIN_SWITCH SOURCE_DIR MPIRUN
# SY_TEST_ARGS: more overrides for every run (scripts/gpu_check.sh: --set backend=CUDA).
set -u
BIN=$1; SRC=$2; MPIRUN=$3
read -r -a more <<< "${SY_TEST_ARGS:-}"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
args=(--config "$SRC/configs/switch_tiny.pbtxt" --set train.steps=6 --set train.warmup_steps=2 --set train.log_interval=1
      --set train.eval_interval=0 --set train.eval_batches=1 --set train.batch=4 --set data.synthetic_bytes=50000
      --set train.checkpoint_interval=1 --set train.keep_checkpoints=0 "${more[@]}")
fail=0
skip_case() {  # name, fault rank, launcher...
  local name=$1 rank=$2; shift 2
  "$@" "${args[@]}" --set train.checkpoint_dir="$name" --metrics "$name.jsonl" --inject-fault "nan:$rank:3" > "$name.log" 2>&1 \
    || { echo "FAIL $name: exit $?"; cat "$name.log"; fail=1; return; }
  python3 - "$name.jsonl" <<'PY' || { fail=1; return; }
import json, math, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
bad = [l["bad_steps"] for l in lines]
if bad != [0, 0, 1, 1, 1, 1]:
    sys.exit(f"FAIL: bad_steps per step {bad}, want [0, 0, 1, 1, 1, 1]")
if lines[2]["loss"] is not None:
    sys.exit(f"FAIL: step 3 logged loss {lines[2]['loss']}, want null (skipped)")
if not all(l["loss"] is not None and math.isfinite(l["loss"]) for l in lines[3:]):
    sys.exit("FAIL: training did not go on with finite losses")
PY
  grep -q "^step      3/6 | loss nan .* | bad steps 1" "$name.log" || { echo "FAIL $name: no 'bad steps 1' on step 3's progress line"; cat "$name.log"; fail=1; return; }
  # Every tensor the same after step 3 as after step 2; on one rank the
  # checkpoint of step 3 is written before the hook restores the poisoned
  # element (h1.ln1.w[0]), which alone may differ.
  python3 - "$name" <<'PY' || { fail=1; return; }
import glob, json, os, struct, sys
def tensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    h = json.loads(data[8:8 + n]); h.pop("__metadata__", None)
    return {k: data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items()}
d = sys.argv[1]
for f in sorted(glob.glob(f"{d}/step_00000002/*.safetensors")):
    a, b = tensors(f), tensors(f.replace("step_00000002", "step_00000003"))
    for k in a:
        same = a[k] == b[k] or (k == "h1.ln1.w" and a[k][4:] == b[k][4:])
        if not same:
            sys.exit(f"FAIL {d}: {os.path.basename(f)}: tensor {k} changed in the skipped step")
PY
  cmp -s "$name/step_00000003/model-dense.safetensors" "$name/step_00000004/model-dense.safetensors" \
    && { echo "FAIL $name: step 4 did not train"; fail=1; return; }
  grep -q "^bad_steps: 1$" "$name/step_00000003/manifest.pbtxt" && grep -q "^optimizer_step: 2$" "$name/step_00000003/manifest.pbtxt" \
    || { echo "FAIL $name: manifest counters"; fail=1; return; }
  echo "ok   $name: step 3 skipped, checkpoints of steps 2 and 3 identical, steps 4-6 finite"
}
skip_case one 0 "$BIN"
skip_case ep2 1 "$MPIRUN" --oversubscribe -np 2 "$BIN" --set parallel.expert_parallel=2 --set parallel.timeout_s=120
# The AdamW moments sharded and the gradients reduce-scattered (2 ranks, each
# expert shard with two replicas): a skipped step moves no part of any rank.
skip_case sharded 1 "$MPIRUN" --oversubscribe -np 2 "$BIN" --set parallel.expert_parallel=1 --set parallel.timeout_s=120 \
  --set parallel.shard_optimizer=true --set parallel.reduce_scatter_grads=true

for launch in one ep2; do
  run=("$BIN"); rank=0
  [ $launch = ep2 ] && run=("$MPIRUN" --oversubscribe -np 2 "$BIN" --set parallel.expert_parallel=2 --set parallel.timeout_s=120) rank=1
  "${run[@]}" "${args[@]}" --set train.max_bad_steps=2 --set train.checkpoint_dir="stay_$launch" --metrics "stay_$launch.jsonl" \
    --inject-fault "nan_stay:$rank:3" > "stay_$launch.out" 2> "stay_$launch.err"
  rc=$?
  want="error: step 4: 2 steps in a row with a non-finite loss or gradient norm (train.max_bad_steps = 2; loss nan, gradient norm nan); first non-finite output: block h1"
  if [ $rc -ne 3 ] || [ "$(grep -c '^error:' "stay_$launch.err")" -ne 1 ] || ! grep -qxF -- "$want" "stay_$launch.err"; then
    echo "FAIL nan_stay $launch: exit $rc, stderr:"; cat "stay_$launch.err"; fail=1
  elif [ "$(tail -1 "stay_$launch.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["step"])')" != 4 ]; then
    echo "FAIL nan_stay $launch: metrics do not end on step 4"; fail=1
  else echo "ok   nan_stay $launch: exit 3: $(grep '^error:' "stay_$launch.err")"; fi
done
exit $fail
