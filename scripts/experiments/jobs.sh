# Sourced by the experiment scripts: their runs in the background, at most
# $JOBS at once (default 2: one thread a run, one run a core), and a wait
# that fails when a run did. (A bare `wait` returns 0 whatever its jobs
# returned, and xargs' `bash -c` command strings broke on a path with a space:
# a failed run went unnoticed and the CSV was drawn from what was left.)
#
#   run_bg CMD ARGS...   CMD in the background, once a slot is free
#   wait_all             waits for every job run_bg started; if any failed,
#                        names each (its exit status and command) and
#                        returns 1, after all have ended
#   train_run DIR NAME ARGS...
#       ${BIN:-build/bin/train_switch} ARGS, metrics to DIR/NAME.jsonl.part,
#       renamed to DIR/NAME.jsonl when the run ends well (so a run whose
#       .jsonl exists is a finished one); its output in ${LOGDIR:-DIR}/NAME.log.
#       Prints "done NAME", or "FAILED NAME" with the log's last lines and
#       returns 1.
#
# Run lists hold "NAME|ARGS" strings whose ARGS are split at spaces on
# purpose (train_run ... ${r#*|}): a path inside ARGS must have none, while
# DIR and NAME may.

# The failures file is named by this shell's PID ($$ is the same in its
# subshells), so a job can append to it and wait_all read it.
SY_JOB_FAILURES="${TMPDIR:-/tmp}/switchyard-jobs.$$"
rm -f "$SY_JOB_FAILURES"

run_bg() {
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-2}" ]; do wait -n || true; done
  { "$@" || echo "exit $?: $*" >> "$SY_JOB_FAILURES"; } &
}

wait_all() {
  wait
  [ -s "$SY_JOB_FAILURES" ] || return 0
  echo "failed:"
  sed 's/^/  /' "$SY_JOB_FAILURES"
  rm -f "$SY_JOB_FAILURES"
  return 1
}

train_run() {
  local dir=$1 name=$2 log="${LOGDIR:-$1}/$2.log"
  shift 2
  if OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} "${BIN:-build/bin/train_switch}" "$@" \
       --metrics "$dir/$name.jsonl.part" --overwrite > "$log" 2>&1; then
    mv "$dir/$name.jsonl.part" "$dir/$name.jsonl" || return 1  # (set -e does not act inside run_bg's ||)
    echo "done $name"
  else
    local rc=$?
    echo "FAILED $name (exit $rc; log: $log)"
    tail -3 "$log"
    return 1
  fi
}
