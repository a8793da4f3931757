#!/usr/bin/env bash
# train_switch end to end: a short run writes its metrics; bad input exits 2
# with one line that names the file, field and value.
set -u
BIN=$1; SRC=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
expect_exit2() {  # name, expected-substring, args...
  local name=$1 needle=$2; shift 2
  timeout 60 "$BIN" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null; local rc=$?
  if [ $rc -ne 2 ]; then echo "FAIL $name: exit $rc, want 2"; cat "$tmp/err"; fail=1; return; fi
  if [ "$(wc -l <"$tmp/err")" -ne 1 ]; then echo "FAIL $name: stderr not one line:"; cat "$tmp/err"; fail=1; return; fi
  grep -qF -- "$needle" "$tmp/err" || { echo "FAIL $name: '$needle' not in: $(cat "$tmp/err")"; fail=1; return; }
  echo "ok   $name: $(cat "$tmp/err")"
}
printf 'model {\n  d_model: 64\n  n_heads: 5\n}\n' > "$tmp/heads.pbtxt"
printf 'model {\n  d_modle: 64\n}\n' > "$tmp/unknown.pbtxt"
printf 'data { source: TEXT_FILE path: "%s/none.txt" }\n' "$tmp" > "$tmp/nodata.pbtxt"
expect_exit2 inconsistent "heads.pbtxt: model.d_model = 64: must be divisible by model.n_heads = 5" --config "$tmp/heads.pbtxt"
expect_exit2 unknown-field "unknown.pbtxt:2:" --config "$tmp/unknown.pbtxt"
expect_exit2 missing-data "data.path = $tmp/none.txt: no such file" --config "$tmp/nodata.pbtxt"
expect_exit2 bad-set "train.steps = -1: must be in [1, 100000000]" --config "$SRC/configs/tiny.pbtxt" --set train.steps=-1
expect_exit2 bad-set-type "not a valid int32" --config "$SRC/configs/tiny.pbtxt" --set model.d_model=big
expect_exit2 no-config "nope.pbtxt: cannot open" --config "$tmp/nope.pbtxt"
# Model options: an unknown enum value names the allowed ones; RoPE needs an even head size.
expect_exit2 bad-enum "'RELU' is not a valid enum for model.activation (allowed: GELU, SWIGLU)" \
  --config "$SRC/configs/tiny.pbtxt" --set model.activation=RELU
expect_exit2 rope-odd-head "model.position = ROPE: needs an even head size; d_model / n_heads = 15" \
  --config "$SRC/configs/tiny.pbtxt" --set model.position=ROPE --set model.d_model=60

# Smaller traps: non-regular files, binary configs, lists, non-finite floats,
# a path nobody reads, fault syntax, a step that cannot fit in memory.
mkfifo "$tmp/fifo"
expect_exit2 config-dir "$tmp: is a directory, not a config file" --config "$tmp"
expect_exit2 config-fifo "$tmp/fifo: is a FIFO (named pipe), not a config file" --config "$tmp/fifo"
printf '\000\001binary\000stuff\n' > "$tmp/binary.pbtxt"
expect_exit2 config-binary "binary.pbtxt:1:1: field '\x00\x01binary\x00stuff': Invalid control characters" --config "$tmp/binary.pbtxt"
LC_ALL=C grep -q '[^ -~]' "$tmp/err" && { echo "FAIL config-binary: raw bytes in the message"; fail=1; }
expect_exit2 set-list-bad "'x' (element 2) is not a valid float for moe.expert_cost" \
  --config "$SRC/configs/switch_tiny.pbtxt" --set moe.expert_cost=1,1,x,4
expect_exit2 list-inf "moe.expert_cost[3] = inf: must be a finite number" \
  --config "$SRC/configs/switch_tiny.pbtxt" --set moe.expert_cost=1,1,4,inf
expect_exit2 path-unread "data.path = $tmp/heads.pbtxt: set while data.source is SYNTHETIC" \
  --config "$SRC/configs/tiny.pbtxt" --set data.path="$tmp/heads.pbtxt"
expect_exit2 data-dir "data.path = $tmp: is a directory; data must be a regular file" \
  --config "$SRC/configs/tiny.pbtxt" --set data.source=TEXT_FILE --set data.path="$tmp"
expect_exit2 data-fifo "data.path = $tmp/fifo: is a FIFO (named pipe); data must be a regular file" \
  --config "$SRC/configs/tiny.pbtxt" --set data.source=TEXT_FILE --set data.path="$tmp/fifo"
expect_exit2 fault-syntax "--inject-fault throw:x:y: RANK 'x' is not an integer" \
  --config "$SRC/configs/tiny.pbtxt" --inject-fault throw:x:y
expect_exit2 memory "model.seq_len = 65536 with train.batch = 8192: training needs about 5.0 TiB" \
  --config "$SRC/configs/tiny.pbtxt" --set model.seq_len=65536 --set train.batch=8192
grep -q "of physical memory; lower model.seq_len or train.batch" "$tmp/err" || { echo "FAIL memory: no advice"; fail=1; }
# backend CUDA where no GPU is visible (CI's machines): a config error at load,
# "no CUDA device is visible" from a CUDA build, "this build has no CUDA
# backend" from one without.
if ! ls /dev/nvidia[0-9]* > /dev/null 2>&1; then
  expect_exit2 no-gpu "(with --set overrides): backend = CUDA: " --config "$SRC/configs/tiny.pbtxt" --set backend=CUDA
  grep -qE "backend = CUDA: (no CUDA device is visible to this process|this build has no CUDA backend)" "$tmp/err" ||
    { echo "FAIL no-gpu: $(cat "$tmp/err")"; fail=1; }
fi
# A list set on the command line trains.
"$BIN" --config "$SRC/configs/switch_tiny.pbtxt" --set moe.num_experts=4 --set moe.expert_cost=1,1,4,4 --set moe.budget_coef=0.1 \
  --set train.steps=2 --set train.warmup_steps=1 --set train.eval_batches=1 --set data.synthetic_bytes=20000 \
  --metrics "$tmp/cost.jsonl" > "$tmp/out" 2>&1 &&
  # (the costs reached the run: every MoE run logs expected_cost, 1.0 with
  # equal experts; with these, two of four cost 4, so more than 1.5)
  python3 -c 'import json,sys; c=[m["expected_cost"] for l in open(sys.argv[1]) for m in json.loads(l).get("moe",[])]; sys.exit(0 if c and min(c) > 1.5 else 1)' "$tmp/cost.jsonl" \
  && echo "ok   set-list: moe.expert_cost=1,1,4,4 trains" || { echo "FAIL set-list (or its costs did not reach the run):"; cat "$tmp/out"; fail=1; }

# A short run: progress lines and one metrics line per logged step.
"$BIN" --config "$SRC/configs/tiny.pbtxt" --set train.steps=4 --set train.warmup_steps=1 --set train.log_interval=2 \
  --set train.eval_interval=4 --set train.eval_batches=1 --set data.synthetic_bytes=20000 \
  --metrics "$tmp/m.jsonl" > "$tmp/out" 2>&1 || { echo "FAIL short run"; cat "$tmp/out"; fail=1; }
grep -q "ETA" "$tmp/out" || { echo "FAIL: no progress line"; fail=1; }
[ "$(wc -l < "$tmp/m.jsonl")" -eq 2 ] || { echo "FAIL: want 2 metrics lines"; cat "$tmp/m.jsonl"; fail=1; }
for k in step loss lr tokens_per_s elapsed_s; do
  grep -q "\"$k\"" "$tmp/m.jsonl" || { echo "FAIL: metrics lack $k"; fail=1; }
done
tail -1 "$tmp/m.jsonl" | grep -q '"val_loss"' || { echo "FAIL: last line lacks val_loss"; fail=1; }

# Metrics are never lost or allowed to destroy data.
short=(--config "$SRC/configs/tiny.pbtxt" --set train.steps=2 --set train.warmup_steps=1 --set train.log_interval=1
       --set train.eval_interval=2 --set train.eval_batches=1 --set data.synthetic_bytes=20000)
"$BIN" "${short[@]}" --metrics /dev/full > "$tmp/out" 2> "$tmp/err"; rc=$?
if [ $rc -eq 0 ] || [ "$(wc -l < "$tmp/err")" -ne 1 ] || ! grep -q "metrics file /dev/full: write failed: No space left on device" "$tmp/err"; then
  echo "FAIL metrics-full: exit $rc:"; cat "$tmp/err"; fail=1
else echo "ok   metrics-full: exit $rc: $(cat "$tmp/err")"; fi
cp "$SRC/configs/tiny.pbtxt" "$tmp/cfg.pbtxt"
expect_exit2 metrics-is-config "is the config file $tmp/cfg.pbtxt, an input of this run" \
  --config "$tmp/cfg.pbtxt" --set train.steps=2 --set train.warmup_steps=1 --metrics "$tmp/./cfg.pbtxt"
cmp -s "$SRC/configs/tiny.pbtxt" "$tmp/cfg.pbtxt" || { echo "FAIL metrics-is-config: the config was changed"; fail=1; }
head -c 30000 /dev/urandom | base64 > "$tmp/text.txt"; ln "$tmp/text.txt" "$tmp/hardlink.txt"
expect_exit2 metrics-is-data "is data.path $tmp/text.txt, an input of this run" "${short[@]}" \
  --set data.source=TEXT_FILE --set data.path="$tmp/text.txt" --metrics "$tmp/hardlink.txt"
expect_exit2 metrics-exists "m.jsonl: exists and is not empty" "${short[@]}" --metrics "$tmp/m.jsonl"
"$BIN" "${short[@]}" --metrics "$tmp/m.jsonl" --overwrite > "$tmp/out" 2>&1 && [ "$(wc -l < "$tmp/m.jsonl")" -eq 2 ] \
  && echo "ok   metrics-overwrite" || { echo "FAIL metrics-overwrite:"; cat "$tmp/out"; fail=1; }

# --op-profile: the steps after the first two, op by op: a table after the
# run and JSON whose ops lie inside the step; an existing file is refused.
"$BIN" --config "$SRC/configs/switch_tiny.pbtxt" --set train.steps=5 --set train.warmup_steps=1 --set train.eval_interval=0 \
  --set train.eval_batches=1 --set data.synthetic_bytes=20000 --op-profile "$tmp/ops.json" > "$tmp/out" 2>&1 \
  || { echo "FAIL op-profile run"; cat "$tmp/out"; fail=1; }
grep -q "^op profile: 3 steps" "$tmp/out" && grep -q "^matmul_backward " "$tmp/out" \
  || { echo "FAIL op-profile: no table"; cat "$tmp/out"; fail=1; }
python3 - "$tmp/ops.json" <<'PY' && echo "ok   op-profile" || { echo "FAIL op-profile json"; cat "$tmp/ops.json"; fail=1; }
import json, sys
p = json.load(open(sys.argv[1]))
names = {o["op"] for o in p["ops"]}
assert p["steps"] == 3 and p["clock"] == "host", p
assert {"matmul_forward", "matmul_backward", "tokens_choose_logits", "adamw_update"} <= names, names
inside = sum(o["ms_per_step"] for o in p["ops"])
assert abs(inside - p["inside_ops_ms"]) < 1e-6 and 0 < inside <= p["step_ms"], (inside, p["step_ms"])
assert all(o["calls_per_step"] > 0 for o in p["ops"])
PY
expect_exit2 op-profile-exists "ops.json: exists and is not empty" "${short[@]}" --op-profile "$tmp/ops.json"
"$BIN" "${short[@]}" --set train.steps=6 --op-profile "$tmp/ops.json" --op-profile-steps 2 --overwrite > "$tmp/out" 2>&1 \
  && grep -q "^op profile: 2 steps" "$tmp/out" && echo "ok   op-profile-steps: the last 2 of 6" \
  || { echo "FAIL op-profile-steps"; cat "$tmp/out"; fail=1; }
# An unusable checkpoint directory is refused before training, not at the
# first checkpoint; an output path that is a directory too.
expect_exit2 checkpoint-dir "train.checkpoint_dir = $tmp/m.jsonl: exists and is not a directory" "${short[@]}" \
  --set train.checkpoint_interval=1 --set train.checkpoint_dir="$tmp/m.jsonl"
expect_exit2 metrics-dir "--metrics $tmp: is a directory" "${short[@]}" --metrics "$tmp"
# An integer with a leading 0 (octal to protobuf): refused.
expect_exit2 octal "--set model.d_model=064: model.d_model: '064': protobuf's text format reads" "${short[@]}" \
  --set model.d_model=064

# Too few steps to profile (the first two are not): said, no file.
"$BIN" "${short[@]}" --op-profile "$tmp/ops2.json" > "$tmp/out" 2>&1 \
  && grep -q "^op profile: no step profiled (a run's first two steps are not), .*ops2.json not written" "$tmp/out" \
  && [ ! -e "$tmp/ops2.json" ] && echo "ok   op-profile: two steps, none profiled, said" \
  || { echo "FAIL op-profile with two steps"; cat "$tmp/out"; fail=1; }

# Outputs that would destroy what a run reads or another run wrote: refused
# before any work, the files untouched.
short=(--config "$SRC/configs/tiny.pbtxt" --set train.steps=2 --set train.warmup_steps=1 --set train.eval_batches=1
       --set data.synthetic_bytes=20000 --set train.checkpoint_interval=2 --set train.checkpoint_dir="$tmp/ck")
"$BIN" "${short[@]}" > "$tmp/out" 2>&1 || { echo "FAIL: the checkpointed run"; cat "$tmp/out"; fail=1; }
cp "$tmp/ck/step_00000002/manifest.pbtxt" "$tmp/manifest.before"
expect_exit2 resume-metrics-in-checkpoint "not a metrics file" \
  --resume "$tmp/ck/step_00000002" --set train.steps=3 --metrics "$tmp/ck/step_00000002/manifest.pbtxt"
expect_exit2 metrics-in-checkpoint "inside the checkpoint $tmp/ck/step_00000002" \
  "${short[@]}" --set train.checkpoint_dir="$tmp/ck2" --metrics "$tmp/ck/step_00000002/new.jsonl" --overwrite
cmp -s "$tmp/manifest.before" "$tmp/ck/step_00000002/manifest.pbtxt" || { echo "FAIL: the checkpoint's manifest changed"; fail=1; }
expect_exit2 another-runs-checkpoints "train.checkpoint_dir = $tmp/ck: holds another run's checkpoints (1 checkpoint, the newest step_00000002)" \
  "${short[@]}"
[ -s "$tmp/ck/step_00000002/manifest.pbtxt" ] || { echo "FAIL: the other run's checkpoint is gone"; fail=1; }
"$BIN" "${short[@]}" --overwrite > "$tmp/out" 2>&1 && echo "ok   another-runs-checkpoints: --overwrite replaces them" ||
  { echo "FAIL: --overwrite over another run's checkpoints"; cat "$tmp/out"; fail=1; }
# Bad data found after the checkpoint directory was made: nothing left behind.
head -c 300 "$SRC/README.md" > "$tmp/small.txt"
expect_exit2 small-data-leaves-nothing "a corpus of 300 bytes is too small" --config "$SRC/configs/tiny.pbtxt" \
  --set data.source=TEXT_FILE --set data.path="$tmp/small.txt" --set train.checkpoint_interval=2 \
  --set train.checkpoint_dir="$tmp/made/x/y" --metrics "$tmp/made.jsonl"
[ ! -e "$tmp/made" ] && [ ! -e "$tmp/made.jsonl" ] || { echo "FAIL small-data: left $(ls -d "$tmp"/made* 2>/dev/null)"; fail=1; }
expect_exit2 op-profile-steps-alone "--op-profile-steps 3: needs --op-profile FILE" \
  --config "$SRC/configs/tiny.pbtxt" --op-profile-steps 3

[ $fail -eq 0 ] && echo "all train_switch CLI checks passed"
exit $fail
