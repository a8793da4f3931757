#!/usr/bin/env bash
# A run stopped after its checkpoint and resumed (--resume latest) gives the
# losses of an uninterrupted run bit for bit, and ends with byte-identical
# checkpoint files: one rank and EP=2 on 2 ranks; MoE with router noise,
# jitter and balancing biases, and routed attention with adaptive depth
# (centroids). Then --eval-only on the final checkpoint gives the validation
# loss the uninterrupted run printed.
#   checkpoint_resume_test.sh TRAIN_SWITCH SOURCE_DIR MPIRUN
# SY_TEST_ARGS: more overrides for the runs that start training (scripts/gpu_check.sh:
# --set backend=CUDA; a resume takes them from the checkpoint's config).
set -u
BIN=$1; SRC=$2; MPIRUN=$3
read -r -a more <<< "${SY_TEST_ARGS:-}"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
common=(--set train.steps=8 --set train.warmup_steps=2 --set train.log_interval=1 --set train.eval_interval=0
        --set train.eval_batches=2 --set train.checkpoint_interval=4 --set train.batch=4 "${more[@]}")
moe=(--config "$SRC/configs/switch_tiny.pbtxt" --set data.synthetic_bytes=50000 --set moe.bias_balance_rate=0.01)
routed=(--config "$SRC/configs/routed_copy.pbtxt" --set data.synthetic_bytes=50000 --set model.seq_len=64
        --set attention.window=16 --set depth.every_n_layers=2)
fail=0
losses() { python3 -c 'import json,sys; [print(json.loads(l)["step"], repr(json.loads(l)["loss"])) for l in open(sys.argv[1])]' "$1"; }
case_() {  # name, ranks, args...
  local name=$1 np=$2; shift 2
  local run=("$BIN")
  [ "$np" -gt 1 ] && run=("$MPIRUN" --oversubscribe -np "$np" "$BIN" --set parallel.expert_parallel="$np" --set parallel.timeout_s=120)
  "${run[@]}" "$@" "${common[@]}" --set train.checkpoint_dir="$name.full" --metrics "$name.full.jsonl" > "$name.full.log" 2>&1 \
    || { echo "FAIL $name: uninterrupted run"; cat "$name.full.log"; fail=1; return; }
  # Killed at the start of step 7: steps 5 and 6 ran after the checkpoint of step 4.
  "${run[@]}" "$@" "${common[@]}" --set train.checkpoint_dir="$name.cut" --metrics "$name.cut.jsonl" \
    --inject-fault exit:$((np - 1)):7 > "$name.cut.log" 2>&1
  [ "$(cat "$name.cut/latest")" = step_00000004 ] || { echo "FAIL $name: latest is not step 4"; cat "$name.cut.log"; fail=1; return; }
  local resume=("$BIN")
  [ "$np" -gt 1 ] && resume=("$MPIRUN" --oversubscribe -np "$np" "$BIN")
  "${resume[@]}" --resume latest --set train.checkpoint_dir="$name.cut" --metrics "$name.cut.jsonl" > "$name.resumed.log" 2>&1 \
    || { echo "FAIL $name: resume"; cat "$name.resumed.log"; fail=1; return; }
  grep -q "resumed from $name.cut/step_00000004 after step 4" "$name.resumed.log" || { echo "FAIL $name: no resume line"; fail=1; }
  # The metrics file was appended to: steps 1-6, then 5-8 again.
  local want got
  want=$(losses "$name.full.jsonl" | tail -4); got=$(losses "$name.cut.jsonl" | tail -4)
  [ "$(losses "$name.cut.jsonl" | cut -d' ' -f1 | tr '\n' ' ')" = "1 2 3 4 5 6 5 6 7 8 " ] || { echo "FAIL $name: metrics steps"; fail=1; }
  if [ "$want" != "$got" ]; then echo "FAIL $name: resumed losses differ:"; paste <(echo "$want") <(echo "$got"); fail=1; return; fi
  local f differ=0
  for f in "$name.full"/step_00000008/*.safetensors; do
    cmp -s "$f" "$name.cut/step_00000008/$(basename "$f")" || { echo "FAIL $name: $(basename "$f") differs at step 8"; differ=1; fail=1; }
  done
  [ $differ -eq 0 ] && echo "ok   $name ($np rank(s)): steps 5-8 bit-identical after resume, $(ls "$name.full"/step_00000008/*.safetensors | wc -l) checkpoint files byte-identical"
}
case_ moe 1 "${moe[@]}"
case_ routed 1 "${routed[@]}"
case_ moe_ep2 2 "${moe[@]}"
case_ routed_np2 2 "${routed[@]}"

# --eval-only: the validation loss of step 8, as the uninterrupted run printed it.
"$BIN" --resume moe.full/step_00000008 --eval-only --metrics eval.jsonl > eval.log 2>&1 || { echo "FAIL eval-only"; cat eval.log; fail=1; }
want=$(python3 -c 'import json; print(repr([json.loads(l) for l in open("moe.full.jsonl")][-1]["val_loss"]))')
got=$(python3 -c 'import json; print(repr(json.loads(open("eval.jsonl").read())["val_loss"]))')
if [ "$want" = "$got" ] && grep -q "eval step 8 | val .* | L0 max/mean" eval.log; then echo "ok   eval-only: val $got at step 8, as trained"
else echo "FAIL eval-only: val $got, the run printed $want"; cat eval.log; fail=1; fi
exit $fail
