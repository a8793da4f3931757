#!/usr/bin/env bash
# Checkpoints reshard: experts are stored under their global index, so a
# checkpoint written at EP=4 on 4 ranks resumes at EP=2 on 2 ranks, that one's
# at EP=1 on 1 rank, and a 1-rank checkpoint at EP=4 on 4 ranks; dropless,
# noise off, every resumed step's loss equals the writing run's to 1e-6
# relative (the global batch is drawn whole, so the data stream continues at
# another world size). Layouts that cannot work are refused with one line
# naming the field: an EP size that does not divide num_experts, a changed
# model shape. Experts of different widths reshard too (EP=2 -> EP=1). A
# dense checkpoint upcycled (--init-from) at EP=2 and 4 trains as at EP=1.
#   checkpoint_reshard_test.sh TRAIN_SWITCH SOURCE_DIR MPIRUN
set -u
BIN=$1; SRC=$2; MPIRUN=$3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
args=(--config "$SRC/configs/switch_tiny.pbtxt" --set train.steps=9 --set train.warmup_steps=2 --set train.log_interval=1
      --set train.eval_interval=0 --set train.eval_batches=1 --set train.batch=8 --set train.checkpoint_interval=3
      --set train.keep_checkpoints=0 --set data.synthetic_bytes=50000 --set moe.dropless=true --set moe.jitter=0
      --set moe.router_noise=0)
mpi() { local np=$1; shift; "$MPIRUN" --oversubscribe -np "$np" "$BIN" --set parallel.timeout_s=120 "$@"; }
fail=0
# compare NAME REFERENCE.jsonl RESUMED.jsonl FIRST_STEP
compare() {
  python3 - "$@" <<'PY' || fail=1
import json, sys
name, ref, got, first = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
want = {json.loads(l)["step"]: json.loads(l)["loss"] for l in open(ref)}
have = [json.loads(l) for l in open(got)]
steps = [h["step"] for h in have]
if steps != list(range(first, 10)):
    sys.exit(f"FAIL {name}: resumed steps {steps}, want {first}..9")
worst = max(abs(h["loss"] - want[h["step"]]) / abs(want[h["step"]]) for h in have)
if worst > 1e-6:
    sys.exit(f"FAIL {name}: worst relative loss difference {worst:.2e} > 1e-6")
print(f"ok   {name}: steps {first}-9, worst relative loss difference {worst:.2e}")
PY
}
mpi 4 "${args[@]}" --set parallel.expert_parallel=4 --set train.checkpoint_dir=ep4 --metrics ep4.jsonl > ep4.log 2>&1 \
  || { echo "FAIL EP=4 run"; cat ep4.log; exit 1; }
mpi 2 --resume ep4/step_00000003 --set parallel.expert_parallel=2 --set train.checkpoint_dir=ep2 --metrics ep2.jsonl > ep2.log 2>&1 \
  && compare "EP=4 on 4 ranks -> EP=2 on 2 ranks" ep4.jsonl ep2.jsonl 4 || { echo "FAIL EP=2 resume"; cat ep2.log; fail=1; }
"$BIN" --resume ep2/step_00000006 --set parallel.expert_parallel=1 --set train.checkpoint_dir=ep1 --metrics ep1.jsonl > ep1.log 2>&1 \
  && compare "-> EP=1 on 1 rank" ep4.jsonl ep1.jsonl 7 || { echo "FAIL EP=1 resume"; cat ep1.log; fail=1; }
"$BIN" "${args[@]}" --set train.checkpoint_dir=one --metrics one.jsonl > one.log 2>&1 || { echo "FAIL 1-rank run"; cat one.log; exit 1; }
mpi 4 --resume one/step_00000003 --set parallel.expert_parallel=4 --set train.checkpoint_dir=up4 --metrics up4.jsonl > up4.log 2>&1 \
  && compare "EP=1 on 1 rank -> EP=4 on 4 ranks" one.jsonl up4.jsonl 4 || { echo "FAIL EP=4 resume"; cat up4.log; fail=1; }
grep -c "experts-0000[0-3]-of-00004" ep4/step_00000003/manifest.pbtxt > /dev/null || { echo "FAIL: no 4-way expert files"; fail=1; }
# Experts of different widths (each rank's shard a different size) with the
# realised-cost budget loss (over every rank's tokens, so the world size does
# not change it; the hard budget, per rank's batch, would).
het=(--set moe.expert_hidden=32,32,32,32,96,96,96,96 --set moe.budget=0.8 --set moe.budget_coef=0.5)
mpi 2 "${args[@]}" "${het[@]}" --set parallel.expert_parallel=2 --set train.checkpoint_dir=het2 --metrics het2.jsonl \
  > het2.log 2>&1 || { echo "FAIL heterogeneous EP=2 run"; cat het2.log; exit 1; }
"$BIN" --resume het2/step_00000003 --set parallel.expert_parallel=1 --set train.checkpoint_dir=het1 --metrics het1.jsonl \
  > het1.log 2>&1 && compare "heterogeneous experts, EP=2 on 2 ranks -> EP=1 on 1 rank" het2.jsonl het1.jsonl 4 \
  || { echo "FAIL heterogeneous EP=1 resume"; cat het1.log; fail=1; }
# Upcycling a dense checkpoint (--init-from): each rank copies the FFNs into
# its own experts, so EP=2 on 2 ranks and EP=4 on 4 ranks train on as one
# rank does.
dense=(--config "$SRC/configs/tiny.pbtxt" --set train.steps=3 --set train.warmup_steps=2 --set train.eval_interval=0
       --set train.eval_batches=1 --set train.batch=8 --set train.checkpoint_interval=3 --set data.synthetic_bytes=50000
       --set train.checkpoint_dir=dense)
"$BIN" "${dense[@]}" > dense.log 2>&1 || { echo "FAIL dense run"; cat dense.log; exit 1; }
up=("${args[@]}" --init-from dense/step_00000003 --set train.checkpoint_interval=0)
"$BIN" "${up[@]}" --metrics upc1.jsonl > upc1.log 2>&1 || { echo "FAIL upcycled 1-rank run"; cat upc1.log; exit 1; }
grep -q "initialized from /.*/dense/step_00000003 (step 3 of its run; every expert a copy" upc1.log \
  || { echo "FAIL: no 'initialized from' line"; cat upc1.log; fail=1; }
for ep in 2 4; do
  mpi $ep "${up[@]}" --set parallel.expert_parallel=$ep --metrics upc$ep.jsonl > upc$ep.log 2>&1 \
    && compare "upcycled at EP=$ep on $ep ranks = on 1 rank" upc1.jsonl upc$ep.jsonl 1 \
    || { echo "FAIL upcycled EP=$ep run"; cat upc$ep.log; fail=1; }
done
# Drop-Upcycling's re-drawn units are keyed by layer and global expert, not
# by rank: EP=4 draws the weights one rank draws.
"$BIN" "${up[@]}" --set train.upcycle_reinit=0.5 --metrics drop1.jsonl > drop1.log 2>&1 \
  || { echo "FAIL drop-upcycled 1-rank run"; cat drop1.log; exit 1; }
grep -q "with a share 0.5 of its hidden units re-drawn" drop1.log || { echo "FAIL: no 're-drawn' line"; fail=1; }
python3 - upc1.jsonl drop1.jsonl <<'PY2' || fail=1
import json, sys
a, b = ([json.loads(l) for l in open(f)][0] for f in sys.argv[1:])
if a["loss"] == b["loss"]:
    sys.exit(f"FAIL drop-upcycling changed nothing: step 1 loss {a['loss']} with and without")
print(f"ok   drop-upcycling changes the model: step 1 loss {b['loss']:.6f} against {a['loss']:.6f}")
PY2
mpi 4 "${up[@]}" --set train.upcycle_reinit=0.5 --set parallel.expert_parallel=4 --metrics drop4.jsonl > drop4.log 2>&1 \
  && compare "drop-upcycled at EP=4 on 4 ranks = on 1 rank" drop1.jsonl drop4.jsonl 1 \
  || { echo "FAIL drop-upcycled EP=4 run"; cat drop4.log; fail=1; }
# Fine-tuning a model with balanced hash routing on other data (--init-from,
# the same model): the source's map of bytes to experts comes along, as with
# --resume --config, where one made from the new data would be refused.
hash=(--set moe.router=HASH --set moe.hash_assignment=BALANCED --set moe.load_balance_coef=0 --set moe.bias_balance_rate=0)
"$BIN" "${args[@]}" "${hash[@]}" --set train.steps=3 --set train.checkpoint_dir=hash > hash.log 2>&1 \
  || { echo "FAIL hash run"; cat hash.log; exit 1; }
python3 -c "import sys; sys.stdout.write('zzzz yyy xx w. ' * 4000)" > other.txt
"$BIN" "${args[@]}" "${hash[@]}" --set data.source=TEXT_FILE --set data.path=other.txt --set train.steps=2 \
  --set train.checkpoint_interval=0 --init-from hash > hashft.log 2>&1 && grep -q "initialized from" hashft.log \
  && echo "ok   balanced hash routing fine-tuned on other data with the source's table" \
  || { echo "FAIL balanced hash fine-tuning"; cat hashft.log; fail=1; }

refuse() {  # name, needle, command...
  local name=$1 needle=$2; shift 2
  "$@" > "$name.out" 2> "$name.err"; local rc=$?
  if [ $rc -ne 2 ] || [ "$(wc -l < "$name.err")" -ne 1 ] || ! grep -qF -- "$needle" "$name.err"; then
    echo "FAIL $name: exit $rc, stderr:"; cat "$name.err"; fail=1
  else echo "ok   $name refused: $(cat "$name.err")"; fi
}
refuse ep3 "parallel.expert_parallel = 3: must divide moe.num_experts = 8" \
  "$BIN" --resume one/step_00000003 --set parallel.expert_parallel=3
refuse layers "model.n_layers = 3 in this run, 2 in the checkpoint" \
  "$BIN" --resume one/step_00000003 --set model.n_layers=3
refuse experts "moe.num_experts = 4 in this run, 8 in the checkpoint" \
  "$BIN" --resume one/step_00000003 --set moe.num_experts=4
refuse width "model.d_model = 32 in this run, 64 in the checkpoint" \
  "$BIN" --config "$SRC/configs/switch_tiny.pbtxt" --resume one/step_00000003 --set model.d_model=32
refuse upcycle_shared "moe.shared_expert = true: upcycling dense/step_00000003 copies" \
  "$BIN" "${up[@]}" --set moe.shared_expert=true
refuse init_own_dir "train.checkpoint_dir = dense: the --init-from checkpoint dense/step_00000003 lies there" \
  "$BIN" "${args[@]}" --set train.checkpoint_interval=0 --init-from dense --set train.checkpoint_dir=dense
refuse reinit_without_init "train.upcycle_reinit = 0.5: re-draws part of each expert when --init-from upcycles" \
  "$BIN" "${args[@]}" --set train.upcycle_reinit=0.5
refuse init_and_resume "--init-from dense with --resume latest: --resume continues a run" \
  "$BIN" --config "$SRC/configs/switch_tiny.pbtxt" --init-from dense --resume latest
exit $fail
