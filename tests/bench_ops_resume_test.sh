#!/usr/bin/env bash
# bench_ops --resume (gpu_check.sh's rerun past a kernel fault, in a new
# process): an earlier run's JSON with a device error planted in a late row
# (after the gating rows, whose route the next rows' set-up reads) keeps the
# rows before it as they were, leaves that row out with its note marked, runs
# the rest, and writes as many rows as the run it resumed.
set -u
BIN=$1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$BIN" --device cpu --quick --iters 1 --json "$tmp/first.json" > "$tmp/first.log" 2>&1 ||
  { echo "FAIL: the first run: exit $?"; tail -5 "$tmp/first.log"; exit 1; }
python3 - "$tmp/first.json" "$tmp/fault.json" <<'PY' || exit 1
import json, sys
j = json.load(open(sys.argv[1]))
names = [r["op"] for r in j["ops"]]
i = names.index("moe_layer_fwd_bwd")  # after gating_top2_slots and router_backward
j["ops"][i]["note"] = "ops/cuda/x.cu:1: CUDA: planted: an illegal memory access was encountered"
# The rows after the fault carry a time no run measures: a resume that
# copied them rather than running them again shows it.
for r in j["ops"][i + 1:]:
    r["seconds"] = 12345.0
json.dump(j, open(sys.argv[2], "w"))
PY
"$BIN" --device cpu --quick --iters 1 --resume "$tmp/fault.json" --json "$tmp/resumed.json" > "$tmp/resumed.log" 2>&1 ||
  { echo "FAIL: the resumed run: exit $?"; tail -5 "$tmp/resumed.log"; exit 1; }
python3 - "$tmp/first.json" "$tmp/resumed.json" <<'PY'
import json, sys
a, b = (json.load(open(p))["ops"] for p in sys.argv[1:])
fail = []
if len(b) != len(a):
    fail.append(f"{len(b)} rows after the resume, {len(a)} before")
i = [r["op"] for r in a].index("moe_layer_fwd_bwd")
if [r["seconds"] for r in b[:i]] != [r["seconds"] for r in a[:i]]:
    fail.append("the rows before the fault were not kept as they were")
if i < len(b) and not b[i]["note"].startswith("skipped by --resume, after: "):
    fail.append(f"the faulting row's note: {b[i]['note'][:80]}")
copied = [r["op"] for r in b[i + 1:] if r["seconds"] == 12345.0]
if copied:
    fail.append(f"rows after the fault copied from the resumed file, not run: {', '.join(copied[:3])}")
ran = [r["op"] for r in b[i + 1:] if r["seconds"] > 0]
if len(ran) < len([r for r in a[i + 1:] if r["seconds"] > 0]):
    fail.append(f"rows after the fault not run again: {len(ran)} timed")
print("\n".join("FAIL " + f for f in fail) or f"ok   {len(b)} rows: {i} kept, 1 left out, {len(ran)} run again")
sys.exit(1 if fail else 0)
PY
