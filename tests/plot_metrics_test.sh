#!/usr/bin/env bash
# scripts/plot_metrics.py end to end: 20-step runs of a routed model of each
# kind (MoE, adaptive depth, routed attention) write metrics, and each becomes
# a PNG page. Without gnuplot the test is skipped (exit 77, ctest's
# SKIP_RETURN_CODE).
set -u
BIN=$1; SRC=$2
if ! command -v gnuplot > /dev/null; then
  echo "SKIP: gnuplot not found (Debian: gnuplot-nox, which scripts/setup.sh installs)"
  exit 77
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
short=(--set train.steps=20 --set train.batch=4 --set train.warmup_steps=2 --set train.log_interval=2
       --set train.eval_interval=10 --set train.eval_batches=1 --set data.synthetic_bytes=50000)
for cfg in switch_tiny depth_tiny routed_copy; do
  if ! "$BIN" --config "$SRC/configs/$cfg.pbtxt" "${short[@]}" --metrics "$tmp/$cfg.jsonl" > "$tmp/$cfg.log" 2>&1; then
    echo "FAIL $cfg: train_switch"; tail -3 "$tmp/$cfg.log"; fail=1; continue
  fi
  if ! python3 "$SRC/scripts/plot_metrics.py" "$tmp/$cfg.jsonl" "$tmp/$cfg.png"; then
    echo "FAIL $cfg: plot_metrics.py"; fail=1; continue
  fi
  # A PNG of some size, not an empty page.
  if [ "$(head -c 4 "$tmp/$cfg.png" | tail -c 3)" != "PNG" ] || [ "$(stat -c %s "$tmp/$cfg.png")" -lt 20000 ]; then
    echo "FAIL $cfg: $tmp/$cfg.png is not a full PNG page ($(stat -c %s "$tmp/$cfg.png") bytes)"; fail=1; continue
  fi
  echo "ok   $cfg: $(stat -c %s "$tmp/$cfg.png") bytes"
done
# Not a metrics file: one line, non-zero exit.
echo '{"load_stats": {}}' > "$tmp/none.jsonl"
if python3 "$SRC/scripts/plot_metrics.py" "$tmp/none.jsonl" "$tmp/none.png" 2> "$tmp/err"; then
  echo "FAIL: a file without metrics lines was accepted"; fail=1
elif [ "$(wc -l < "$tmp/err")" -ne 1 ]; then
  echo "FAIL: want one line on stderr:"; cat "$tmp/err"; fail=1
else
  echo "ok   no metrics: $(cat "$tmp/err")"
fi
exit $fail
