#!/usr/bin/env python3
"""Long-context attention against sequence length, from bench_attention's JSON.

  scripts/bench/plot_attention.py BENCH.json [OUT.png] [--pass fwd+bwd|fwd]

OUT.png defaults to BENCH.png. One PNG, three panels over n (log scale), bf16
rows of one pass:
  - milliseconds a call (log scale): PyTorch SDPA (where bench_attention was
    given its JSON, --sdpa), our dense causal kernel, the tiled window, routed
    attention (causal and balanced, k = 256 clusters and k = sqrt(n)) and
    block top-k;
  - speed-up over SDPA at the same n (log scale), with issue 18's bar for
    routed causal attention at 64k (20x) drawn as a line;
  - the share of each selective row's time spent choosing (cluster
    assignment and sort, block scores and top-k), with the bar's 30%.
What the table holds at one n the curves show over n: dense attention's
time grows as n^2, the window's and routing's more slowly, and where the
selection's fixed costs leave routing behind.
Needs gnuplot (Debian: gnuplot-nox); Python standard library only.
"""
import argparse
import json
import math
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from plot_metrics import check_png_out, q, run_gnuplot  # noqa: E402 (scripts/plot_metrics.py)

# The curves, in the key's order: (label, colour, a test of a row's op and n).
def _k(op):
    m = re.search(r"k=(\d+)", op)
    return int(m.group(1)) if m else None


CURVES = [
    ("SDPA (PyTorch)", "black", lambda op, n: op == "SDPA (PyTorch)"),
    ("dense causal (ours)", "#1f77b4", lambda op, n: op == "dense causal"),
    ("tiled window w=512", "#2ca02c", lambda op, n: op == "tiled window w=512"),
    ("routed causal k=256", "#d62728", lambda op, n: op == "routed causal k=256"),
    ("routed causal k=sqrt(n)", "#ff9896",
     lambda op, n: op.startswith("routed causal k=") and _k(op) == round(math.sqrt(n))),
    ("routed balanced k=256", "#9467bd", lambda op, n: op == "routed balanced k=256"),
    ("block64 top8", "#8c564b", lambda op, n: op == "block64 top8"),
]
SELECTIVE = {"routed causal k=256", "routed causal k=sqrt(n)", "routed balanced k=256", "block64 top8"}


def read(path):
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError as e:
        sys.exit(f"plot_attention: {path}: {e.strerror}")
    except json.JSONDecodeError as e:
        sys.exit(f"plot_attention: {path}: not JSON ({e.msg} at line {e.lineno})")
    if not isinstance(d, dict) or not isinstance(d.get("rows"), list):
        sys.exit(f"plot_attention: {path}: no 'rows' list (is it bench_attention --json output?)")
    return d


def points(d, pas):
    """{label: [(n, seconds, select_seconds)]} over the bf16 rows of pass `pas`."""
    out = {label: [] for label, _, _ in CURVES}
    for r in d["rows"]:
        if r.get("dtype") != "bf16" or r.get("pass") != pas or not r.get("seconds"):
            continue
        for label, _, match in CURVES:
            if match(r["op"], r["n"]):
                out[label].append((r["n"], r["seconds"], r.get("select_seconds") or 0.0))
    return {k: sorted(v) for k, v in out.items() if v}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bench", help="JSON written by bench_attention --json")
    ap.add_argument("out", nargs="?", help="PNG to write (default: BENCH with .png)")
    ap.add_argument("--pass", dest="pas", default="fwd+bwd", choices=["fwd+bwd", "fwd"],
                    help="which pass to plot (default fwd+bwd)")
    a = ap.parse_args()
    out = a.out or os.path.splitext(a.bench)[0] + ".png"
    check_png_out(out, "plot_attention")
    d = read(a.bench)
    pts = points(d, a.pas)
    if not pts:
        sys.exit(f"plot_attention: {a.bench}: no bf16 {a.pas} rows with a time")
    sdpa = {n: s for n, s, _ in pts.get("SDPA (PyTorch)", [])}
    ns = sorted({n for v in pts.values() for n, _, _ in v})
    colour = {label: c for label, c, _ in CURVES}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for i, (label, v) in enumerate(pts.items()):
            path = os.path.join(tmp, f"d{i}.dat")
            with open(path, "w") as f:
                for n, s, sel in v:
                    speed = sdpa[n] / s if n in sdpa else float("nan")
                    f.write(f"{n} {s * 1e3} {speed} {100.0 * sel / s}\n")
            files[label] = path

        def plot(col, labels, extra=""):
            lines = [f"{q(files[l])} using 1:{col} with linespoints lw 2 pt 7 ps 0.8 lc rgb {q(colour[l])} title {q(l)}"
                     for l in labels if l in files]
            return "plot " + ", ".join(lines + ([extra] if extra else []))

        xr = f"set xrange [{ns[0] / 1.4}:{ns[-1] * 1.4}]"
        xt = "set xtics (" + ", ".join(f'"{n // 1024}k" {n}' if n >= 1024 else f'"{n}" {n}' for n in ns) + ")"
        heads, hd = d.get("heads", "?"), d.get("head_dim", "?")
        title = (f"bench_attention on {d.get('device', '?')}: {heads} heads of {hd}, bf16, causal, "
                 f"{a.pas} ({os.path.basename(a.bench)})")
        g = ['set terminal pngcairo noenhanced size 1500,470 font ",9"', f'set output "{out}"',
             f'set multiplot layout 1,3 title {q(title)} font ",11"',
             "set grid; set logscale x 2; set xlabel 'sequence length n'", xr, xt, "set key top left opaque",
             "set logscale y; set ylabel 'ms a call'", "set title 'time'",
             plot(2, [l for l, _, _ in CURVES]),
             "set title 'speed-up over SDPA (its time / ours)'; set ylabel 'x SDPA'; set key bottom right opaque",
             plot(3, [l for l, _, _ in CURVES if l != "SDPA (PyTorch)"],
                  f"20 with lines dt 2 lc rgb 'gray' title 'issue 18 bar at 64k (20x)'")
             if sdpa else "set label 1 'no SDPA rows (bench_attention --sdpa)' at graph 0.1,0.5; plot 1/0 notitle",
             "unset label 1; unset logscale y; set yrange [0:100]; set ylabel '% of the time'",
             "set title 'share spent choosing (assignment, sort, scores, top-k)'; set key top right",
             plot(4, [l for l in pts if l in SELECTIVE], "30 with lines dt 2 lc rgb 'gray' title 'bar (30%)'"),
             "unset multiplot"]
        run_gnuplot("\n".join(g) + "\n", tmp, out, "plot_attention", a.bench)
    print(f"wrote {out}: {len(pts)} curves over n = {', '.join(str(n) for n in ns)}")


if __name__ == "__main__":
    main()
