#!/usr/bin/env bash
# Per-op instruction shares of Switchyard's CPU training step, under callgrind
# (instruction counts repeat under load, unlike times).
#
#   scripts/bench/op_profile.sh CONFIG [BUILD_DIR] [OUT.callgrind]
#
# Runs BUILD_DIR/bin/train_switch (default build/) on configs/CONFIG.pbtxt for
# 4 steps with one thread and a small synthetic corpus, then prints each op's
# inclusive instruction count (its entry point in ops/<op>.cc, BLAS calls
# included) as a share of the training steps (callgrind collects inside
# Trainer::step only: start-up and the evaluation pass after the last step are
# not counted); "runtime" is the rest of the step (allocation and zero-filling
# of tensors, router noise draws, bookkeeping). Keeps the callgrind file when
# OUT is given.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
[ $# -ge 1 ] || { echo "usage: scripts/bench/op_profile.sh CONFIG [BUILD_DIR] [OUT.callgrind] (CONFIG: a name in configs/, e.g. tiny)" >&2; exit 2; }
config=$1 build=${2:-$src/build} out=${3:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
file=${out:-$tmp/callgrind.out}
OPENBLAS_NUM_THREADS=1 valgrind --tool=callgrind --toggle-collect='sy::Trainer::step(long)' \
  --callgrind-out-file="$file" "$build/bin/train_switch" \
  --config "$src/configs/$config.pbtxt" --threads 1 --set train.steps=4 --set train.warmup_steps=2 \
  --set train.eval_interval=0 --set train.eval_batches=1 --set data.synthetic_bytes=200000 > "$tmp/log" 2>&1 \
  || { cat "$tmp/log" >&2; exit 1; }
callgrind_annotate --inclusive=yes --threshold=100 "$file" > "$tmp/annotate"
python3 - "$tmp/annotate" "$config" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
incl = {}
for m in re.finditer(r"^\s*([\d,]+)\s+\([^)]*\)\s+\S*?:(sy::[\w:]+)\(", text, re.M):
    name = m.group(2)
    incl.setdefault(name, int(m.group(1).replace(",", "")))
step = int(re.search(r"([\d,]+)\s+\([^)]*\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
groups = [("GELU", ["gelu_forward", "gelu_backward"]),
          ("attention (dense, causal)", ["attention_forward", "attention_backward"]),
          ("matmul (Linear layers, router)", ["matmul_forward", "matmul_backward"]),
          ("expert FFN (GEMMs + GELU)", ["expert_ffn_forward", "expert_ffn_backward"]),
          ("layernorm", ["layernorm_forward", "layernorm_backward"]),
          ("cross-entropy", ["cross_entropy_forward", "cross_entropy_backward"]),
          ("AdamW + gradient norm", ["adamw_update", "grad_sq_sum", "clip_to_norm"])]
seen, rows = set(), []
for label, names in groups:
    n = sum(incl.get("sy::ops::" + f, 0) for f in names)
    seen.update(names)
    rows.append((label, n))
other = sum(v for k, v in incl.items()
            if re.fullmatch(r"sy::ops::\w+", k) and k.split("::")[-1] not in seen)
rows.append(("other ops (routing, dispatch, embedding, adds)", other))
rows.append(("runtime (allocation, zero fills, noise draws, bookkeeping)", step - sum(n for _, n in rows)))
print(f"{sys.argv[2]}: 4 training steps (Trainer::step): {step / 1e6:,.0f} M instructions")
print("| part | M instructions | share |")
print("|---|---|---|")
for label, n in rows:
    print(f"| {label} | {n / 1e6:,.0f} | {100 * n / step:.1f}% |")
PY
