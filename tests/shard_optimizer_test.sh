#!/usr/bin/env bash
# ZeRO-1 (parallel.shard_optimizer, runtime/optimizer_shard.h) computes what
# the whole update computes. Against the same run without it, bit for bit:
# the per-step losses and every checkpoint file at steps 4 and 8, for EP=2
# on 4 ranks (the dense moments in 4 parts, each expert shard's over its 2
# replicas; again with experts of different widths, packed rows, and two
# micro-batches), EP=4 on 4 ranks (experts on one replica each: only the dense
# moments sharded), EP=1 on 2 ranks in bf16 (the bf16 shadows of the
# values that arrive) and routed attention with depth routing on 3 ranks
# (parts of unequal sizes). Resuming: the EP=2 run stopped after step 4's
# checkpoint and resumed sharded gives the uninterrupted losses; the
# sharded step-4 checkpoint resumed at another layout (EP=1 on 2 ranks:
# expert moments in 2 parts cut elsewhere) gives the losses of the same
# resume without sharding. parallel.reduce_scatter_grads (each rank reduces
# only its part's gradients) against the runs without sharding: losses and
# gradient norms within 1e-5, and two runs identical.
#   shard_optimizer_test.sh TRAIN_SWITCH SOURCE_DIR MPIRUN
set -u
BIN=$1; SRC=$2; MPIRUN=$3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
common=(--set train.steps=8 --set train.warmup_steps=2 --set train.log_interval=1 --set train.eval_interval=0
        --set train.eval_batches=2 --set train.checkpoint_interval=4 --set parallel.timeout_s=120)
moe=(--config "$SRC/configs/switch_tiny.pbtxt" --set data.synthetic_bytes=50000 --set train.batch=8
     --set moe.every_n_layers=1 --set moe.top_k=2 --set moe.bias_balance_rate=0.01)
routed=(--config "$SRC/configs/routed_copy.pbtxt" --set data.synthetic_bytes=50000 --set model.seq_len=64
        --set attention.window=16 --set depth.every_n_layers=2 --set train.batch=6)
# SY_TEST_ARGS: more overrides for every run (scripts/gpu_check.sh: --set
# backend=CUDA, the ranks sharing one GPU through the MPI communicator).
read -r -a more <<< "${SY_TEST_ARGS:-}"
common+=("${more[@]}")
fail=0
losses_norms() { python3 -c 'import json,sys; [print(json.loads(l)["step"], repr(json.loads(l)["loss"]), repr(json.loads(l)["grad_norm"])) for l in open(sys.argv[1])]' "$1"; }
losses() { python3 -c 'import json,sys; [print(json.loads(l)["step"], repr(json.loads(l)["loss"])) for l in open(sys.argv[1])]' "$1"; }
same_files() {  # dir_a dir_b: every safetensors file byte for byte
  local f n=0
  for f in "$1"/*.safetensors; do
    cmp -s "$f" "$2/$(basename "$f")" || { echo "$(basename "$f") differs"; return 1; }
    n=$((n + 1))
  done
  echo "$n"
}
case_() {  # name, ranks, ep, args...
  local name=$1 np=$2 ep=$3; shift 3
  local v
  for v in plain shard; do
    "$MPIRUN" --oversubscribe -np "$np" "$BIN" "$@" "${common[@]}" --set parallel.expert_parallel="$ep" \
      --set parallel.shard_optimizer=$([ $v = shard ] && echo true || echo false) \
      --set train.checkpoint_dir="$name.$v" --metrics "$name.$v.jsonl" > "$name.$v.log" 2>&1 \
      || { echo "FAIL $name: the $v run"; cat "$name.$v.log"; fail=1; return; }
  done
  local line="AdamW moments sharded (parallel.shard_optimizer): .* the dense ones over $np ranks"
  [ "$name" = routed ] || line+=", each expert shard's over its $((np / ep)) replicas"
  grep -q "$line" "$name.shard.log" || { echo "FAIL $name: no line on the sharded moments"; grep -i adamw "$name.shard.log"; fail=1; }
  # The values' all-gather time in the metrics, where it runs.
  [ "$(grep -c '"comm_share_values_s":[0-9.e-]*[1-9]' "$name.shard.jsonl")" = 8 ] && ! grep -q comm_share_values_s "$name.plain.jsonl" \
    || { echo "FAIL $name: comm_share_values_s not on every sharded step's line alone"; fail=1; }
  if [ "$(losses "$name.plain.jsonl")" != "$(losses "$name.shard.jsonl")" ]; then
    echo "FAIL $name: losses differ"; paste <(losses "$name.plain.jsonl") <(losses "$name.shard.jsonl"); fail=1; return
  fi
  local s n
  for s in 4 8; do
    n=$(same_files "$name.plain/step_0000000$s" "$name.shard/step_0000000$s") || { echo "FAIL $name: step $s: $n"; fail=1; return; }
  done
  echo "ok   $name ($np ranks, EP=$ep): 8 steps' losses bit for bit, $n checkpoint files byte-identical at steps 4 and 8"
}
case_ ep2 4 2 "${moe[@]}"
case_ sizes 4 2 "${moe[@]}" --set moe.expert_hidden=128,256,128,256,64,64,256,128 --set train.micro_batches=2
case_ ep4 4 4 "${moe[@]}"
case_ bf16 2 1 "${moe[@]}" --set precision=BF16
case_ routed 3 1 "${routed[@]}" --set train.batch=6

# parallel.reduce_scatter_grads: each rank receives its own part's
# gradient sums (a reduce-scatter) and the norm is summed from the parts:
# the same sums in another order, so losses and gradient norms within 1e-5
# (relative) of the run without sharding, and two runs identical (losses
# and norms); the log line says the reducer scatters; thread mode (the
# buckets reduced while backward goes on) and without overlap.
close() {  # a.jsonl b.jsonl: every step's loss and gradient norm within 1e-5
  python3 - "$1" "$2" <<'PY'
import json, sys
rows = [[json.loads(l) for l in open(p)] for p in sys.argv[1:]]
bad = [(a["step"], k, a[k], b[k]) for a, b in zip(*rows) for k in ("loss", "grad_norm")
       if abs(a[k] - b[k]) > 1e-5 * abs(a[k])]
same = all(a[k] == b[k] for a, b in zip(*rows) for k in ("loss", "grad_norm"))
print("beyond 1e-5 at (step, what, without, with) %s" % bad[:3] if bad else "bit for bit" if same else "within 1e-5")
sys.exit(1 if bad or len(rows[0]) != len(rows[1]) or len(rows[0]) == 0 else 0)
PY
}
rs_case() {  # name of a case above (its plain run), ranks, ep, args...
  local name=$1 np=$2 ep=$3; shift 3
  local v r
  for v in rs rs2; do
    "$MPIRUN" --oversubscribe -np "$np" "$BIN" "$@" "${common[@]}" --set parallel.expert_parallel="$ep" \
      --set parallel.shard_optimizer=true --set parallel.reduce_scatter_grads=true \
      --set train.checkpoint_dir="$name.$v" --metrics "$name.$v.jsonl" > "$name.$v.log" 2>&1 \
      || { echo "FAIL $name: the $v run"; cat "$name.$v.log"; fail=1; return; }
  done
  if ! grep -q "; gradients reduce-scattered over the same parts (parallel.reduce_scatter_grads)" "$name.rs.log"; then
    echo "FAIL $name, reduce_scatter_grads: the reducer does not scatter"; grep -i adamw "$name.rs.log"; fail=1
  elif ! r=$(close "$name.plain.jsonl" "$name.rs.jsonl"); then
    echo "FAIL $name, reduce_scatter_grads: $r"; paste <(losses "$name.plain.jsonl") <(losses "$name.rs.jsonl"); fail=1
  elif ! cmp -s <(losses_norms "$name.rs.jsonl") <(losses_norms "$name.rs2.jsonl"); then
    echo "FAIL $name, reduce_scatter_grads: two runs differ"; fail=1
  else echo "ok   $name with reduce_scatter_grads ($np ranks, EP=$ep): losses and gradient norms $r of those without sharding; two runs identical"; fi
}
rs_case ep2 4 2 "${moe[@]}"
rs_case sizes 4 2 "${moe[@]}" --set moe.expert_hidden=128,256,128,256,64,64,256,128 --set train.micro_batches=2 \
  --set parallel.overlap_grad_reduce=false
rs_case bf16 2 1 "${moe[@]}" --set precision=BF16
rs_case routed 3 1 "${routed[@]}" --set train.batch=6

# Stopped at the start of step 7 (steps 5 and 6 ran after step 4's checkpoint), resumed sharded.
shard=(--set parallel.expert_parallel=2 --set parallel.shard_optimizer=true)
"$MPIRUN" --oversubscribe -np 4 "$BIN" "${moe[@]}" "${common[@]}" "${shard[@]}" --set train.checkpoint_dir=cut \
  --metrics cut.jsonl --inject-fault exit:3:7 > cut.log 2>&1
if [ "$(cat cut/latest 2>/dev/null)" != step_00000004 ]; then echo "FAIL resume: latest is not step 4"; cat cut.log; fail=1
elif ! "$MPIRUN" --oversubscribe -np 4 "$BIN" --resume latest --set train.checkpoint_dir=cut --metrics cut.jsonl \
       > resumed.log 2>&1; then echo "FAIL resume: the resumed run"; cat resumed.log; fail=1
elif [ "$(losses ep2.plain.jsonl | tail -4)" != "$(losses cut.jsonl | tail -4)" ]; then
  echo "FAIL resume: steps 5-8 differ"; paste <(losses ep2.plain.jsonl | tail -4) <(losses cut.jsonl | tail -4); fail=1
else echo "ok   resumed sharded (4 ranks, EP=2): steps 5-8 of the uninterrupted run, bit for bit"; fi

# The sharded checkpoint at another layout, with and without sharding.
for v in false true; do
  "$MPIRUN" --oversubscribe -np 2 "$BIN" --resume ep2.shard/step_00000004 --set parallel.expert_parallel=1 \
    --set parallel.shard_optimizer=$v --set train.checkpoint_dir=relayout.$v --metrics relayout.$v.jsonl \
    > relayout.$v.log 2>&1 || { echo "FAIL relayout: the resume with shard_optimizer $v"; cat relayout.$v.log; fail=1; }
done
if [ -s relayout.true.jsonl ] && [ "$(losses relayout.false.jsonl)" = "$(losses relayout.true.jsonl)" ]; then
  echo "ok   the sharded step-4 checkpoint resumed on 2 ranks (EP=1): steps 5-8 with sharding those without, bit for bit"
else echo "FAIL relayout: losses differ"; paste <(losses relayout.false.jsonl) <(losses relayout.true.jsonl); fail=1; fi
exit $fail
