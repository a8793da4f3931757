# Sourced by the experiment scripts that compare train_switch runs by their
# expert load (sinkhorn.sh, hash_routing.sh).
#
# run_set OUT CSV "NAME|ARGS" ...: build/bin/train_switch ARGS once per NAME,
# two at a time (one thread each), metrics to OUT/NAME.jsonl (a run whose
# file exists is skipped); then load_table.py's row of every NAME into CSV,
# shown as a table.
source scripts/experiments/jobs.sh
run_set() {
  local out=$1 csv=$2 r name
  shift 2
  mkdir -p "$out"
  for r in "$@"; do
    name=${r%%|*}
    [ -f "$out/$name.jsonl" ] && continue
    run_bg train_run "$out" "$name" ${r#*|}
  done
  wait_all || true  # (the table below refuses a missing run)
  local args=()
  for r in "$@"; do args+=("${r%%|*}=$out/${r%%|*}.jsonl"); done
  # (Into the CSV only when whole: a failed run's missing file left the
  # tracked CSV empty.)
  python3 scripts/experiments/load_table.py "${args[@]}" > "$csv.part" && mv "$csv.part" "$csv" \
    || { rm -f "$csv.part"; echo "run_set: $csv left as it was (a run above failed)"; return 1; }
  column -s, -t "$csv"
}
