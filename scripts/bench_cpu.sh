#!/usr/bin/env bash
# CPU training step, Switchyard against PyTorch, one thread, side by side.
#
#   scripts/bench_cpu.sh [--steps N] [--warmup W] [--reps R] [--core C] [--json FILE] [--build DIR]
#                        [--configs "tiny switch_tiny"]
#
# For each repetition and config, alternating: ours (DIR/bin/train_switch
# --threads 1, the config's defaults, logging every step, evaluation only on
# the last step) and PyTorch's counterpart (scripts/bench/torch_step.py, the
# same model, shapes and step: forward, backward, clipping, AdamW), both
# pinned to core C with one BLAS/OpenMP thread. Each run's figure is the median
# tokens/s of N timed steps after W warm-up steps (ours: the per-step
# tokens_per_s of its --metrics lines, the last step, which evaluates,
# dropped); the table shows the median over the R repetitions and the
# range. Needs a PyTorch the python found here imports (Debian:
# apt-get install python3-torch; this benchmark only, never a test).
# Measure on a quiet machine: both share the pinned core with nothing else.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
steps=30 warmup=5 reps=5 core=0 json="" build="$src/build" configs="tiny switch_tiny"
while [ $# -gt 0 ]; do
  case $1 in
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --core) core=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    *) echo "bench_cpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin="$build/bin/train_switch"
[ -x "$bin" ] || { echo "bench_cpu.sh: $bin not found; build first" >&2; exit 2; }
torch_py=""
for p in ${PYTHON:-} /usr/bin/python3 python3; do
  if "$p" -c "import torch" 2>/dev/null; then torch_py=$p; break; fi
done
[ -n "$torch_py" ] || { echo "bench_cpu.sh: no python with torch (apt-get install python3-torch)" >&2; exit 2; }
# (said before the minutes of runs, not after them)
[ -z "$json" ] || [ -d "$(dirname "$json")" ] || { echo "bench_cpu.sh: --json $json: no directory $(dirname "$json")" >&2; exit 2; }

export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
results="$tmp/results.jsonl"
total=$((warmup + steps + 1))
for rep in $(seq 1 "$reps"); do
  for c in $configs; do
    rm -f "$tmp/ours.jsonl"  # train_switch refuses to overwrite a metrics file
    taskset -c "$core" "$bin" --config "$src/configs/$c.pbtxt" --threads 1 --set train.steps=$total \
      --set train.log_interval=1 --set train.eval_interval=0 \
      --set train.eval_batches=1 --metrics "$tmp/ours.jsonl" > "$tmp/ours.log" 2>&1 \
      || { cat "$tmp/ours.log" >&2; exit 1; }
    python3 - "$tmp/ours.jsonl" "$c" "$rep" "$warmup" "$steps" >> "$results" <<'PY'
import json, statistics, sys
path, config, rep, warmup, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lines = [json.loads(l) for l in open(path)]
tps = [l["tokens_per_s"] for l in lines if warmup < l["step"] <= warmup + steps]
print(json.dumps({"config": config, "impl": "switchyard", "rep": rep, "steps": len(tps),
                  "tokens_per_s": statistics.median(tps)}))
PY
    taskset -c "$core" "$torch_py" "$src/scripts/bench/torch_step.py" --config "$c" --steps "$steps" \
      --warmup "$warmup" > "$tmp/torch.json"
    python3 - "$tmp/torch.json" "$rep" >> "$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({"config": r["config"], "impl": "pytorch", "torch": r["impl"], "rep": int(sys.argv[2]),
                  "steps": r["steps"], "tokens_per_s": r["tokens_per_s"]}))
PY
    echo "rep $rep/$reps $c: $(tail -2 "$results" | python3 -c 'import json,sys; print(" ".join("%s %.0f tok/s" % (r["impl"], r["tokens_per_s"]) for r in map(json.loads, sys.stdin)))')" >&2
  done
done

python3 - "$results" "$json" "$core" "$steps" "$warmup" "$reps" <<'PY'
import json, platform, statistics, subprocess, sys
path, out, core, steps, warmup, reps = sys.argv[1:7]
rows = [json.loads(l) for l in open(path)]
model = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
              if l.startswith("Model name")), platform.processor())
torch_version = next((r["torch"] for r in rows if r["impl"] == "pytorch"), "?")
table = []
print(f"CPU training step, one thread on core {core} ({model}); median tokens/s of {steps} steps after {warmup} warm-up,")
print(f"median over {reps} alternating repetitions (range in brackets); PyTorch: {torch_version}")
print(f"| config | ours tok/s | PyTorch tok/s | ours / PyTorch |")
print(f"|---|---|---|---|")
for c in dict.fromkeys(r["config"] for r in rows):
    ours = [r["tokens_per_s"] for r in rows if r["config"] == c and r["impl"] == "switchyard"]
    ref = [r["tokens_per_s"] for r in rows if r["config"] == c and r["impl"] == "pytorch"]
    o, p = statistics.median(ours), statistics.median(ref)
    table.append({"config": c, "ours_tokens_per_s": o, "pytorch_tokens_per_s": p, "ratio": o / p,
                  "ours_runs": ours, "pytorch_runs": ref})
    print(f"| {c} | {o:,.0f} ({min(ours):,.0f}-{max(ours):,.0f}) | {p:,.0f} ({min(ref):,.0f}-{max(ref):,.0f}) | {o / p:.2f} |")
if out:
    json.dump({"machine": model, "core": int(core), "threads": 1, "steps": int(steps), "warmup": int(warmup),
               "reps": int(reps), "pytorch": torch_version, "results": table}, open(out, "w"), indent=1)
    print(f"wrote {out}")
PY
