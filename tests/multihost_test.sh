#!/usr/bin/env bash
# A job across two hosts on this machine: two network namespaces joined by a
# veth pair (10.99.0.1 and 10.99.0.2), mpirun started on the first with a
# hostfile, the second host reached through an rsh agent that enters its
# namespace (as ssh would log in), ranks talking TCP only.
#  1. Expert parallelism over the two hosts (ep=2) computes one rank's
#     per-step losses to 1e-5 relative (dropless, noise off, 10 steps).
#  2. With the second host's link taken down mid-run, each rank exits within
#     the collective timeout (parallel.timeout_s=5, plus 10 s for the step in
#     flight) with the one-line error "error: rank R: ... did not complete
#     within 5 s". mpirun itself waits on TCP for the lost host's daemon, so
#     it is killed after the check.
# Skips (exit 77) where namespaces cannot be made: not root, no ip, no
# CAP_NET_ADMIN, no veth.
#   multihost_test.sh TRAIN_SWITCH SOURCE_DIR MPIRUN
set -u
BIN=$(readlink -f "$1"); SRC=$2; MPIRUN=$3
TIMEOUT_S=5
skip() { echo "SKIP multihost: $*"; exit 77; }
command -v ip > /dev/null || skip "no 'ip' (iproute2) to make network namespaces"
[ "$(id -u)" -eq 0 ] || skip "not root (network namespaces need CAP_NET_ADMIN)"

A=sy$$a; B=sy$$b  # namespace and veth names (at most 15 characters)
tmp=$(mktemp -d)
stop_all() {  # every process in the two namespaces is this test's
  local ns p
  for ns in $A $B; do for p in $(ip netns pids $ns 2> /dev/null); do kill "$p" 2> /dev/null; done; done
  sleep 1
  for ns in $A $B; do for p in $(ip netns pids $ns 2> /dev/null); do kill -9 "$p" 2> /dev/null; done; done
}
cleanup() {
  stop_all
  ip netns del $A 2> /dev/null; ip netns del $B 2> /dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add $A 2> "$tmp/err" || skip "cannot make a network namespace: $(cat "$tmp/err")"
ip netns add $B 2> "$tmp/err" || skip "cannot make a network namespace: $(cat "$tmp/err")"
ip link add $A type veth peer name $B 2> "$tmp/err" || skip "cannot make a veth pair: $(cat "$tmp/err")"
ip link set $A netns $A && ip link set $B netns $B &&
  ip -n $A addr add 10.99.0.1/24 dev $A && ip -n $B addr add 10.99.0.2/24 dev $B &&
  ip -n $A link set lo up && ip -n $B link set lo up &&
  ip -n $A link set $A up && ip -n $B link set $B up || { echo "FAIL: cannot set up the veth pair"; exit 1; }

# What a user writes for two machines: a hostfile and an rsh agent (here one
# that enters the host's namespace instead of ssh).
printf '10.99.0.1 slots=1\n10.99.0.2 slots=1\n' > "$tmp/hosts"
cat > "$tmp/agent" << EOF
#!/bin/sh
host=\$1; shift
case \$host in
  10.99.0.1) ns=$A ;;
  10.99.0.2) ns=$B ;;
  *) echo "agent: unknown host \$host" >&2; exit 255 ;;
esac
echo "\$host" >> "$tmp/agent.log"
exec ip netns exec \$ns sh -c "\$*"
EOF
chmod +x "$tmp/agent"
mpirun=(ip netns exec $A "$MPIRUN" -np 2 --hostfile "$tmp/hosts" --mca plm_rsh_agent "$tmp/agent"
        --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include 10.99.0.0/24 --mca oob_tcp_if_include 10.99.0.0/24)
fail=0

# 1. ep=2 across the hosts equals one rank.
args=(--config "$SRC/configs/switch_tiny.pbtxt" --set train.steps=10 --set train.warmup_steps=2
      --set train.log_interval=1 --set train.eval_interval=0 --set train.batch=8
      --set data.synthetic_bytes=100000 --set moe.dropless=true --set moe.jitter=0 --set moe.router_noise=0
      --set moe.every_n_layers=1 --set moe.top_k=2)
losses() { sed -E 's/.*"loss":([-0-9.e]+).*/\1/' "$1"; }
"$BIN" "${args[@]}" --metrics "$tmp/one.jsonl" > "$tmp/one.log" 2>&1 || { echo "FAIL one rank"; cat "$tmp/one.log"; exit 1; }
if timeout 300 "${mpirun[@]}" "$BIN" "${args[@]}" --set parallel.expert_parallel=2 --set parallel.timeout_s=120 \
     --metrics "$tmp/two.jsonl" > "$tmp/two.log" 2>&1; then
  grep -qx 10.99.0.2 "$tmp/agent.log" || { echo "FAIL: mpirun did not start a daemon on 10.99.0.2"; fail=1; }
  worst=$(paste <(losses "$tmp/one.jsonl") <(losses "$tmp/two.jsonl") |
    awk '{ d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > m) m = d; n++ } END { if (n != 10) print "steps=" n; else printf "%.2e", m }')
  if [[ $worst != steps=* ]] && awk -v w="$worst" 'BEGIN { exit !(w <= 1e-5) }'; then
    echo "ok   ep=2 across two hosts: worst relative loss difference over 10 steps $worst"
  else
    echo "FAIL ep=2 across two hosts: $worst (one rank vs two hosts)"; fail=1
  fi
else
  echo "FAIL ep=2 across two hosts: mpirun failed"; cat "$tmp/two.log"; fail=1
fi

# 2. One host's link goes down mid-run. Each rank's stderr goes to a file on
# its host, as the lost host's output cannot reach mpirun.
ranks_in() {  # namespace: pids of train_switch in it
  local p
  for p in $(ip netns pids "$1" 2> /dev/null); do [ "$(readlink /proc/$p/exe 2> /dev/null)" = "$BIN" ] && echo "$p"; done
}
# (In a subshell: mpirun's own end, killed, is reported into its log.)
(timeout 300 "${mpirun[@]}" sh -c 'exec "$0" "$@" 2> "'"$tmp"'/rank$OMPI_COMM_WORLD_RANK.err"' \
   "$BIN" "${args[@]}" --set train.steps=100000 --set parallel.expert_parallel=2 \
   --set parallel.timeout_s=$TIMEOUT_S --metrics "$tmp/long.jsonl"
 echo "mpirun: exit $?") > "$tmp/long.log" 2>&1 &
job=$!
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
deadline=$(( $(now_ms) + 60000 ))
while [ "$(now_ms)" -lt $deadline ]; do
  [ -f "$tmp/long.jsonl" ] && [ "$(wc -l < "$tmp/long.jsonl")" -ge 3 ] && break
  sleep 0.2
done
if [ ! -f "$tmp/long.jsonl" ] || [ "$(wc -l < "$tmp/long.jsonl")" -lt 3 ]; then
  echo "FAIL link down: the run did not reach step 3 in 60 s"; cat "$tmp/long.log"; exit 1
fi
[ -n "$(ranks_in $A)" ] && [ -n "$(ranks_in $B)" ] || { echo "FAIL: want one rank on each host"; fail=1; }
start=$(now_ms)
ip -n $B link set $B down
limit=$((TIMEOUT_S + 10))
gone=0
while [ "$(now_ms)" -lt $((start + limit * 1000)) ]; do
  [ -z "$(ranks_in $A)$(ranks_in $B)" ] && { gone=1; break; }
  sleep 0.1
done
took=$(awk -v ms=$(( $(now_ms) - start )) 'BEGIN { printf "%.1f", ms / 1000 }')
if [ $gone -eq 0 ]; then
  echo "FAIL link down: ranks still running ${limit}s after the link went down"; fail=1
else
  for r in 0 1; do
    line=$(grep -m1 -E "^error: rank $r: .* did not complete within $TIMEOUT_S s" "$tmp/rank$r.err")
    if [ -n "$line" ]; then echo "ok   link down: rank $r exited ${took}s after it: $line"
    else echo "FAIL link down: rank $r printed no timeout line:"; cat "$tmp/rank$r.err"; fail=1; fi
  done
fi
stop_all  # mpirun (on the first host) and the lost host's daemon
wait $job 2> /dev/null
exit $fail
