#!/usr/bin/env bash
# One rank's failure ends the whole job, non-zero, with a line naming the
# rank, within the timeout: an exception on one rank, a rank that hangs (the
# others' collectives time out), a rank that exits, and a rank killed from
# outside (SIGKILL).
set -u
BIN=$1; SRC=$2; MPIRUN=$3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
args=(--config "$SRC/configs/switch_tiny.pbtxt" --set train.steps=400 --set train.warmup_steps=2
      --set train.log_interval=1000 --set train.eval_interval=0 --set train.batch=4
      --set data.synthetic_bytes=50000 --set parallel.expert_parallel=2 --set parallel.timeout_s=3)
# SY_TEST_ARGS: more overrides for every run (scripts/gpu_check.sh: --set backend=CUDA,
# two ranks sharing one GPU through the MPI communicator). SY_FAULT_KINDS: the
# cases to run (default all: throw hang exit kill; the kill case finds rank 1
# by BIN on its command line, so a BIN that execs another program skips it).
read -r -a more <<< "${SY_TEST_ARGS:-}"
args+=("${more[@]}")
fail=0
check() {  # name, rc, max seconds, took, needle
  local name=$1 rc=$2 max=$3 took=$4 needle=$5
  if [ "$rc" -eq 0 ]; then echo "FAIL $name: exit 0"; fail=1; return; fi
  if [ "$took" -gt "$max" ]; then echo "FAIL $name: took ${took}s > ${max}s"; fail=1; return; fi
  grep -qE -- "$needle" "$tmp/$name.log" || { echo "FAIL $name: no line matching '$needle':"; cat "$tmp/$name.log"; fail=1; return; }
  echo "ok   $name: exit $rc in ${took}s: $(grep -m1 -E -- "$needle" "$tmp/$name.log")"
}
kinds=" ${SY_FAULT_KINDS:-throw hang exit kill} "
for kind in throw hang exit; do
  [[ $kinds == *" $kind "* ]] || continue
  start=$(date +%s)
  timeout 120 "$MPIRUN" --oversubscribe -np 2 "$BIN" "${args[@]}" --inject-fault "$kind:1:3" > "$tmp/$kind.log" 2>&1
  rc=$?; took=$(( $(date +%s) - start ))
  case $kind in
    throw) check throw $rc 60 $took "error: rank 1: injected fault on rank 1 at step 3" ;;
    hang)  check hang $rc 60 $took "error: rank 0: (all_to_all(_v)?|all_reduce) in 'h[0-9]+\\.moe' did not complete within 3 s \\(group of world ranks 0,1\\)" ;;
    exit)  check exit $rc 60 $took "Process name: \\[\\[[0-9]+,[0-9]+\\],1\\]" ;;  # mpirun names rank 1
  esac
done
[[ $kinds == *" kill "* ]] || exit $fail
# SIGKILL from outside: rank 1 of this job (tagged, so no other job's rank is
# touched) found by its OpenMPI rank variable.
export SY_FAULT_TEST_TAG=$$
start=$(date +%s)
timeout 120 "$MPIRUN" --oversubscribe -np 2 -x SY_FAULT_TEST_TAG "$BIN" "${args[@]}" --set train.steps=100000 > "$tmp/kill.log" 2>&1 &
job=$!
victim=""
for _ in $(seq 1 100); do
  for p in $(pgrep -f "$BIN" || true); do
    env=$( { tr '\0' '\n' < /proc/$p/environ; } 2>/dev/null) || continue
    grep -qx "OMPI_COMM_WORLD_RANK=1" <<<"$env" && grep -qx "SY_FAULT_TEST_TAG=$$" <<<"$env" && victim=$p
  done
  [ -n "$victim" ] && break
  sleep 0.1
done
if [ -z "$victim" ]; then echo "FAIL kill: rank 1 not found"; fail=1; kill $job 2>/dev/null
else
  sleep 1; kill -9 "$victim"; wait $job; rc=$?; took=$(( $(date +%s) - start ))
  check kill $rc 60 $took "rank 1"
fi
exit $fail
