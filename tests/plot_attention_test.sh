#!/usr/bin/env bash
# scripts/bench/plot_attention.py on the GPU runs of record (docs/gpu): a PNG
# for each pass, and one line with a non-zero exit for what is not
# bench_attention's JSON. Without gnuplot the test is skipped (exit 77).
#   plot_attention_test.sh SOURCE_DIR
set -u
SRC=$1
command -v gnuplot > /dev/null || { echo "SKIP: gnuplot not found (Debian: gnuplot-nox)"; exit 77; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
n=0
for f in "$SRC"/docs/gpu/bench_attention_*.json; do
  for pass in fwd+bwd fwd; do
    out=$tmp/$(basename "$f" .json)_$pass.png
    python3 "$SRC/scripts/bench/plot_attention.py" "$f" "$out" --pass "$pass" > "$tmp/p.log" 2>&1 ||
      { echo "FAIL $f $pass:"; cat "$tmp/p.log"; fail=1; continue; }
    # (the runs of record have all seven curves, SDPA's among them, at 4k, 16k and 64k)
    grep -q "^wrote $out: 7 curves over n = 4096, 16384, 65536$" "$tmp/p.log" ||
      { echo "FAIL $f $pass: $(cat "$tmp/p.log")"; fail=1; continue; }
    if [ "$(head -c 4 "$out" | tail -c 3)" != "PNG" ] || [ "$(stat -c %s "$out")" -lt 20000 ]; then
      echo "FAIL $f $pass: not a full PNG ($(stat -c %s "$out") bytes)"; fail=1; continue
    fi
    n=$((n + 1))
  done
done
[ $n -ge 2 ] || { echo "FAIL: $n plots (no docs/gpu/bench_attention_*.json?)"; fail=1; }
# Not bench_attention's JSON: one line, exit 1, no PNG.
echo '{"rows": []}' > "$tmp/empty.json"
echo 'not json' > "$tmp/bad.json"
for f in empty bad; do
  python3 "$SRC/scripts/bench/plot_attention.py" "$tmp/$f.json" "$tmp/$f.png" > "$tmp/$f.log" 2>&1; rc=$?
  [ $rc = 1 ] && [ "$(wc -l < "$tmp/$f.log")" = 1 ] && grep -q "^plot_attention: .*$f.json: " "$tmp/$f.log" && [ ! -e "$tmp/$f.png" ] ||
    { echo "FAIL: $f.json gave rc $rc:"; cat "$tmp/$f.log"; fail=1; }
done
[ $fail = 0 ] && echo "ok   plot_attention: $n plots of the runs of record; refusals"
exit $fail
