#!/usr/bin/env bash
# Corrupt or partial checkpoints are refused by train_switch --resume (and
# by sample) with exit 2 and one line naming the file and the tensor, and the
# refusal changes nothing: the checkpoint directory and the metrics file keep
# every byte, and no temporary directory is left. Cases: a truncated file, a
# flipped bit, a wrong dtype, a missing tensor file, another model's manifest,
# a missing manifest; and on 2 ranks (EP=2) a corrupt expert shard, which
# every rank refuses together (one line, no rank left waiting).
#   checkpoint_corrupt_test.sh TRAIN_SWITCH SAMPLE SOURCE_DIR MPIRUN
set -u
BIN=$1; SAMPLE=$2; SRC=$3; MPIRUN=$4
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
args=(--config "$SRC/configs/switch_tiny.pbtxt" --set train.steps=2 --set train.warmup_steps=1 --set train.log_interval=1
      --set train.eval_interval=0 --set train.eval_batches=1 --set train.batch=4 --set data.synthetic_bytes=50000
      --set train.checkpoint_interval=2)
"$BIN" "${args[@]}" --set train.checkpoint_dir=good --metrics good.jsonl > good.log 2>&1 || { cat good.log; exit 1; }
"$BIN" "${args[@]}" --set model.d_model=32 --set train.checkpoint_dir=other > other.log 2>&1 || { cat other.log; exit 1; }
"$MPIRUN" --oversubscribe -np 2 "$BIN" "${args[@]}" --set parallel.expert_parallel=2 --set train.checkpoint_dir=ep2 > ep2.log 2>&1 || { cat ep2.log; exit 1; }
fail=0
state() { (cd "$1" && find . -type f | sort | xargs md5sum; find . -name '.*tmp*'); md5sum run.jsonl 2>/dev/null; }
# refuse NAME FILE NEEDLE [launcher...]: copies good/ to NAME/, lets mutate() break it, resumes.
refuse() {
  local name=$1 file=$2 needle=$3; shift 3
  rm -rf "$name"; cp -r good "$name"
  mutate "$name/step_00000002"
  cp good.jsonl run.jsonl
  local before; before=$(state "$name")
  "$@" --resume "$name" --metrics run.jsonl > "$name.out" 2> "$name.err"; local rc=$?
  local errors; errors=$(grep -c "^error:" "$name.err")
  if [ $rc -ne 2 ] || [ "$errors" -ne 1 ]; then echo "FAIL $name: exit $rc, $errors error lines:"; cat "$name.err"; fail=1; return; fi
  grep -q "^error: .*$name/step_00000002/$file: .*$needle" "$name.err" || { echo "FAIL $name: want '$file: ...$needle', got:"; cat "$name.err"; fail=1; return; }
  [ "$before" = "$(state "$name")" ] || { echo "FAIL $name: the refusal changed the run directory"; fail=1; return; }
  echo "ok   $name: $(grep '^error:' "$name.err")"
}
mutate() { truncate -s -7 "$1/optim-dense.safetensors"; }
refuse truncated optim-dense.safetensors "truncated: .* (last tensor head.w.exp_avg_sq)" "$BIN"
mutate() { python3 -c "import sys; p=sys.argv[1]; d=bytearray(open(p,'rb').read()); d[-9]^=4; open(p,'wb').write(d)" "$1/model-experts-00000-of-00001.safetensors"; }
refuse flipped model-experts-00000-of-00001.safetensors "tensor h1.moe.experts.b2.e7: CRC-32 .* its bytes are corrupt" "$BIN"
mutate() { python3 -c "import sys; p=sys.argv[1]; d=open(p,'rb').read(); i=d.index(b'\"F32\"', d.index(b'\"wpe\"')); open(p,'wb').write(d[:i]+b'\"I32\"'+d[i+5:])" "$1/model-dense.safetensors"; }
refuse dtype model-dense.safetensors "tensor wpe: dtype I32 in the file, F32 in the manifest" "$BIN"
mutate() { rm "$1/routing.safetensors"; }
refuse missing routing.safetensors "missing (the manifest lists it as a file)" "$BIN"
mutate() { cp other/step_00000002/manifest.pbtxt "$1/manifest.pbtxt"; }
refuse foreign model-dense.safetensors "tensor wte: shape \[256, 64\] in the file, \[256, 32\] in the manifest" "$BIN"
refuse foreign_config manifest.pbtxt "model.d_model = 64 in this run, 32 in the checkpoint" "$BIN" --config "$SRC/configs/switch_tiny.pbtxt" --set train.warmup_steps=1
mutate() { rm "$1/manifest.pbtxt"; }
refuse no_manifest manifest.pbtxt "missing" "$BIN"
# sample refuses the same way.
mutate() { truncate -s -7 "$1/model-dense.safetensors"; }
rm -rf sample_bad; cp -r good sample_bad; mutate sample_bad/step_00000002
"$SAMPLE" --checkpoint sample_bad/step_00000002 --tokens 5 > sample.out 2> sample.err; rc=$?
if [ $rc -eq 2 ] && [ "$(wc -l < sample.err)" -eq 1 ] && grep -q "sample_bad/step_00000002/model-dense.safetensors: truncated" sample.err; then
  echo "ok   sample: $(cat sample.err)"; else echo "FAIL sample: exit $rc:"; cat sample.err; fail=1; fi
# Two ranks: rank 0 verifies every file; both refuse together.
rm -rf good && mv ep2 good
mutate() { python3 -c "import sys; p=sys.argv[1]; d=bytearray(open(p,'rb').read()); d[-9]^=4; open(p,'wb').write(d)" "$1/model-experts-00001-of-00002.safetensors"; }
refuse ep2 model-experts-00001-of-00002.safetensors "tensor h1.moe.experts.b2.e7: CRC-32" "$MPIRUN" --oversubscribe -np 2 "$BIN" --set parallel.timeout_s=60
exit $fail
