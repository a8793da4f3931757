#!/usr/bin/env python3
"""Turns the metrics JSONL of an experiment's runs into the small CSV its plot
is drawn from (docs/<plot>.csv, next to docs/<plot>.png). The runs themselves
are not kept in the repository: the experiment scripts write them under RUNS
(default build/runs), call this, then plot from the CSV.

Usage: runs_to_csv.py PLOT RUNS > docs/PLOT.csv
PLOT is one of: moe_vs_dense, moe_balance, moe_frontier, moe_seeds,
moe_load_parts, moe_sweep, depth_vs_dense, routed_vs_local, budget,
budget_costs, mixtral_tiny_vs_shakespeare_small, routed_vs_local_rope,
upcycling.
A run that is missing is named on stderr and left out.
Standard library only.
"""
import csv
import glob
import json
import os
import re
import sys


def rows(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def have(path):
    if os.path.exists(path):
        return True
    print(f"runs_to_csv: no {path}, left out", file=sys.stderr)
    return False


def num(x):
    return f"{x:.6g}"


def last_val(path):
    return [d["val_loss"] for d in rows(path) if "val_loss" in d][-1]


def val_curves(w, runs, names):
    w.writerow(["run", "step", "val_loss"])
    for name in names:
        f = f"{runs}/{name}.jsonl"
        if have(f):
            for d in rows(f):
                if "val_loss" in d:
                    w.writerow([name, d["step"], num(d["val_loss"])])


def moe_vs_dense(w, runs):
    val_curves(w, runs, ["tiny_synthetic", "switch_tiny_synthetic",
                         "tiny_shakespeare", "switch_tiny_shakespeare"])


def moe_balance(w, runs):
    # The last MoE layer's (layer 1's) per-batch max/mean at each logged step.
    w.writerow(["run", "step", "max_over_mean"])
    for name in ["switch_tiny_synthetic", "switch_tiny_synthetic_nolb",
                 "switch_tiny_shakespeare", "switch_tiny_synthetic_b64_seq"]:
        f = f"{runs}/{name}.jsonl"
        if have(f):
            for d in rows(f):
                if "moe" in d:
                    w.writerow([name, d["step"], num(d["moe"][-1]["max_over_mean"])])


def moe_frontier(w, runs):
    # One row per switch run: val loss at the last evaluation and the share (%)
    # of logged steps from step 100 with max/mean >= 1.5, per layer; dense tiny
    # (seed 1234) as a row without load.
    w.writerow(["name", "val_loss", "over_L0_pct", "over_L1_pct"])
    files = sorted(glob.glob(f"{runs}/frontier/*.jsonl"))
    files += [f for f in [f"{runs}/switch_tiny_synthetic.jsonl"] if have(f)]
    for f in files:
        r = rows(f)
        val = [d["val_loss"] for d in r if "val_loss" in d][-1]
        moe = [d["moe"] for d in r if "moe" in d and d["step"] >= 100]
        if not moe:
            continue
        over = [100.0 * sum(m[l]["max_over_mean"] >= 1.5 for m in moe) / len(moe)
                for l in range(len(moe[0]))]
        w.writerow([os.path.basename(f)[:-6], f"{val:.4f}", *(f"{o:.1f}" for o in over)])
    if have(f"{runs}/tiny_synthetic.jsonl"):
        w.writerow(["dense_tiny", f"{last_val(f'{runs}/tiny_synthetic.jsonl'):.4f}", "", ""])


def moe_seeds(w, runs):
    # The table of moe_seeds.sh: each run's last line holds moe_load_stats.py's
    # summary. Dense tiny at the seeds other scripts ran is read from them.
    dense = {("syn", "1234"): f"{runs}/tiny_synthetic.jsonl",
             ("syn", "2"): f"{runs}/frontier/dense_seed2.jsonl",
             ("txt", "1234"): f"{runs}/tiny_shakespeare.jsonl"}
    found = {}
    for f in sorted(glob.glob(f"{runs}/seeds/*.jsonl")):
        name = os.path.basename(f)[:-6]
        m = re.fullmatch(r"(.*)_(syn|txt)_s(\d+)", name)
        if not m:
            continue
        if m.group(1) == "dense":
            dense[(m.group(2), m.group(3))] = f
        else:
            found[name] = (m.group(2), m.group(3), f)
    w.writerow(["name", "corpus", "seed", "val_loss", "dense_val_loss",
                "over_L0", "over_L1", "max_L0", "max_L1",
                "lasting_L0", "lasting_L1", "spread_L0", "spread_L1"])
    for name, (corpus, seed, f) in found.items():
        stats = rows(f)[-1]["load_stats"]
        d = dense.get((corpus, seed))
        dv = f"{last_val(d):.4f}" if d and os.path.exists(d) else ""
        L = stats["layers"]
        col = lambda k, fmt: [fmt % x[k] for x in L]
        w.writerow([name, corpus, seed, f"{stats['val_loss']:.4f}", dv,
                    *col("over", "%d"), *col("max", "%.2f"),
                    *col("lasting", "%.2f"), *col("spread", "%.2f")])


def moe_load_parts(w, runs):
    # switch_tiny (seed 1234) on both corpora: each layer's per-batch max/mean
    # (every 10th batch after warm-up) and its lasting part, one row per
    # 200-step window at the window's first step (series lasting_L<l>).
    w.writerow(["corpus", "series", "step", "max_over_mean"])
    for c in ["syn", "txt"]:
        f = f"{runs}/seeds/switch_{c}_s1234.jsonl"
        if not have(f):
            continue
        r = rows(f)
        stats = r[-1]["load_stats"]["layers"]
        for l in range(len(stats)):
            for d in r:
                if "moe" in d and d["step"] > 20:
                    w.writerow([c, f"batch_L{l}", d["step"], num(d["moe"][l]["max_over_mean"])])
            for s, v in stats[l]["lasting_by_window"]:
                w.writerow([c, f"lasting_L{l}", s, num(v)])


def moe_sweep(w, runs):
    # Left: val loss at 64 sequences, two seeds. Right: switch_tiny's layer-1
    # load per training batch and over the held-out pass, noise 0.3 and 0.
    w.writerow(["series", "step", "value"])

    def put(series, name, what, layer=1):
        f = f"{runs}/{name}.jsonl"
        if not have(f):
            return
        for d in rows(f):
            if what == "val" and "val_loss" in d:
                w.writerow([series, d["step"], num(d["val_loss"])])
            elif what in ("train", "heldout"):
                key = "moe" if what == "train" else "val_moe"
                if key in d:
                    v = next(m["max_over_mean"] for m in d[key] if m["layer"] == layer)
                    w.writerow([series, d["step"], num(v)])

    put("val_dense_s1234", "sweep/dense_b64", "val")
    put("val_dense_s2", "sweep/dense_b64_seed2", "val")
    put("val_switch_s1234", "switch_tiny_synthetic_b64_seq", "val")
    put("val_switch_s2", "sweep/switch_b64_seq_seed2", "val")
    put("load_train_noise0.3", "switch_tiny_synthetic", "train")
    put("load_heldout_noise0.3", "switch_tiny_synthetic", "heldout")
    put("load_train_noise0", "switch_tiny_synthetic_noise0", "train")
    put("load_heldout_noise0", "switch_tiny_synthetic_noise0", "heldout")


def depth_vs_dense(w, runs):
    # Val loss against the training compute spent so far: step x 3 (forward +
    # backward) x the model's FLOPs per token x 2048 tokens per step.
    tokens = 16 * 128
    w.writerow(["run", "step", "train_tflop", "val_loss", "compute_fraction"])
    for name in ["tiny_flops", "depth_tiny_flops"]:
        f = f"{runs}/{name}.jsonl"
        if have(f):
            for d in rows(f):
                if "val_loss" in d:
                    tf = d["step"] * 3 * d["flops_per_token"] * tokens / 1e12
                    w.writerow([name, d["step"], num(tf), num(d["val_loss"]),
                                num(d["compute_fraction"])])


def routed_vs_local(w, runs):
    val_curves(w, runs, ["local_copy", "routed_copy", "local_copy_seed2", "routed_copy_seed2"])


BUDGET_RUNS = [f"{kind}_b{b}" for b in ("0.5", "0.75", "1.0") for kind in ("hetero", "uniform", "dense")]
BUDGET_RUNS.append("hetnoise0_b0.75")


def budget(w, runs):
    # One row per run of scripts/experiments/budget.sh. Realised compute is
    # measured, not planned: over the logged training steps of the second half
    # of the run, the mean of forward FLOPs per token over dense tiny's
    # (dense_b1.0), and of the MoE layers' realised expert cost per token in
    # dense-FFN units (the two layers' mean; dense runs: ffn_hidden / 256).
    # Val loss at the last evaluation, and the lowest of the run.
    w.writerow(["run", "kind", "budget", "val_loss", "best_val_loss", "compute_vs_dense",
                "ffn_cost", "ffn_cost_before_budget", "expected_cost", "budget_dropped",
                "capacity_dropped", "val_ffn_cost"])
    ref = f"{runs}/budget/dense_b1.0.jsonl"
    if not have(ref):
        return
    dense_fpt = rows(ref)[-1]["dense_flops_per_token"]
    for name in BUDGET_RUNS:
        f = f"{runs}/budget/{name}.jsonl"
        if not have(f):
            continue
        r = rows(f)
        kind, b = name.split("_b")
        late = [d for d in r if d["step"] >= r[-1]["step"] // 2 and "flops_per_token" in d]
        mean = lambda xs: sum(xs) / len(xs)
        vals = [d["val_loss"] for d in r if "val_loss" in d]
        fpt = mean([d["flops_per_token"] for d in late]) / dense_fpt
        if kind == "dense":
            cost = before = expected = float(b)
            bdrop = cdrop = 0.0
            val_cost = float(b)
        else:
            layers = lambda d, key: mean([m[key] for m in d["moe"]])
            cost = mean([layers(d, "realized_cost") for d in late])
            before = mean([layers(d, "cost_before_budget") for d in late])
            expected = mean([layers(d, "expected_cost") for d in late])
            bdrop = mean([layers(d, "budget_dropped") for d in late])
            cdrop = mean([layers(d, "dropped") for d in late])
            last_eval = [d for d in r if "val_moe" in d][-1]
            val_cost = layers({"moe": last_eval["val_moe"]}, "realized_cost")
        w.writerow([name, kind, b, num(vals[-1]), num(min(vals)), num(fpt), num(cost), num(before),
                    num(expected), num(bdrop), num(cdrop), num(val_cost)])


def budget_costs(w, runs):
    # The heterogeneous runs' cost per token over training (dense-FFN units,
    # the two MoE layers' mean): realised (kept assignments), before the hard
    # budget's drops (what the router asked for), expected (soft, from the
    # probabilities), and the budget.
    w.writerow(["run", "step", "realized", "before_budget", "expected", "budget"])
    for b in ("0.5", "0.75", "1.0"):
        f = f"{runs}/budget/hetero_b{b}.jsonl"
        if have(f):
            for d in rows(f):
                if "moe" in d:
                    m = d["moe"]
                    mean = lambda key: sum(x[key] for x in m) / len(m)
                    w.writerow([f"hetero_b{b}", d["step"], num(mean("realized_cost")),
                                num(mean("cost_before_budget")), num(mean("expected_cost")), b])


def mixtral_tiny_vs_shakespeare_small(w, runs):
    val_curves(w, runs, ["shakespeare_small", "mixtral_tiny", "mixtral_tiny_gpt2_layout"])


def routed_vs_local_rope(w, runs):
    val_curves(w, runs, ["local_copy_rope", "routed_copy_rope"])


def upcycling(w, runs):
    # Validation curves on one step axis: the runs that start from the dense
    # 1000-step checkpoint (--init-from) count their steps after its 1000.
    w.writerow(["run", "step", "val_loss"])
    for s in ["1234", "2"]:
        for name, offset in [("dense1000", 0), ("dense2000", 0), ("moe2000", 0), ("dense_cont", 1000),
                             ("upcycled", 1000), ("upcycled_switch", 1000), ("dense_cont_lr5e-4", 1000),
                             ("upcycled_lr5e-4", 1000), ("upcycled_drop0.5", 1000)]:
            f = f"{runs}/{name}_s{s}.jsonl"
            if have(f):
                for d in rows(f):
                    if "val_loss" in d:
                        w.writerow([f"{name}_s{s}", d["step"] + offset, num(d["val_loss"])])


PLOTS = {f.__name__: f for f in [moe_vs_dense, moe_balance, moe_frontier, moe_seeds,
                                 moe_load_parts, moe_sweep, depth_vs_dense, routed_vs_local,
                                 budget, budget_costs, mixtral_tiny_vs_shakespeare_small,
                                 routed_vs_local_rope, upcycling]}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in PLOTS:
        sys.exit(__doc__)
    PLOTS[sys.argv[1]](csv.writer(sys.stdout, lineterminator="\n"), sys.argv[2])
