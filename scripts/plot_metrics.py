#!/usr/bin/env python3
"""One PNG page from a metrics file written by `train_switch --metrics`.

  scripts/plot_metrics.py RUN.jsonl [OUT.png] [--title TEXT]

OUT.png defaults to RUN.png. Rows of the page:
  - training: loss and validation loss, learning rate, tokens/s, gradient norm;
  - per MoE layer (moe[]): the expert-load heat map over steps (experts x
    logged steps, colour = the expert's share of the layer's routing decisions
    in that training batch; white is an even share, 1/E), the fraction of
    assignments dropped over capacity (and over the held-out pass, val_moe[],
    at evaluations), and the router entropy against its maximum ln E;
  - adaptive depth, when a block reports `processed`: each such block's kept
    fraction and its causal predictor's accuracy;
  - routed attention, when a block reports cluster sizes: the mean and largest
    cluster per block, and the share of dense attention's query-key pairs.
Needs gnuplot (Debian: gnuplot-nox, which scripts/setup.sh installs); Python
standard library only.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

ROW_H = 270  # pixels per row of panels
WIDTH = 1500


def read(path):
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except OSError as e:
        sys.exit(f"plot_metrics: {path}: {e.strerror}")
    rows = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last and not lines[i].endswith("}"):  # a run still writing, or one that crashed mid-line
                print(f"plot_metrics: {path}:{i + 1}: a partial last line, left out", file=sys.stderr)
                continue
            sys.exit(f"plot_metrics: {path}:{i + 1}: not JSON ({e.msg})")
        # (Summary lines some scripts append, and --eval-only's lines appended
        # to a run's file at a step it logged, are no training steps.)
        if isinstance(d, dict) and "step" in d and not d.get("eval_only"):
            rows.append(d)
    if not rows:
        sys.exit(f"plot_metrics: {path}: no metrics lines (is it from train_switch --metrics?)")
    # A resumed run appends from its checkpoint's step on: the later line of
    # a step is the one that counts (the run that went on from there).
    by_step = {}
    for d in rows:
        by_step[d["step"]] = d
    return [by_step[s] for s in sorted(by_step)]


class Page:
    """Data files and gnuplot panels, laid out in rows."""

    def __init__(self, tmp):
        self.tmp, self.rows, self.nfiles = tmp, [], 0

    def data(self, lines):
        self.nfiles += 1
        path = os.path.join(self.tmp, f"d{self.nfiles}.dat")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def row(self, panels):
        """panels: list of (relative width, gnuplot commands)."""
        self.rows.append(panels)

    def steps(self, last):
        self.last = last

    def script(self, out, title):
        h = ROW_H * len(self.rows) + 40
        top = 1.0 - 40.0 / h  # room for the page title
        g = [f'set terminal pngcairo noenhanced size {WIDTH},{h} font ",9"',
             f'set output "{out}"',
             f'set multiplot title "{title}" font ",12"',
             "set grid; set key top right; set xlabel 'step' offset 0,0.5"]
        rh = top / len(self.rows)
        for r, panels in enumerate(self.rows):
            total = sum(w for w, _ in panels)
            x = 0.0
            for w, cmds in panels:
                # each panel starts from the same settings
                g += ["unset colorbox; unset logscale; set autoscale; set ytics autofreq; "
                      "set format y '%g'; set grid; set key top right noopaque",
                      f"set xrange [0:{self.last}]; set xtics {nice_step(self.last, max(3.0, 15 * w / total))}",
                      f"set origin {x:.4f},{top - (r + 1) * rh:.4f}",
                      f"set size {w / total:.4f},{rh:.4f}"]
                g += cmds
                x += w / total
        g.append("unset multiplot")
        return "\n".join(g) + "\n"


def nice_step(span, n):
    """A tic step of 1, 2 or 5 times a power of ten giving at most about n tics."""
    raw = max(span / max(n, 1.0), 1e-9)
    p = 10 ** math.floor(math.log10(raw))
    return next(m * p for m in (1, 2, 5, 10) if m * p >= raw)


def q(s):
    return '"' + s.replace('"', "'") + '"'


def series(rows, get):
    out = []
    for d in rows:
        try:
            v = get(d)
        except (KeyError, IndexError, TypeError):
            continue
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out.append(f"{d['step']} {v}")
    return out


def cell_edges(steps):
    """Each logged step's cell in the heat map runs from halfway to the
    previous logged step to halfway to the next."""
    edges = []
    for i, s in enumerate(steps):
        lo = (steps[i - 1] + s) / 2 if i else s - ((steps[1] - s) / 2 if len(steps) > 1 else 0.5)
        hi = (s + steps[i + 1]) / 2 if i + 1 < len(steps) else s + ((s - steps[i - 1]) / 2 if i else 0.5)
        edges.append((lo, hi))
    return edges


def training_row(page, rows):
    loss = page.data(series(rows, lambda d: d["loss"]))
    val = series(rows, lambda d: d.get("val_loss"))
    plots = [f'"{loss}" w l lw 1.5 lc rgb "#1f77b4" t "training loss"']
    if val:
        plots.append(f'"{page.data(val)}" w lp pt 7 ps 0.8 lw 2 lc rgb "#d62728" t "validation loss"')
    lr = page.data(series(rows, lambda d: d["lr"]))
    tps = page.data(series(rows, lambda d: d["tokens_per_s"] / 1e3))
    gn = page.data(series(rows, lambda d: d["grad_norm"]))
    # (A non-finite loss is logged as null: such steps are left out.)
    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)
    last = rows[-1]
    vals = [d for d in rows if finite(d.get("val_loss"))]
    loss_title = (f"loss (nats/token): last {last['loss']:.4f}" if finite(last.get("loss"))
                  else f"loss (nats/token): last step {last['step']} not finite") + (
        f", val {vals[-1]['val_loss']:.4f} at step {vals[-1]['step']}" if vals else "")
    values = [d[k] for d in rows for k in ("loss", "val_loss") if finite(d.get(k))]
    if not values:
        sys.exit("plot_metrics: no finite loss to plot")
    lo, hi = min(values), max(values)
    lo, hi = lo / 1.08, hi * 1.08
    mant = (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8) if hi / lo < 6 else (1, 2, 5)
    tics = ", ".join(f"{t * 10 ** e:g}" for e in range(-4, 4) for t in mant if lo <= t * 10 ** e <= hi)
    page.row([
        (2, [f"set title {q(loss_title)}", "set ylabel 'nats (log scale)'", "set logscale y",
             f"set yrange [{lo:.4g}:{hi:.4g}]", f"set ytics ({tics})" if tics else "", "plot " + ", ".join(plots)]),
        (1, ["set title 'learning rate'", "set ylabel ''", "set format y '%.1e'",
             f'plot "{lr}" w l lw 1.5 lc rgb "#2ca02c" notitle', "set format y '%g'"]),
        (1, ["set title 'throughput (thousand tokens/s)'", "set ylabel ''", "set yrange [0:*]",
             f'plot "{tps}" w l lw 1 lc rgb "#9467bd" notitle']),
        (1, ["set title 'gradient norm (before clipping)'", "set ylabel ''", "set logscale y",
             f'plot "{gn}" w l lw 1 lc rgb "#8c564b" notitle']),
    ])


def moe_rows(page, rows):
    train = [d for d in rows if d.get("moe")]
    if not train:
        return
    layers = [m["layer"] for m in train[0]["moe"]]
    steps = [d["step"] for d in train]
    edges = cell_edges(steps)
    for li, layer in enumerate(layers):
        experts = len(train[0]["moe"][li]["load"])
        even = 1.0 / experts
        cells = []
        for d, (lo, hi) in zip(train, edges):
            load = d["moe"][li]["load"]
            for e, share in enumerate(load):
                # boxxyerror: x y xlow xhigh ylow yhigh colour
                cells.append(f"{d['step']} {e} {lo} {hi} {e - 0.5} {e + 0.5} {share}")
        heat = page.data(cells)
        mom = [d["moe"][li]["max_over_mean"] for d in train]
        heat_title = (f"MoE layer {layer}: expert load per training batch "
                      f"(max/mean: median {sorted(mom)[len(mom) // 2]:.2f}, last {mom[-1]:.2f})")
        ytics = "set ytics 1" if experts <= 16 else "set ytics autofreq"
        drop = page.data(series(train, lambda d: d["moe"][li]["dropped"]))
        vdrop = series(rows, lambda d: next(m["dropped"] for m in d["val_moe"] if m["layer"] == layer))
        drop_plots = [f'"{drop}" w l lw 1 lc rgb "#ff7f0e" t "training"']
        top = max(float(x.split()[1]) for x in series(train, lambda d: d["moe"][li]["dropped"]) + vdrop)
        if vdrop:
            drop_plots.append(f'"{page.data(vdrop)}" w lp pt 7 ps 0.8 lw 2 lc rgb "#1f77b4" '
                              't "held-out pass"')
        ent = page.data(series(train, lambda d: d["moe"][li]["entropy"]))
        page.row([
            (3, [f"set title {q(heat_title)}", "set ylabel 'expert'", ytics,
                 f"set yrange [-0.5:{experts - 0.5}]", f"set xrange [{edges[0][0]}:{edges[-1][1]}]",
                 # white at an even share, red above it, blue below; 2/E and more saturate
                 f"set palette defined (0 '#2166ac', {even / 2} '#92c5de', {even} '#f7f7f7', "
                 f"{1.5 * even} '#f4a582', {2 * even} '#b2182b')",
                 f"set cbrange [0:{2 * even}]", "set colorbox",
                 f"set cblabel 'share of tokens (even: 1/{experts} = {even:.3g})'",
                 "unset grid",
                 f'plot "{heat}" u 1:2:3:4:5:6:7 w boxxyerror fs solid 1.0 noborder '
                 "lc palette z notitle",
                 "set grid; set ytics autofreq; set cblabel ''"]),
            (1, [f"set title 'layer {layer}: fraction dropped over capacity'", "set ylabel ''",
                 f"set yrange [0:{max(top * 1.6, 0.01):.4g}]",
                 "plot " + ", ".join(drop_plots)]),
            (1, [f"set title 'layer {layer}: router entropy (nats)'", "set ylabel ''",
                 "set key bottom right",
                 f"set yrange [0:{math.log(experts) * 1.08:.3f}]",
                 f'plot "{ent}" w l lw 1 lc rgb "#17becf" notitle, '
                 f'{math.log(experts)} w l dt 2 lc rgb "black" t "ln {experts} (uniform)"']),
        ])


def block_stat(rows, key):
    """{layer: ["step value", ...]} for the blocks that report `key`."""
    out = {}
    for d in rows:
        for b in d.get("layers", []):
            if key in b:
                out.setdefault(b["layer"], []).append(f"{d['step']} {b[key]}")
    return out


COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def lines(page, per_layer, style, title_fmt, dash=""):
    return [f'"{page.data(v)}" w l lw 1.5 {dash} lc rgb "{COLOURS[i % len(COLOURS)]}" '
            f"t {q(title_fmt.format(layer))}"
            for i, (layer, v) in enumerate(sorted(per_layer.items()))]


def depth_row(page, rows):
    kept = block_stat(rows, "processed")
    if not kept:
        return
    acc = block_stat(rows, "predictor_accuracy")
    plots = lines(page, kept, "", "block {} kept")
    spent = series(rows, lambda d: d["compute_fraction"])
    if spent:
        plots.append(f'"{page.data(spent)}" w l lw 1.5 dt 2 lc rgb "black" t "model FLOPs / dense"')
    panels = [(1, ["set title 'adaptive depth: fraction of tokens a block processes'",
                   "set ylabel 'fraction'", "set yrange [0:1.05]", "set key bottom right",
                   "plot " + ", ".join(plots)])]
    if acc:
        panels.append((1, ["set title 'adaptive depth: causal predictor agrees with the router'",
                           "set ylabel 'fraction'", "set yrange [0:1.05]", "set key bottom right",
                           "plot " + ", ".join(lines(page, acc, "", "block {}"))]))
    page.row(panels)


def attention_row(page, rows):
    mean = block_stat(rows, "cluster_size_mean")
    if not mean:
        return
    big = block_stat(rows, "cluster_size_max")
    pairs = block_stat(rows, "attention_pair_fraction")
    plots = lines(page, mean, "", "block {} mean") + lines(page, big, "", "block {} largest", "dt 2")
    panels = [(1, ["set title 'routed attention: cluster size (tokens)'", "set ylabel 'tokens'",
                   "set yrange [0:*]", "set offsets 0, 0, graph 0.5, 0",  # room for the key
                   "plot " + ", ".join(plots), "set offsets 0, 0, 0, 0"])]
    if pairs:
        panels.append((1, ["set title 'routed attention: query-key pairs computed / dense causal'",
                           "set ylabel 'fraction'", "set yrange [0:*]",
                           "plot " + ", ".join(lines(page, pairs, "", "block {}"))]))
    page.row(panels)


def check_png_out(out, tool):
    """Exits with one line where `out` cannot be gnuplot's PNG output (also
    scripts/bench/plot_attention.py's)."""
    if "\n" in out or '"' in out:
        sys.exit(f"{tool}: {out!r}: a PNG path without newlines or double quotes, please")
    if not os.path.isdir(os.path.dirname(out) or "."):
        sys.exit(f"{tool}: {out}: directory {os.path.dirname(out)} does not exist")
    if not shutil.which("gnuplot"):
        sys.exit(f"{tool}: gnuplot not found (Debian: apt-get install gnuplot-nox)")


def run_gnuplot(script, tmp, out, tool, source):
    """Runs gnuplot on `script` (written into tmp); exits with one line,
    gnuplot's stderr before it, where it wrote no `out`."""
    path = os.path.join(tmp, "page.gp")
    with open(path, "w") as f:
        f.write(script)
    r = subprocess.run(["gnuplot", path], capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(out):
        sys.stderr.write(r.stderr)
        sys.exit(f"{tool}: gnuplot failed writing {out} from {source}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("metrics", help="JSONL written by train_switch --metrics")
    ap.add_argument("out", nargs="?", help="PNG to write (default: METRICS with .png)")
    ap.add_argument("--title", help="page title (default: the metrics file's name)")
    a = ap.parse_args()
    out = a.out or os.path.splitext(a.metrics)[0] + ".png"
    check_png_out(out, "plot_metrics")
    rows = read(a.metrics)
    title = a.title or (f"{os.path.basename(a.metrics)}: {len(rows)} logged steps, "
                        f"last step {rows[-1]['step']}")
    with tempfile.TemporaryDirectory() as tmp:
        page = Page(tmp)
        page.steps(rows[-1]["step"])
        training_row(page, rows)
        moe_rows(page, rows)
        depth_row(page, rows)
        attention_row(page, rows)
        run_gnuplot(page.script(out, title.replace('"', "'")), tmp, out, "plot_metrics", a.metrics)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
