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
[ $fail -eq 0 ] && echo "all train_switch CLI checks passed"
exit $fail
