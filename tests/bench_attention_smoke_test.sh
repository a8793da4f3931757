#!/usr/bin/env bash
# bench_attention on the CPU at its --quick shapes (timings mean nothing):
# every row runs, the table comes last, and PyTorch SDPA's rows are read from
# a --sdpa file at both kinds of shape: one sequence of n (the "x SDPA"
# column) and a batch of a routed row's clusters (the "dense B<k> T<n/k>"
# floor rows, and the line that sets each routed row against its floor).
set -u
BIN=$1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/sdpa.json" <<'JSON'
{"device": "made up", "ops": [
 {"op": "sdpa_fwd_bf16", "shape": "B1 T256 H2 D64", "seconds": 0.002},
 {"op": "sdpa_fwd_bwd_bf16", "shape": "B1 T256 H2 D64", "seconds": 0.006},
 {"op": "sdpa_fwd_bf16", "shape": "B16 T16 H2 D64", "seconds": 0.0001},
 {"op": "sdpa_fwd_bwd_bf16", "shape": "B16 T16 H2 D64", "seconds": 0.0003},
 {"op": "sdpa_fwd_bf16", "shape": "B16 T16 H8 D64", "seconds": 0.5}]}
JSON
if ! "$BIN" --device cpu --quick --iters 2 --warmup 1 --sdpa "$tmp/sdpa.json" --json "$tmp/out.json" > "$tmp/log" 2>&1; then
  echo "FAIL: bench_attention exited non-zero"; tail -5 "$tmp/log"; exit 1
fi
# (the JSON is rewritten after every length, complete: true only at the end)
python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get("complete") is True else 1)' "$tmp/out.json" &&
  echo "ok   the JSON says it is complete" || { echo "FAIL the JSON does not say it is complete"; exit 1; }
fail=0
want() {  # a line of the output that matches $1 (an extended regex), or FAIL $2
  if grep -qE "$1" "$tmp/log"; then echo "ok   $2"; else echo "FAIL $2 (no line matching: $1)"; fail=1; fi
}
want '^SDPA \(PyTorch\) +fwd\+bwd +bf16 +256 +6\.000 ' "SDPA's one-sequence row"
want '^SDPA B16 T16 +fwd +bf16 +256 +0\.100 ' "SDPA's batched row (its H 2 entry, not the H 8 one)"
want '^dense B16 T16 +fwd\+bwd +f32 +256 +[0-9.]+ .* [0-9.]+x +- +- +- +routed k=16.s floor' "our floor row, with x SDPA"
want '^routed causal k=16 fwd\+bwd f32 n=256: attention part [0-9.]+ ms, [0-9.]+x its floor \(dense B16 T16: ' \
  "a routed row against its floor"
want '^routed causal k=256 +fwd\+bwd +f32 +512 ' "the last n's rows"
# The floor rows' batches, listed for torch_attention.py --shapes (k = sqrt(n) and 256, n / k >= 16).
shapes=$("$BIN" --list-floor-shapes)
[ "$shapes" = "64x64,256x16,128x128,256x64,256x256" ] && echo "ok   floor shapes $shapes" ||
  { echo "FAIL floor shapes: $shapes"; fail=1; }
python3 - "$tmp/out.json" <<'PY' || fail=1
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
ops = {r["op"] for r in rows}
missing = {"dense causal", "dense B16 T16", "SDPA B16 T16", "routed causal k=16"} - ops
print("FAIL json: no rows " + ", ".join(sorted(missing)) if missing else "ok   json rows")
sys.exit(1 if missing else 0)
PY
exit $fail
