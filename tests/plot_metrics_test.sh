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
# What real runs leave (it crashed or drew lines backwards on these): a
# resumed run's repeated steps (the later line counts), a diverged step's
# null loss, a partial last line (a run still writing).
python3 - "$tmp/switch_tiny.jsonl" "$tmp/odd.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = rows + [dict(r, loss=r["loss"] + 1) for r in rows[len(rows) // 2:]]  # a resume from the middle
out.append(dict(rows[-1], step=rows[-1]["step"] + 2, loss=None))
out.append({"step": rows[0]["step"], "eval_only": True, "val_loss": 9.0})  # (train_switch --eval-only's line)
with open(sys.argv[2], "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in out) + json.dumps(rows[0])[:40])
PY
if python3 "$SRC/scripts/plot_metrics.py" "$tmp/odd.jsonl" "$tmp/odd.png" --title odd > "$tmp/out" 2> "$tmp/err" \
   && grep -q "a partial last line, left out" "$tmp/err" && [ "$(stat -c %s "$tmp/odd.png")" -gt 20000 ]; then
  echo "ok   resumed, diverged, partial: $(cat "$tmp/out")"
else
  echo "FAIL: the odd metrics file:"; cat "$tmp/out" "$tmp/err"; fail=1
fi
python3 - "$SRC/scripts" "$tmp/odd.jsonl" "$tmp/switch_tiny.jsonl" <<'PY' || { echo "FAIL: read() of repeated steps"; fail=1; }
import sys
sys.path.insert(0, sys.argv[1])
import plot_metrics
rows, first = plot_metrics.read(sys.argv[2]), plot_metrics.read(sys.argv[3])
steps = [r["step"] for r in rows]
assert steps == sorted(set(steps)), steps
full = [r for r in rows if r["loss"] is not None]
assert full[-1]["loss"] == first[-1]["loss"] + 1, "the resumed run's line of a step counts"
assert full[0]["loss"] == first[0]["loss"], "an eval-only line does not replace a training step's"
PY
if python3 "$SRC/scripts/plot_metrics.py" "$tmp/missing.jsonl" 2> "$tmp/err"; then
  echo "FAIL: a missing file accepted"; fail=1
elif [ "$(wc -l < "$tmp/err")" -ne 1 ]; then echo "FAIL: want one line:"; cat "$tmp/err"; fail=1
else echo "ok   missing file: $(cat "$tmp/err")"; fi
exit $fail
