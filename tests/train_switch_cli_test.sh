#!/usr/bin/env bash
# train_switch end to end: a short run writes its metrics; bad input exits 2
# with one line that names the file, field and value.
set -u
BIN=$1; SRC=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
expect_exit2() {  # name, expected-substring, args...
  local name=$1 needle=$2; shift 2
  "$BIN" "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
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

[ $fail -eq 0 ] && echo "all train_switch CLI checks passed"
exit $fail
