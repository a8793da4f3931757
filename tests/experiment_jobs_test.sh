#!/usr/bin/env bash
# scripts/experiments/jobs.sh, the experiment scripts' background runs: a
# failed job fails wait_all (after every job has ended) and is named; a
# passing set passes; train_run keeps a run's metrics only when it ends well,
# under a directory and a name with spaces (the xargs command strings it
# replaced broke on them).
#   experiment_jobs_test.sh SOURCE_DIR
set -u
SRC=$1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sy jobs.XXXXXX"); trap 'rm -rf "$tmp"' EXIT
cd "$SRC"
source scripts/experiments/jobs.sh
fail=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fail=1; }

job() { sleep "$1"; echo "$3" >> "$tmp/ended"; return "$2"; }
run_bg job 0.3 0 slow; run_bg job 0.1 3 failing; run_bg job 0.2 0 other
wait_all > "$tmp/out"; rc=$?; out=$(cat "$tmp/out")  # (not in $(...): a subshell cannot wait for these jobs)
[ $rc -ne 0 ] && grep -q "exit 3: job 0.1 3 failing" <<<"$out" && ok "a failed job fails wait_all and is named" \
  || bad "wait_all returned $rc: $out"
[ "$(wc -l < "$tmp/ended")" = 3 ] && ok "wait_all waited for every job" || bad "$(wc -l < "$tmp/ended") of 3 jobs ended"
run_bg job 0.1 0 a; run_bg job 0.1 0 b
wait_all && ok "a passing set passes (the failure before is not carried over)" || bad "a passing set failed"

# train_run with a stand-in binary: writes its --metrics file and exits as told.
cat > "$tmp/fake" <<'FAKE'
#!/usr/bin/env bash
while [ $# -gt 0 ]; do [ "$1" = --metrics ] && echo '{"step": 1}' > "$2"; shift; done
echo "fake run"; exit "${FAKE_RC:-0}"
FAKE
chmod +x "$tmp/fake"
dir="$tmp/runs dir"; mkdir -p "$dir"
BIN=$tmp/fake run_bg train_run "$dir" "good run" --set a=1
BIN=$tmp/fake FAKE_RC=2 run_bg train_run "$dir" "bad run" --set a=1
wait_all > "$tmp/out"; rc=$?; out=$(cat "$tmp/out")  # (not in $(...): a subshell cannot wait for these jobs)
[ -f "$dir/good run.jsonl" ] && [ ! -e "$dir/good run.jsonl.part" ] && ok "a run that ends well keeps NAME.jsonl" \
  || bad "good run: $(ls "$dir")"
[ ! -e "$dir/bad run.jsonl" ] && [ $rc -ne 0 ] && grep -q "train_run $dir bad run" <<<"$out" \
  && ok "a failed run leaves no NAME.jsonl and fails wait_all" || bad "bad run: rc $rc, $(ls "$dir"): $out"
exit $fail
