#!/usr/bin/env bash
# scripts/bench/compare_runs.py on made-up runs whose answers are known: a
# row twice as slow is listed first with 2.000x, an unchanged one is left out
# by --min-change, rows in one run only and rows timed in neither are named,
# a profile's part that moved is listed; bad input is one line and exit 2.
set -u
SRC=$1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/before.json" <<'JSON'
{"device": "GPU A", "ops": [
 {"op": "gating_top2", "shape": "65536x64", "seconds": 2e-5, "wrong": 0},
 {"op": "adamw", "shape": "67108864", "seconds": 4e-4, "wrong": 0},
 {"op": "layernorm_forward", "shape": "16384x1024", "seconds": 1e-4, "wrong": 0},
 {"op": "old_row", "shape": "1x1", "seconds": 1e-3, "wrong": 0},
 {"op": "was_broken", "shape": "2x2", "seconds": 0, "wrong": -1},
 {"op": "never_ran", "shape": "3x3", "seconds": 0, "wrong": -1}],
 "profiles": {"moe": {"ops": [{"op": "expert_ffn_forward", "ms_per_step": 2.0}],
                      "parts": [{"part": "expert_ffn_forward > activation", "ms_per_step": 0.5}]}}}
JSON
cat > "$tmp/now.json" <<'JSON'
{"device": "GPU B", "ops": [
 {"op": "gating_top2", "shape": "65536x64", "seconds": 4e-5, "wrong": 0},
 {"op": "adamw", "shape": "67108864", "seconds": 4.04e-4, "wrong": 0},
 {"op": "layernorm_forward", "shape": "16384x1024", "seconds": 2.5e-5, "wrong": 3},
 {"op": "new_row", "shape": "1x1", "seconds": 1e-3, "wrong": 0},
 {"op": "was_broken", "shape": "2x2", "seconds": 1e-3, "wrong": 0},
 {"op": "never_ran", "shape": "3x3", "seconds": 0, "wrong": -1}],
 "profiles": {"moe": {"ops": [{"op": "expert_ffn_forward", "ms_per_step": 1.5}],
                      "parts": [{"part": "expert_ffn_forward > activation", "ms_per_step": 0.5}]}}}
JSON
fail=0
python3 "$SRC/scripts/bench/compare_runs.py" "$tmp/before.json" "$tmp/now.json" --min-change 0.05 > "$tmp/out" 2>&1 ||
  { echo "FAIL: exit $? on good input"; cat "$tmp/out"; exit 1; }
want() {  # a line matching $1 (extended regex), else FAIL $2
  if grep -qE "$1" "$tmp/out"; then echo "ok   $2"; else echo "FAIL $2 (no line matching: $1)"; fail=1; fi
}
wont() {
  if grep -qE "$1" "$tmp/out"; then echo "FAIL $2 (a line matches: $1)"; fail=1; else echo "ok   $2"; fi
}
want '^devices differ \(GPU A / GPU B\)' "different devices said"
# (sorted by how far each moved: the row timed now only first, then 4x faster, then 2x slower)
order=$(grep -E '^(was_broken|gating_top2|layernorm_forward) ' "$tmp/out" | cut -d' ' -f1 | paste -sd, -)
[ "$order" = "was_broken,layernorm_forward,gating_top2" ] && echo "ok   order" || { echo "FAIL order: $order"; fail=1; }
want '^was_broken 2x2 +not timed +1\.0000 +- *$' "a row timed now only"
want '^gating_top2 65536x64 +0\.0200 +0\.0400 +2\.000x$' "a row twice as slow"
want '^layernorm_forward 16384x1024 +0\.1000 +0\.0250 +0\.250x  \(3 wrong now\)$' "a faster row with wrong elements"
wont '^adamw ' "a row that moved 1% left out"
want '^3 of 4 rows timed in both runs listed \(moved by more than 5%\)$' "the count"
want '^only before \(1\): old_row 1x1$' "a row before only"
want '^only now \(1\): new_row 1x1$' "a row now only"
want '^timed in neither \(1\): never_ran 3x3$' "a row timed in neither"
want '^  moe: expert_ffn_forward: 2\.0000 -> 1\.5000 \(0\.750x\)$' "a profile op that moved"
wont 'activation' "a profile part that did not move left out"
# Two op profiles (train_switch --op-profile): the step, ops and parts by name.
cat > "$tmp/prof_before.json" <<'JSON'
{"clock": "cuda events", "step_ms": 80.0, "steps": 5, "inside_ops_ms": 75.0,
 "ops": [{"op": "adamw_update", "ms_per_step": 13.5}, {"op": "layernorm_backward", "ms_per_step": 3.0}],
 "parts": [{"part": "expert_ffn_forward > activation", "ms_per_step": 0.5}]}
JSON
cat > "$tmp/prof_now.json" <<'JSON'
{"clock": "cuda events", "step_ms": 60.0, "steps": 5, "inside_ops_ms": 55.0,
 "ops": [{"op": "adamw_update", "ms_per_step": 13.4}, {"op": "layernorm_backward", "ms_per_step": 1.0}],
 "parts": []}
JSON
python3 "$SRC/scripts/bench/compare_runs.py" "$tmp/prof_before.json" "$tmp/prof_now.json" --min-change 0.05 > "$tmp/out" 2>&1 ||
  { echo "FAIL: exit $? on two op profiles"; cat "$tmp/out"; exit 1; }
want '^op profile: before ' "op profiles recognised"
want '^layernorm_backward +3\.0000 +1\.0000 +0\.333x$' "a profiled op 3x faster"
want '^\(the step\) +80\.0000 +60\.0000 +0\.750x$' "the step"
wont '^adamw_update ' "an op that moved under 5% left out"
want '^only before \(1\): expert_ffn_forward > activation$' "a part gone"
# Attention variants: several rows a shape, kept apart by the variant's name
# (the note up to its colon, after any "queued ... us; "); a profile part at
# 0 ms before is no division by zero.
cat > "$tmp/var_before.json" <<'JSON'
{"device": "GPU A", "ops": [
 {"op": "attention_variant_fwd_bwd_bf16", "shape": "B4 T4096 H8 D64", "seconds": 1e-3, "wrong": 0, "note": "fwd_qreg: Q in registers"},
 {"op": "attention_variant_fwd_bwd_bf16", "shape": "B4 T4096 H8 D64", "seconds": 2e-3, "wrong": 0, "note": "queued 9.0 us; bwd_4x32: two row tiles"}],
 "profiles": {"moe": {"ops": [], "parts": [{"part": "expert_ffn_forward > activation", "ms_per_step": 0.0}]}}}
JSON
cat > "$tmp/var_now.json" <<'JSON'
{"device": "GPU A", "ops": [
 {"op": "attention_variant_fwd_bwd_bf16", "shape": "B4 T4096 H8 D64", "seconds": 1e-3, "wrong": 0, "note": "fwd_qreg: Q in registers"},
 {"op": "attention_variant_fwd_bwd_bf16", "shape": "B4 T4096 H8 D64", "seconds": 1e-3, "wrong": 0, "note": "bwd_4x32: two row tiles"}],
 "profiles": {"moe": {"ops": [], "parts": [{"part": "expert_ffn_forward > activation", "ms_per_step": 0.5}]}}}
JSON
python3 "$SRC/scripts/bench/compare_runs.py" "$tmp/var_before.json" "$tmp/var_now.json" --min-change 0.05 > "$tmp/out" 2>&1 ||
  { echo "FAIL: exit $? on variant rows"; cat "$tmp/out"; exit 1; }
want '^attention_variant_fwd_bwd_bf16 B4 T4096 H8 D64 bwd_4x32 +2\.0000 +1\.0000 +0\.500x$' "a variant kept apart from its shape's others"
want '^1 of 2 rows timed in both runs listed' "both variants counted"
# Bad input: one line on stderr, exit 2.
echo '{"rows": [{"op": "dense causal", "pass": "fwd", "dtype": "bf16", "n": 4096, "seconds": 1e-3}]}' > "$tmp/attn.json"
echo '{"ops": [{"seconds": 1}]}' > "$tmp/noop.json"
for args in "$tmp/before.json $tmp/missing.json" "$tmp/before.json $tmp/attn.json" "$tmp/noop.json $tmp/now.json" \
            "$tmp/before.json $tmp/now.json --min-change -1"; do
  # shellcheck disable=SC2086
  python3 "$SRC/scripts/bench/compare_runs.py" $args > /dev/null 2> "$tmp/err"
  rc=$?
  if [ "$rc" = 2 ] && [ "$(wc -l < "$tmp/err")" = 1 ]; then echo "ok   refused: $(cat "$tmp/err")"
  else echo "FAIL: $args: exit $rc, stderr:"; cat "$tmp/err"; fail=1; fi
done
exit $fail
