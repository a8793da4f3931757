#!/usr/bin/env bash
# After a device call, here: what scripts/gpu_check.sh brought back, kept as
# the record of that run and set beside the previous one, so the session
# reads one digest before it edits docs/PERF.md.
#
#   bash scripts/gpu_collect.sh FILES_AT TAG [--overwrite]
#
# FILES_AT: the folder the device tool put the call's files in (files_at);
# TAG: the run's name in docs/gpu, its date (2026-12-09), or with a letter
# for a second run that day (2026-12-09b).
#   - bench_ops.json and bench_attention.json        -> docs/gpu/<name>_TAG.json
#   - logs.tar.gz unpacked into build-gpu/runs/TAG/callN/ (N: the call's
#     number that day, 1 for the first collected; summary.txt and
#     inventory.txt beside it), and of its logs what a later run is compared
#     with: switch_gpu's op profile, the PyTorch peers' and bench_comm's
#     JSON                                           -> docs/gpu/<name>_TAG.json
#   - each kept JSON beside the newest earlier record of its name
#     (scripts/bench/compare_runs.py, where it reads that kind), rows that
#     moved by more than 5%, in build-gpu/runs/TAG/callN/compare_<name>.log
#   - the attention plot of the new bench_attention JSON, where gnuplot is,
#     in build-gpu/runs/TAG/callN/ (docs/attention_vs_length.png is the figure
#     PERF.md describes: copy it over when PERF.md's text follows)
#   - the call's summary, last.
# The day's calls each keep their own JSON names (the first call's
# bench_ops, the second's bench_attention): a JSON this call would write
# that docs/gpu already holds under TAG is refused unless --overwrite (a
# record is not replaced by accident), and nothing is written then. SY_DOCS=DIR writes into DIR/gpu instead of docs/gpu,
# SY_RUNS=DIR the logs into DIR/TAG instead of build-gpu/runs/TAG (the
# test's).
set -uo pipefail
usage="usage: bash scripts/gpu_collect.sh FILES_AT TAG [--overwrite]"
[ $# -ge 2 ] && [ $# -le 3 ] || { echo "gpu_collect.sh: $usage"; exit 2; }
TAG=$2 OVER=${3:-}
IN=$(cd "$1" 2> /dev/null && pwd) || { echo "gpu_collect.sh: FILES_AT $1: not a directory"; exit 2; }
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -z "$OVER" ] || [ "$OVER" = --overwrite ] || { echo "gpu_collect.sh: '$OVER': $usage"; exit 2; }
[[ $TAG =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}[a-z]?$ ]] ||
  { echo "gpu_collect.sh: TAG '$TAG': a date, YYYY-MM-DD, with a letter after it for a second run that day"; exit 2; }
[ -s "$IN/summary.txt" ] || { echo "gpu_collect.sh: $IN/summary.txt: missing or empty (not a gpu_check.sh call's files?)"; exit 2; }
DOCS=${SY_DOCS:-docs}/gpu
RUN=${SY_RUNS:-build-gpu/runs}/$TAG
STAGE=$(mktemp -d)  # the logs unpacked here first: nothing is written where the call is refused
trap 'rm -rf "$STAGE"' EXIT
if [ -f "$IN/logs.tar.gz" ]; then
  tar -C "$STAGE" -xzf "$IN/logs.tar.gz" || echo "note: $IN/logs.tar.gz did not unpack whole"
fi

# What this call keeps: the JSON it brought back, beside its summary (TOP)
# or in its logs (LOGGED). src NAME LOGS: NAME's file, the logs unpacked in LOGS.
TOP=(bench_ops bench_attention)
LOGGED=(switch_gpu_ops torch_moe torch_attention torch_attention_long grad_overlap
        bench_comm_nccl_np1 bench_comm_nccl_np2 bench_comm_device_np4)
src() { case " ${TOP[*]} " in *" $1 "*) echo "$IN/$1.json" ;; *) echo "$2/$1.json" ;; esac; }
names=() held=()
for name in "${TOP[@]}" "${LOGGED[@]}"; do
  [ -s "$(src "$name" "$STAGE/logs")" ] || continue
  names+=("$name")
  [ -e "$DOCS/${name}_$TAG.json" ] && held+=("${name}_$TAG.json")
done
if [ -z "$OVER" ] && [ ${#held[@]} -gt 0 ]; then
  echo "gpu_collect.sh: $DOCS already holds ${held[*]}: --overwrite to replace them"
  exit 2
fi
mkdir -p "$DOCS" "$RUN"
n=1
while [ -e "$RUN/call$n" ]; do n=$((n + 1)); done
CALL=$RUN/call$n
mkdir -p "$CALL"
cp --no-preserve=mode "$IN/summary.txt" "$CALL/"
[ -f "$IN/inventory.txt" ] && cp --no-preserve=mode "$IN/inventory.txt" "$CALL/"
[ -d "$STAGE/logs" ] && mv "$STAGE/logs" "$CALL/logs"

# keep NAME FILE: FILE (JSON) as docs/gpu/NAME_TAG.json, then beside the
# newest earlier record of NAME (by name, C collation: 04 < 04b < 05).
kept=()
keep() {
  local name=$1 f=$2 record
  python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$f" 2> /dev/null ||
    { echo "note: $(basename "$f") is not JSON (a run cut off mid-write?): not kept"; return 0; }
  record=$(ls "$DOCS/${name}"_[0-9]*.json 2> /dev/null | grep -v "_${TAG}.json$" | LC_ALL=C sort | tail -1)
  cp --no-preserve=mode "$f" "$DOCS/${name}_${TAG}.json" || { echo "note: $name not kept (cp failed)"; return 0; }
  kept+=("$DOCS/${name}_${TAG}.json")
  case $name in
    bench_ops | bench_attention | switch_gpu_ops)
      [ -n "$record" ] || return 0
      python3 scripts/bench/compare_runs.py "$record" "$DOCS/${name}_${TAG}.json" --min-change 0.05 \
        > "$CALL/compare_$name.log" 2>&1
      echo "$name against $(basename "$record"): $(grep -E '^(devices differ|[0-9]+ of [0-9]+ rows|compare_runs:)' \
        "$CALL/compare_$name.log" | paste -sd ' ' -) ($CALL/compare_$name.log)" ;;
  esac
}
for name in "${names[@]}"; do keep "$name" "$(src "$name" "$CALL/logs")"; done
if [[ " ${kept[*]} " == *" $DOCS/bench_attention_${TAG}.json "* ]]; then  # (kept by this call)
  if command -v gnuplot > /dev/null; then
    python3 scripts/bench/plot_attention.py "$DOCS/bench_attention_${TAG}.json" "$CALL/attention_vs_length.png" ||
      echo "note: the attention plot failed"
  else
    echo "note: no gnuplot: no attention plot"
  fi
fi
echo "kept: ${kept[*]:-nothing}"
echo "logs: $CALL/logs ($(ls "$CALL/logs" 2> /dev/null | wc -l) files)"
echo "== summary of the call ($CALL/summary.txt)"
cat "$CALL/summary.txt"
