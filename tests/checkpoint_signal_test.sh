#!/usr/bin/env bash
# SIGTERM and SIGINT: the step in progress finishes (an evaluation in progress
# is cut short), a checkpoint is written,
# the process exits with 4 and the metrics file ends on a complete line whose
# step is the checkpoint's; the run then resumes from it.
#  - SIGINT to one process: exit code 4.
#  - SIGTERM to mpirun -np 2 (EP=2): mpirun forwards it to both ranks, which
#    agree on the step to stop after (an all-reduce of the flag at every step
#    boundary), so neither waits on the other. OpenMPI 4 sends the ranks
#    SIGTERM odls_base_sigkill_timeout seconds after mpirun gets it and
#    SIGKILL as long again after that (default 1 s): the option gives them
#    the time to write the checkpoint. mpirun's own exit status is 1 after a
#    signal it received.
#  - SIGTERM to rank 1 of mpirun -np 2 alone: both ranks stop after the same
#    step and exit 4, and so does mpirun.
#   checkpoint_signal_test.sh TRAIN_SWITCH SOURCE_DIR MPIRUN
set -u
BIN=$1; SRC=$2; MPIRUN=$3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
args=(--config "$SRC/configs/switch_tiny.pbtxt" --set train.steps=100000 --set train.warmup_steps=2
      --set train.log_interval=5 --set train.eval_interval=0 --set train.batch=4 --set data.synthetic_bytes=50000)
fail=0
# Starts a run in the background; waits for its metrics to reach 2 lines.
start() {  # name, command...
  local name=$1; shift
  "$@" --set train.checkpoint_dir="$name.ckpt" --metrics "$name.jsonl" > "$name.log" 2>&1 &
  job=$!
  for _ in $(seq 1 600); do
    [ "$(cat "$name.jsonl" 2>/dev/null | wc -l)" -ge 2 ] && return 0
    kill -0 $job 2>/dev/null || break
    sleep 0.1
  done
  echo "FAIL $name: did not start"; cat "$name.log"; fail=1; kill -9 $job 2>/dev/null; return 1
}
# check NAME RC WANT_RC SIGNAL
check() {
  local name=$1 rc=$2 want=$3 sig=$4
  [ "$rc" = "$want" ] || { echo "FAIL $name: exit $rc, want $want"; cat "$name.log"; fail=1; return; }
  local line step latest last
  # Not anchored: under mpirun rank 0's stderr line can land inside another
  # rank's stdout line in the merged log.
  line=$(grep -o "stopped by $sig after step [0-9]*: checkpoint [^ ]*" "$name.log" | head -1)
  [ -n "$line" ] || { echo "FAIL $name: no 'stopped by $sig' line"; cat "$name.log"; fail=1; return; }
  step=$(sed -E 's/.*after step ([0-9]+):.*/\1/' <<<"$line")
  latest=$(cat "$name.ckpt/latest")
  [ "$latest" = "$(printf 'step_%08d' "$step")" ] || { echo "FAIL $name: latest $latest, stopped after $step"; fail=1; return; }
  [ "$(tail -c 1 "$name.jsonl" | od -An -c | tr -d ' ')" = '\n' ] || { echo "FAIL $name: metrics end mid-line"; fail=1; return; }
  last=$(tail -1 "$name.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["step"])') \
    || { echo "FAIL $name: last metrics line is not JSON"; fail=1; return; }
  [ "$last" = "$step" ] || { echo "FAIL $name: last metrics step $last, stopped after $step"; fail=1; return; }
  python3 "$SRC/scripts/check_checkpoint.py" "$name.ckpt/$latest" --quiet || { echo "FAIL $name: checkpoint check"; fail=1; return; }
  echo "ok   $name: $line; metrics end on step $last"
}

start sigint "$BIN" "${args[@]}" && { kill -INT $job; wait $job; check sigint $? 4 SIGINT; }

# A new run without a checkpoint interval where another run's checkpoints are
# (sigint's): it starts (it asked for none), and its stop writes none there,
# which would replace and prune them; it says so and exits 4, the root as it
# was. (A stop used to publish its step, move `latest` and prune the oldest.)
if [ -f sigint.ckpt/latest ]; then
  before=$(ls -a sigint.ckpt; cat sigint.ckpt/latest)
  "$BIN" "${args[@]}" --set train.checkpoint_interval=0 --set train.checkpoint_dir=sigint.ckpt --metrics foreign.jsonl \
    > foreign.log 2>&1 &
  job=$!
  for _ in $(seq 1 600); do [ "$(cat foreign.jsonl 2>/dev/null | wc -l)" -ge 2 ] && break; kill -0 $job 2>/dev/null || break; sleep 0.1; done
  kill -INT $job; wait $job; rc=$?
  line=$(grep "^stopped by SIGINT after step [0-9]*: no checkpoint: train.checkpoint_dir = sigint.ckpt holds another run's (1 checkpoint, the newest $(cat sigint.ckpt/latest))" foreign.log)
  if [ $rc -eq 4 ] && [ -n "$line" ] && [ "$(ls -a sigint.ckpt; cat sigint.ckpt/latest)" = "$before" ]; then
    echo "ok   foreign: $line"
  else
    echo "FAIL foreign: exit $rc, the root before and after:"; echo "$before"; ls -a sigint.ckpt; cat foreign.log; fail=1
  fi
fi

# SIGINT inside a long evaluation (100000 batches, minutes): the pass ends at
# its next batch, then the checkpoint of the step before it, within seconds
# (it used to finish the pass, then train and evaluate the next step).
"$BIN" "${args[@]}" --set train.eval_interval=1 --set train.eval_batches=100000 \
  --set train.checkpoint_dir=evalstop.ckpt --metrics evalstop.jsonl > evalstop.log 2>&1 &
job=$!
( sleep 120; kill -9 $job ) > /dev/null 2>&1 &  # (the regression would run for minutes)
killer=$!
for _ in $(seq 1 600); do grep -q "^evaluation [0-9]*/100000" evalstop.log && break; kill -0 $job 2>/dev/null || break; sleep 0.1; done
if grep -q "^evaluation [0-9]*/100000" evalstop.log; then
  t0=$(date +%s); kill -INT $job; wait $job; rc=$?; took=$(( $(date +%s) - t0 ))
  check evalstop $rc 4 SIGINT
  [ $took -le 30 ] && echo "ok   evalstop: stopped ${took} s after the signal" || { echo "FAIL evalstop: took $took s"; fail=1; }
  pkill -P $killer 2>/dev/null; kill $killer 2>/dev/null
  # --eval-only of that checkpoint, stopped the same way: exit 4, one line.
  "$BIN" --resume evalstop.ckpt/step_00000001 --eval-only --set train.eval_batches=100000 > evalonly.log 2>&1 &
  job=$!
  ( sleep 120; kill -9 $job ) > /dev/null 2>&1 &
  killer=$!
  # (Its first line comes after the handlers are in place.)
  for _ in $(seq 1 600); do grep -q "^switchyard: " evalonly.log && break; sleep 0.1; done
  kill -INT $job; wait $job; rc=$?
  pkill -P $killer 2>/dev/null; kill $killer 2>/dev/null
  [ $rc -eq 4 ] && grep -q "^stopped by SIGINT during the evaluation of evalstop.ckpt/step_00000001" evalonly.log \
    && echo "ok   eval-only: $(grep '^stopped' evalonly.log)" || { echo "FAIL eval-only: exit $rc"; cat evalonly.log; fail=1; }
else
  echo "FAIL evalstop: no evaluation progress line"; cat evalstop.log; fail=1; kill -9 $job 2>/dev/null
fi

grace=(--mca odls_base_sigkill_timeout 10)
mpi=("$MPIRUN" --oversubscribe -np 2 "${grace[@]}" "$BIN" --set parallel.expert_parallel=2 --set parallel.timeout_s=120)
if start mpi "${mpi[@]}" "${args[@]}"; then
  kill -TERM $job; wait $job; rc=$?
  [ "$rc" -ne 0 ] || { echo "FAIL mpi: mpirun exited 0 after SIGTERM"; fail=1; }
  check mpi "$rc" 1 SIGTERM  # (mpirun's own status after a signal it received; a rank that aborts instead gives another)
  # Both ranks stopped on their own (no rank was left in a collective to time out).
  ! grep -q "did not complete" mpi.log || { echo "FAIL mpi: a collective timed out"; cat mpi.log; fail=1; }
  # The checkpoint resumes (at the same layout) and trains on.
  "$MPIRUN" --oversubscribe -np 2 "$BIN" --resume latest --set train.checkpoint_dir=mpi.ckpt --set train.steps=$(( $(sed -E 's/.*after step ([0-9]+):.*/\1/' <<<"$(grep -o 'stopped by [^:]*:' mpi.log | head -1)") + 2 )) \
    --metrics mpi.jsonl > resume.log 2>&1 && grep -q "^done:" resume.log && echo "ok   mpi: resumed from $(cat mpi.ckpt/latest)" \
    || { echo "FAIL mpi: resume"; cat resume.log; fail=1; }
fi

# SIGTERM to rank 1 alone (as a scheduler signalling the processes of one
# node would): rank 0 never sees it, yet both stop after the same step, each
# exits 4, and so does mpirun. (Tagged, so no other job's rank is touched.)
export SY_SIGNAL_TEST_TAG=$$
if start rank1 "$MPIRUN" --oversubscribe -np 2 -x SY_SIGNAL_TEST_TAG "$BIN" --set parallel.expert_parallel=2 \
     --set parallel.timeout_s=120 "${args[@]}"; then
  victim=""
  for p in $(pgrep -f "$BIN" || true); do
    env=$( { tr '\0' '\n' < /proc/$p/environ; } 2>/dev/null) || continue
    grep -qx "OMPI_COMM_WORLD_RANK=1" <<<"$env" && grep -qx "SY_SIGNAL_TEST_TAG=$$" <<<"$env" && victim=$p
  done
  if [ -z "$victim" ]; then echo "FAIL rank1: rank 1 not found"; fail=1; kill -9 $job
  else kill -TERM "$victim"; wait $job; check rank1 $? 4 "a signal to another rank"; fi
fi
exit $fail
