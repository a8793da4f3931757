#!/usr/bin/env python3
"""Expert-load statistics of one train_switch run, split into the part that
lasts and the part that changes from batch to batch.

A training batch's max/mean load can be high for two different reasons:
  - a lasting preference: one expert's load, averaged over many steps, is above
    1/E (the router prefers it for some kind of token, whatever the batch);
  - the batch's mix: the expert's load moves around its own average because this
    batch holds more of the tokens it takes.
The load-balance loss acts on the first; the second shrinks only with larger
batches or with routing that does not follow content.

Reads a metrics JSONL written with train.log_interval=1 (every training batch)
and prints one JSON object:
  per MoE layer, over the batches after `--from` (default: the end of warm-up):
    batches, over (batches with max/mean >= 1.5), max and its step;
    lasting: the largest E * (an expert's mean load over a window of --window
      steps), windows from --lasting-from on (lasting_by_window: each window's
      first step and its largest);
    spread: median over experts and windows of the relative standard deviation
      of an expert's per-batch load inside the window;
  val: the last evaluation's val loss and its step.
With --thin OUT it also writes OUT: every --keep-every-th training line, every
evaluation line, and this summary as a last line {"load_stats": ...}.

Usage: moe_load_stats.py RUN.jsonl [--from 21] [--lasting-from 100]
                         [--window 200] [--thin OUT] [--keep-every 10]
"""
import argparse
import json
import os
import statistics


def layer_stats(steps, loads, ratios, first, lasting_from, window):
    rows = [(s, ld, r) for s, ld, r in zip(steps, loads, ratios) if s >= first]
    over = sum(r >= 1.5 for _, _, r in rows)
    top = max(rows, key=lambda x: x[2])
    experts = len(rows[0][1])
    by_window, spreads = [], []
    start = lasting_from
    last = max(steps)
    while start <= last:
        win = [ld for s, ld, _ in rows if start <= s < start + window]
        if len(win) >= max(2, window // 2):  # a short last window counts if half full
            hi = 0.0
            for e in range(experts):
                xs = [w[e] for w in win]
                m = statistics.mean(xs)
                hi = max(hi, m * experts)
                if m > 0:
                    spreads.append(statistics.pstdev(xs) / m)
            by_window.append([start, round(hi, 4)])
        start += window
    lasting = max((t for _, t in by_window), default=0.0)
    return {
        "batches": len(rows),
        "over": over,
        "max": round(top[2], 4),
        "max_step": top[0],
        "lasting": round(lasting, 4),
        "lasting_by_window": by_window,
        "spread": round(statistics.median(spreads), 4) if spreads else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--from", dest="first", type=int, default=21)
    ap.add_argument("--lasting-from", type=int, default=100)
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--thin")
    ap.add_argument("--keep-every", type=int, default=10)
    a = ap.parse_args()

    lines = [l for l in open(a.run) if l.strip()]
    rows = [json.loads(l) for l in lines]
    # Every training step's line carries "loss" (an evaluation step's line adds
    # "val_loss" to it); a dense run has no "moe" and gets only its val loss.
    train = [d for d in rows if "loss" in d]
    gaps = {b["step"] - p["step"] for p, b in zip(train, train[1:])}
    if gaps != {1}:
        raise SystemExit(f"{a.run}: steps are logged every {sorted(gaps)}; "
                         "every batch is needed (train.log_interval=1)")
    steps = [d["step"] for d in train]
    out = {"layers": []}
    for l in range(len(train[0].get("moe", []))):
        loads = [d["moe"][l]["load"] for d in train]
        ratios = [d["moe"][l]["max_over_mean"] for d in train]
        st = layer_stats(steps, loads, ratios, a.first, a.lasting_from, a.window)
        out["layers"].append(dict(layer=l, **st))
    evals = [d for d in rows if "val_loss" in d]
    if evals:
        out["val_loss"] = evals[-1]["val_loss"]
        out["val_step"] = evals[-1]["step"]
    out["from_step"] = a.first
    print(json.dumps(out))

    if a.thin:
        with open(a.thin + ".part", "w") as f:
            for line, d in zip(lines, rows):
                if "loss" not in d or "val_loss" in d or d["step"] % a.keep_every == 0:
                    f.write(line if line.endswith("\n") else line + "\n")
            f.write(json.dumps({"load_stats": out}) + "\n")
        os.replace(a.thin + ".part", a.thin)


if __name__ == "__main__":
    main()
