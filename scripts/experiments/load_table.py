#!/usr/bin/env python3
"""One row per run of scripts/experiments/sinkhorn.sh or hash_routing.sh, from
its metrics JSONL (train.log_interval=1): per MoE layer, the share of training batches after
warm-up (steps 21 on) with max/mean load under 1.5, the held-out pass's
max/mean load and unserved share at the last evaluation and the median over
the evaluations from step 1000, the mean share of training assignments
dropped over capacity after warm-up; the last val loss; the median tokens/s.

Usage: load_table.py NAME=RUN.jsonl ...   (CSV on stdout)
"""
import json
import statistics
import sys


def row(name, path):
    train, evals = [], []
    for line in open(path):
        d = json.loads(line)
        if "val_loss" in d:
            evals.append(d)
        if "moe" in d and d.get("step", 0) >= 21:
            train.append(d)
    layers = len(train[0]["moe"])
    out = {"name": name, "val_loss": f"{evals[-1]['val_loss']:.4f}",
           "tok_s": f"{statistics.median(d['tokens_per_s'] for d in train):.0f}"}
    late = [e for e in evals if e["step"] >= 1000] or evals[-1:]
    for l in range(layers):
        ratios = [d["moe"][l]["max_over_mean"] for d in train]
        out[f"train_under_L{l}"] = f"{100 * sum(r < 1.5 for r in ratios) / len(ratios):.1f}"
        out[f"train_drop_L{l}"] = f"{100 * statistics.mean(d['moe'][l]['dropped'] for d in train):.2f}"
        out[f"heldout_L{l}"] = f"{evals[-1]['val_moe'][l]['max_over_mean']:.2f}"
        out[f"heldout_med_L{l}"] = f"{statistics.median(e['val_moe'][l]['max_over_mean'] for e in late):.2f}"
        out[f"unserved_L{l}"] = f"{100 * evals[-1]['val_moe'][l]['unserved']:.1f}"
    return out


def checked_row(name, path):
    """row(), or one line saying which run cannot give one, and exit 1."""
    try:
        return row(name, path)
    except OSError as e:
        sys.exit(f"load_table.py: {name}: cannot read {path}: {e.strerror}")
    except (IndexError, KeyError, ValueError) as e:
        sys.exit(f"load_table.py: {name}: {path} has no logged MoE step from 21 on and an evaluation "
                 f"(train.log_interval=1, a MoE config, train.steps > 20): {type(e).__name__} {e}")


rows = [checked_row(*a.split("=", 1)) for a in sys.argv[1:]]
print(",".join(rows[0]))
for r in rows:
    print(",".join(r.values()))
