#!/usr/bin/env bash
# examples/route_report on checkpoints of a short switch_tiny run (8 experts
# in both blocks): a table row per MoE layer with its figures in [0, 1],
# per-expert lines whose shares add up to 1 (to the printed digits), the
# JSON report; against an
# earlier checkpoint some first choices changed, against itself none (and
# the same partition); a
# depth_tiny checkpoint gets its depth-routed block's line instead; a
# missing checkpoint, an existing --json file and a checkpoint with another
# router to compare and a run's data file moved away are refused with one
# line and exit code 2.
#   route_report_test.sh TRAIN_SWITCH ROUTE_REPORT SOURCE_DIR
set -u
BIN=$1; REPORT=$2; SRC=$3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
"$BIN" --config "$SRC/configs/switch_tiny.pbtxt" --set train.steps=40 --set train.warmup_steps=2 \
  --set train.eval_interval=0 --set train.eval_batches=1 --set train.batch=8 --set data.synthetic_bytes=50000 \
  --set train.checkpoint_interval=20 --set train.checkpoint_dir=ck > train.log 2>&1 || { cat train.log; exit 1; }
fail=0
"$REPORT" --checkpoint latest --checkpoint-dir ck --compare ck/step_00000020 --batches 2 --json r.json > a.txt 2> a.err ||
  { echo "FAIL route_report"; cat a.txt a.err; exit 1; }
cat a.txt
head -1 a.txt | grep -qE "^route_report: ck/step_00000040, 2 validation batches \(2048 tokens\), compared with ck/step_00000020$" ||
  { echo "FAIL: header"; fail=1; }
for l in 0 1; do
  row=$(grep -E "^h$l +8 " a.txt | head -1)
  echo "$row" | awk '{ for (i = 3; i <= 8; ++i) if ($i != "-" && ($i < 0 || $i > 1)) bad = 1; exit bad }' ||
    { echo "FAIL: h$l's figures outside [0, 1]: $row"; fail=1; }
  share=$(awk -v l="h$l" '$0 ~ "^" l " experts" { on = 1; next } /^h[0-9]/ { on = 0 } on && /^  e/ { s += $2 } END { printf "%.3f", s }' a.txt)
  awk -v s="$share" 'BEGIN { exit !(s > 0.995 && s < 1.005) }' || { echo "FAIL: h$l's expert shares add up to $share"; fail=1; }
done
grep -qE "^h0 +8 .* - +[0-9.]+ +[0-9.]+$" a.txt || { echo "FAIL: h0 has a previous layer or no change figures"; fail=1; }
changed=$(awk '/^h1 +8 / { print $7 }' a.txt)
awk -v c="$changed" 'BEGIN { exit !(c > 0) }' || { echo "FAIL: nothing changed between steps 20 and 40 ($changed)"; fail=1; }
python3 -c "
import json; r = json.load(open('r.json'))
assert r['tokens'] == 2048 and r['compare'] == 'ck/step_00000020', r
assert [l['layer'] for l in r['layers']] == [0, 1]
assert 'by_previous' not in r['layers'][0] and 0 <= r['layers'][1]['by_previous'] <= 1
assert abs(sum(e['share'] for e in r['layers'][1]['experts']) - 1) < 1e-9
" || { echo "FAIL: the JSON report"; fail=1; }
"$REPORT" --checkpoint latest --checkpoint-dir ck --compare latest --batches 1 > self.txt 2>&1 || { echo "FAIL: self compare"; fail=1; }
[ "$(awk '/^h[01] +8 / { print $7, $8 }' self.txt | sort -u)" = "0.000 1.000" ] ||
  { echo "FAIL: a checkpoint against itself changed, or is not its own partition"; cat self.txt; fail=1; }
"$REPORT" --checkpoint ck/step_99 > m.txt 2> m.err; rc=$?
[ $rc = 2 ] && [ "$(wc -l < m.err)" = 1 ] && grep -q "ck/step_99" m.err || { echo "FAIL: missing checkpoint (exit $rc)"; cat m.err; fail=1; }
"$REPORT" --checkpoint latest --checkpoint-dir ck --json r.json > o.txt 2> o.err; rc=$?
[ $rc = 2 ] && grep -q -- "--json r.json: exists and is not empty" o.err || { echo "FAIL: existing --json written over (exit $rc)"; cat o.err; fail=1; }
"$BIN" --config "$SRC/configs/depth_tiny.pbtxt" --set train.steps=20 --set train.warmup_steps=2 \
  --set train.eval_interval=0 --set train.eval_batches=1 --set train.batch=8 --set data.synthetic_bytes=50000 \
  --set train.checkpoint_interval=20 --set train.checkpoint_dir=dk > depth.log 2>&1 || { cat depth.log; exit 1; }
"$REPORT" --checkpoint latest --checkpoint-dir dk --batches 1 --json d.json > d.txt 2>&1 || { echo "FAIL depth report"; cat d.txt; exit 1; }
cat d.txt
grep -qE "^h1 +[0-9.]+ +[0-9.]+ +[0-9.]+ +-$" d.txt || { echo "FAIL: no h1 depth row"; fail=1; }
grep -qE "^  h1 processed most \(share processed\):" d.txt || { echo "FAIL: no processed-most line"; fail=1; }
python3 -c "
import json; r = json.load(open('d.json'))
assert r['layers'] == [] and [d['layer'] for d in r['depth']] == [1], r
assert 0 <= r['depth'][0]['processed'] <= 1
" || { echo "FAIL: the depth JSON report"; fail=1; }
# Another router over the same shapes: nothing to compare, refused.
"$BIN" --config "$SRC/configs/switch_tiny.pbtxt" --set moe.router=EXPERT_CHOICE --set moe.bias_balance_rate=0 --set train.steps=20 \
  --set train.warmup_steps=2 --set train.eval_interval=0 --set train.eval_batches=1 --set train.batch=8 \
  --set data.synthetic_bytes=50000 --set train.checkpoint_interval=20 --set train.checkpoint_dir=ek > ek.log 2>&1 ||
  { cat ek.log; exit 1; }
"$REPORT" --checkpoint latest --checkpoint-dir ck --compare ek/step_00000020 > x.txt 2> x.err; rc=$?
[ $rc = 2 ] && [ "$(wc -l < x.err)" = 1 ] && grep -q "^error: ek/step_00000020: moe.router EXPERT_CHOICE, MoE layers \[\], depth-routed blocks \[\] where .* has moe.router TOKENS_CHOOSE, MoE layers \[0,1\]" x.err ||
  { echo "FAIL: a different router compared (exit $rc)"; cat x.err; fail=1; }
# The report is not written into a checkpoint (its manifest replaced).
cp ck/step_00000020/manifest.pbtxt m.keep
"$REPORT" --checkpoint ck/step_00000020 --json ck/step_00000020/manifest.pbtxt --overwrite > x.txt 2> x.err; rc=$?
[ $rc = 2 ] && grep -q "^error: --json ck/step_00000020/manifest.pbtxt: inside the checkpoint" x.err &&
  cmp -s m.keep ck/step_00000020/manifest.pbtxt || { echo "FAIL: --json into the checkpoint (exit $rc)"; cat x.err; fail=1; }
# The report reads the run's own data as its checkpoint names it: a text
# file moved since training is refused in one line naming data.path.
python3 -c "import random; r = random.Random(1); print(''.join(r.choice('abcd efgh\\n') for _ in range(20000)))" > text.txt
"$BIN" --config "$SRC/configs/switch_tiny.pbtxt" --set train.steps=2 --set train.warmup_steps=0 \
  --set data.source=TEXT_FILE --set data.path=text.txt --set train.eval_interval=0 --set train.eval_batches=1 \
  --set train.checkpoint_interval=2 --set train.checkpoint_dir=tk > tk.log 2>&1 || { cat tk.log; exit 1; }
mv text.txt moved.txt
"$REPORT" --checkpoint tk/step_00000002 > d.txt 2> d.err; rc=$?
[ $rc = 2 ] && [ "$(wc -l < d.err)" = 1 ] &&
  grep -q '^error: tk/step_00000002/manifest.pbtxt: .*data.path = "text.txt": no such file' d.err ||
  { echo "FAIL: a moved data file (exit $rc)"; cat d.err; fail=1; }
[ $fail -eq 0 ] && echo "ok   route_report: per layer and expert, depth-routed blocks, JSON, compared runs, refusals"
exit $fail
