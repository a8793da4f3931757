# Sourced by the experiment scripts that compare train_switch runs by their
# expert load (sinkhorn.sh, hash_routing.sh).
#
# run_set OUT CSV "NAME|ARGS" ...: build/bin/train_switch ARGS once per NAME,
# two at a time (one thread each), metrics to OUT/NAME.jsonl (a run whose
# file exists is skipped); then load_table.py's row of every NAME into CSV,
# shown as a table.
run_set() {
  local out=$1 csv=$2 r name
  shift 2
  mkdir -p "$out"
  for r in "$@"; do
    name=${r%%|*}
    [ -f "$out/$name.jsonl" ] && continue
    echo "OPENBLAS_NUM_THREADS=1 build/bin/train_switch ${r#*|} --metrics $out/$name.jsonl.part --overwrite > $out/$name.log 2>&1 && mv $out/$name.jsonl.part $out/$name.jsonl && echo done $name || { echo FAILED $name; tail -3 $out/$name.log; }"
  done | xargs -P 2 -I{} bash -c '{}'
  local args=()
  for r in "$@"; do args+=("${r%%|*}=$out/${r%%|*}.jsonl"); done
  # (Into the CSV only when whole: a failed run's missing file left the
  # tracked CSV empty.)
  python3 scripts/experiments/load_table.py "${args[@]}" > "$csv.part" && mv "$csv.part" "$csv" \
    || { rm -f "$csv.part"; echo "run_set: $csv left as it was (a run above failed)"; return 1; }
  column -s, -t "$csv"
}
