#!/usr/bin/env bash
# scripts/gpu_collect.sh on a made-up device call's files (the runs of record
# in docs/gpu as its bench_ops and bench_attention JSON, a logs.tar.gz with
# an op profile and a PyTorch peer's JSON): each kept under the new tag and
# set beside the newest earlier record, the plot redrawn (where gnuplot is),
# the summary last; a second call that day in its own folder; a record
# already kept refused without --overwrite and replaced with it; a bad tag
# or a folder without summary.txt refused; nothing written in the source
# tree.
#   gpu_collect_test.sh SOURCE_DIR
set -u
SRC=$1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
in=$tmp/files_at
mkdir -p "$in" "$tmp/logs" "$tmp/docs/gpu"
cp "$SRC"/docs/gpu/bench_ops_2026-12-04.json "$SRC"/docs/gpu/bench_attention_2026-12-04.json "$tmp/docs/gpu/"
cp "$SRC/docs/gpu/bench_ops_2026-12-04b.json" "$in/bench_ops.json"
cp "$SRC/docs/gpu/bench_attention_2026-12-04b.json" "$in/bench_attention.json"
echo '{"steps": 5, "ops": []}' > "$tmp/logs/switch_gpu_ops.json"
echo '{"rows": [{"n": 4096}]}' > "$tmp/logs/torch_attention_long.json"
echo '{"cut off' > "$tmp/logs/torch_moe.json"
tar -C "$tmp" -czf "$in/logs.tar.gz" logs
printf 'build: prebuilt\nops: backend_ops_test (cuda): 17 passed\n' > "$in/summary.txt"
run() { SY_DOCS=$tmp/docs SY_RUNS=$tmp/runs bash "$SRC/scripts/gpu_collect.sh" "$@"; }
run "$in" 2026-12-09 > "$tmp/a.log" 2>&1 || { echo "FAIL: gpu_collect.sh rc $?"; cat "$tmp/a.log"; fail=1; }
for f in bench_ops bench_attention switch_gpu_ops torch_attention_long; do
  cmp -s "$tmp/docs/gpu/${f}_2026-12-09.json" \
    "$([ -f "$in/$f.json" ] && echo "$in/$f.json" || echo "$tmp/logs/$f.json")" ||
    { echo "FAIL: $f not kept as docs/gpu/${f}_2026-12-09.json"; fail=1; }
done
[ ! -e "$tmp/docs/gpu/torch_moe_2026-12-09.json" ] && grep -q "torch_moe.json is not JSON" "$tmp/a.log" ||
  { echo "FAIL: a cut-off JSON was kept, or not said"; fail=1; }
grep -q "^bench_ops against bench_ops_2026-12-04.json: " "$tmp/a.log" &&
  grep -q "^bench_attention against bench_attention_2026-12-04.json: " "$tmp/a.log" &&
  [ -s "$tmp/runs/2026-12-09/call1/compare_bench_ops.log" ] ||
  { echo "FAIL: no comparison with the earlier records"; cat "$tmp/a.log"; fail=1; }
[ "$(tail -1 "$tmp/a.log")" = "ops: backend_ops_test (cuda): 17 passed" ] || { echo "FAIL: the summary is not last"; fail=1; }
if command -v gnuplot > /dev/null; then
  [ "$(head -c 4 "$tmp/runs/2026-12-09/call1/attention_vs_length.png" 2> /dev/null | tail -c 3)" = PNG ] ||
    { echo "FAIL: no attention plot"; fail=1; }
fi
# A second call that day with other JSON names: its own folder, call2.
in2=$tmp/files_at2
mkdir -p "$in2" "$tmp/l2/logs"
echo '{"hidden": 0.5}' > "$tmp/l2/logs/grad_overlap.json"
tar -C "$tmp/l2" -czf "$in2/logs.tar.gz" logs
echo 'scale: grad_overlap rc 0' > "$in2/summary.txt"
(cd "$tmp" && SY_DOCS=$tmp/docs SY_RUNS=$tmp/runs bash "$SRC/scripts/gpu_collect.sh" files_at2 2026-12-09) > "$tmp/b.log" 2>&1 ||
  { echo "FAIL: a second call (FILES_AT relative) gave rc $?"; cat "$tmp/b.log"; fail=1; }
cmp -s "$tmp/docs/gpu/grad_overlap_2026-12-09.json" "$tmp/l2/logs/grad_overlap.json" &&
  [ -s "$tmp/runs/2026-12-09/call2/summary.txt" ] && [ -s "$tmp/runs/2026-12-09/call1/summary.txt" ] &&
  [ -s "$tmp/runs/2026-12-09/call1/logs/switch_gpu_ops.json" ] ||
  { echo "FAIL: the second call's records, or the first call's logs"; fail=1; }
# The same call again: refused, one line, exit 2, nothing written; with
# --overwrite, the record replaced.
echo '{"hidden": 0.7}' > "$tmp/l2/logs/grad_overlap.json"
tar -C "$tmp/l2" -czf "$in2/logs.tar.gz" logs
run "$in2" 2026-12-09 > "$tmp/c.log" 2>&1; rc=$?
[ $rc = 2 ] && [ "$(wc -l < "$tmp/c.log")" = 1 ] && grep -q "already holds grad_overlap_2026-12-09.json" "$tmp/c.log" &&
  [ ! -e "$tmp/runs/2026-12-09/call3" ] && grep -q '0.5' "$tmp/docs/gpu/grad_overlap_2026-12-09.json" ||
  { echo "FAIL: the same call again gave rc $rc:"; cat "$tmp/c.log"; fail=1; }
run "$in2" 2026-12-09 --overwrite > "$tmp/d.log" 2>&1 || { echo "FAIL: --overwrite"; cat "$tmp/d.log"; fail=1; }
grep -q '0.7' "$tmp/docs/gpu/grad_overlap_2026-12-09.json" && [ -d "$tmp/runs/2026-12-09/call3" ] &&
  cmp -s "$tmp/docs/gpu/bench_ops_2026-12-09.json" "$in/bench_ops.json" ||
  { echo "FAIL: --overwrite did not replace the record, or touched another"; fail=1; }
run "$in" 9-12-2026 > "$tmp/e.log" 2>&1; rc=$?
[ $rc = 2 ] && grep -q "TAG '9-12-2026': a date" "$tmp/e.log" || { echo "FAIL: a bad tag gave rc $rc"; fail=1; }
mkdir "$tmp/empty"
run "$tmp/empty" 2026-12-10 > "$tmp/f.log" 2>&1; rc=$?
[ $rc = 2 ] && grep -q "summary.txt: missing" "$tmp/f.log" && [ ! -e "$tmp/runs/2026-12-10" ] ||
  { echo "FAIL: a folder without summary.txt gave rc $rc"; cat "$tmp/f.log"; fail=1; }
[ $fail = 0 ] && echo "ok   gpu_collect: records kept and compared, the plot, the summary last, refusals"
exit $fail
