#!/usr/bin/env bash
# Start-up under mpirun: ranks whose resolved configs differ stop together
# with one line naming the first differing field and the ranks; a config error
# (on every rank, or on one) is printed once, by rank 0, every rank exits 2,
# and no MPI_ABORT banner appears; nothing hangs. Ranks that made different
# balanced hash maps from their data stop the same way. Under expert
# parallelism the printed parameter count is the global one.
set -u
BIN=$1; SRC=$2; MPIRUN=$3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# Runs the binary with $RANK1_ARGS appended on rank 1 only.
cat > "$tmp/rank1.sh" <<'EOF'
#!/usr/bin/env bash
if [ "${OMPI_COMM_WORLD_RANK:-}" = 1 ]; then exec "$@" $RANK1_ARGS; else exec "$@"; fi
EOF
chmod +x "$tmp/rank1.sh"
args=(--config "$SRC/configs/switch_tiny.pbtxt" --set train.steps=6 --set train.warmup_steps=1
      --set train.log_interval=1000 --set train.eval_interval=0 --set train.batch=4
      --set data.synthetic_bytes=50000 --set parallel.expert_parallel=2 --set parallel.timeout_s=20)
fail=0
expect() {  # name, want-rc, needle, rank-1 extra args, common extra args...
  local name=$1 want=$2 needle=$3 rank1=$4; shift 4
  RANK1_ARGS=$rank1 timeout 120 "$MPIRUN" --oversubscribe -np 2 -x RANK1_ARGS "$tmp/rank1.sh" "$BIN" "${args[@]}" "$@" \
    > "$tmp/$name.out" 2> "$tmp/$name.err"
  local rc=$? errors
  errors=$(grep -c '^error: ' "$tmp/$name.err")
  if [ $rc -ne "$want" ]; then echo "FAIL $name: exit $rc, want $want"; cat "$tmp/$name.err"; fail=1; return; fi
  if [ "$errors" -ne 1 ]; then echo "FAIL $name: $errors 'error:' lines, want 1:"; cat "$tmp/$name.err"; fail=1; return; fi
  if grep -q MPI_ABORT "$tmp/$name.err"; then echo "FAIL $name: MPI_ABORT banner:"; cat "$tmp/$name.err"; fail=1; return; fi
  grep -qF -- "$needle" "$tmp/$name.err" || { echo "FAIL $name: '$needle' not in: $(grep '^error: ' "$tmp/$name.err")"; fail=1; return; }
  echo "ok   $name: $(grep '^error: ' "$tmp/$name.err")"
}
# A different width on one rank corrupted the heap (rc 134); a different seed trained silently.
expect d_model 2 "model.d_model = 64 on rank 0 but 32 on rank 1" "--set model.d_model=32"
grep -q "ranks differing from rank 0: 1" "$tmp/d_model.err" || { echo "FAIL d_model: ranks not named"; fail=1; }
expect seed 2 "train.seed = 1234 on rank 0 but 7 on rank 1" "--set train.seed=7"
expect repeated 2 "moe.expert_cost = [] on rank 0 but [1, 1, 1, 1, 2, 2, 2, 2] on rank 1" "--set moe.expert_cost=1,1,1,1,2,2,2,2"
# The same bad value everywhere: one line, no rank prefix.
expect bad_everywhere 2 "model.d_model = 3: must be in [8, 8192]" "" --set model.d_model=3
grep -q "^error: rank" "$tmp/bad_everywhere.err" && { echo "FAIL bad_everywhere: printed with a rank prefix"; fail=1; }
# A bad value on one rank only: still one line, naming that rank.
expect bad_on_rank1 2 "error: rank 1: " "--set model.d_model=3"
grep -q "model.d_model = 3" "$tmp/bad_on_rank1.err" || { echo "FAIL bad_on_rank1: field not named"; fail=1; }
expect batch_split 2 "train.batch = 3: the global batch must split evenly over 2 ranks" "" --set train.batch=3
# Balanced hash routing's map, which each rank makes from its own copy of the
# training data (here another file at the same relative path on each rank):
# one line naming the rank, every rank exits 2; the same file trains.
for r in 0 1; do mkdir -p "$tmp/r$r"; done
yes "the quick brown fox" | head -c 40000 > "$tmp/r0/data.txt"
yes "pack my box with five dozen jugs" | head -c 40000 > "$tmp/r1/data.txt"
printf '#!/usr/bin/env bash\ncd "$RANK_DIRS/r${OMPI_COMM_WORLD_RANK}" && exec "$@"\n' > "$tmp/own_dir.sh"
chmod +x "$tmp/own_dir.sh"
hash=(--set moe.router=HASH --set moe.hash_assignment=BALANCED --set moe.load_balance_coef=0
      --set moe.bias_balance_rate=0 --set data.source=TEXT_FILE --set data.path=data.txt --set train.checkpoint_interval=0)
RANK_DIRS=$tmp timeout 120 "$MPIRUN" --oversubscribe -np 2 -x RANK_DIRS "$tmp/own_dir.sh" "$BIN" "${args[@]}" "${hash[@]}" \
  > "$tmp/table.out" 2> "$tmp/table.err"
rc=$?
if [ $rc -eq 2 ] && [ "$(grep -c '^error: ' "$tmp/table.err")" -eq 1 ] &&
   grep -q "^error: ranks disagree: moe.hash_table .* differs from rank 0's on ranks 1" "$tmp/table.err"; then
  echo "ok   hash_table: $(grep '^error: ' "$tmp/table.err")"
else
  echo "FAIL hash_table: exit $rc:"; cat "$tmp/table.err"; fail=1
fi
cp "$tmp/r0/data.txt" "$tmp/r1/data.txt"
RANK_DIRS=$tmp timeout 120 "$MPIRUN" --oversubscribe -np 2 -x RANK_DIRS "$tmp/own_dir.sh" "$BIN" "${args[@]}" "${hash[@]}" \
  > "$tmp/table_ok.out" 2>&1 && grep -q "^done:" "$tmp/table_ok.out" && echo "ok   the same data: one map" ||
  { echo "FAIL the same data:"; cat "$tmp/table_ok.out"; fail=1; }
# Equal configs still train, and the parameter count printed under expert
# parallelism is the whole model's (dense once, every expert), as on one rank.
timeout 120 "$MPIRUN" --oversubscribe -np 2 "$BIN" "${args[@]}" > "$tmp/ok.out" 2>&1 \
  && grep -q "^done:" "$tmp/ok.out" && echo "ok   equal configs train" || { echo "FAIL equal configs:"; cat "$tmp/ok.out"; fail=1; }
"$BIN" "${args[@]}" --set parallel.expert_parallel=1 > "$tmp/one.out" 2>&1 || { echo "FAIL one rank:"; cat "$tmp/one.out"; fail=1; }
one=$(grep -o "^model: [0-9]* parameters" "$tmp/one.out"); two=$(grep -o "^model: [0-9]* parameters" "$tmp/ok.out")
if [ -n "$one" ] && [ "$one" = "$two" ]; then echo "ok   parameter count under expert_parallel 2: $two"
else echo "FAIL parameter count: one rank '$one', expert_parallel 2 '$two'"; fail=1; fi
exit $fail
