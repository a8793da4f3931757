#!/usr/bin/env python3
"""Two runs of one benchmark side by side: bench_ops's or bench_attention's
JSON, or two op profiles (train_switch --op-profile), from before a change
and from after it, row by row (before ms, now ms, now / before), the rows
that moved most first (2x slower and 2x faster alike), then the rows only
one run has, then the ops and parts of the profiles inside both runs. For
the GPU run after sessions without one: what the "changed since" list
expected, read off one table.

  python3 scripts/bench/compare_runs.py docs/gpu/bench_ops_2026-12-04b.json bench_ops.json
  python3 scripts/bench/compare_runs.py docs/gpu/bench_attention_2026-12-04b.json bench_attention.json
  python3 scripts/bench/compare_runs.py switch_gpu_profile_before.json switch_gpu_profile.json

Rows match by name and shape (bench_ops: op, shape; bench_attention: op,
pass, dtype, n; an op profile: the step, each op and each part by name). A
row not timed in a run (seconds 0: its case threw) is "not timed" there and
listed first; rows timed in neither are named at the end. Runs on different
devices are compared all the same, with a line saying so first: their
ratios then mix the change with the machine. --min-change R lists only the
rows whose time moved by more than R (0.05: 5%; default 0: any change).
Bad input: one line, exit 2.
"""
import argparse
import json
import math
import signal
import sys


def bad(message):
    print(f"compare_runs: {message}", file=sys.stderr)
    sys.exit(2)


def load(path):
    try:
        with open(path) as f:
            j = json.load(f)
    except OSError as e:
        bad(f"{path}: cannot be read ({e.strerror})")
    except ValueError as e:
        bad(f"{path}: not JSON ({e})")
    if not isinstance(j, dict):
        bad(f"{path}: not a benchmark's JSON (want an object with \"ops\" or \"rows\")")
    if isinstance(j.get("ops"), list) and isinstance(j.get("step_ms"), (int, float)):
        # An op profile (train_switch --op-profile, core/op_profile.h): the
        # step, its ops and their parts, each by its time a step.
        kind = "op profile"
        rows = [{"op": "(the step)", "seconds": j["step_ms"] / 1e3}]
        for field, label in (("ops", "op"), ("parts", "part")):
            for r in j.get(field) or []:
                if not isinstance(r, dict) or not isinstance(r.get(label), str) or \
                        not isinstance(r.get("ms_per_step"), (int, float)):
                    bad(f"{path}: a profile row without {label} and ms_per_step: {json.dumps(r)[:120]}")
                rows.append({"op": r[label], "seconds": r["ms_per_step"] / 1e3})
    elif isinstance(j.get("ops"), list):
        kind, rows = "bench_ops", j["ops"]
    elif isinstance(j.get("rows"), list):
        kind, rows = "bench_attention", j["rows"]
    else:
        bad(f"{path}: not a benchmark's JSON (want an object with \"ops\" or \"rows\")")
    keyed = {}
    for r in rows:
        if not isinstance(r, dict) or not isinstance(r.get("op"), str) or not isinstance(r.get("seconds", 0), (int, float)):
            bad(f"{path}: a row without op and seconds: {json.dumps(r)[:120]}")
        if kind != "bench_attention":
            key = (r["op"], str(r.get("shape", "")))
            if r["op"].startswith("attention_variant"):  # (several a shape: the variant's name from the note)
                key += (variant_name(str(r.get("note", ""))),)
        else:
            key = (r["op"], str(r.get("pass", "")), str(r.get("dtype", "")), str(r.get("n", "")))
        keyed[key] = r
    return kind, j, keyed


def variant_name(note):
    """An attention variant row's name: its note up to the colon, after any
    "queued ... us; " that bench_ops puts first (bar_ratios.py reads it too)."""
    if note.startswith("queued ") and "; " in note:
        note = note.split("; ", 1)[1]
    return note.split(":")[0]


def name(key):
    return " ".join(k for k in key if k)


def profile_rows(j):
    """(profile, 'op'/'part', name) -> ms per step, from a run's profiles."""
    out = {}
    for prof, p in (j.get("profiles") or {}).items():
        if not isinstance(p, dict):
            continue
        for field, label in (("ops", "op"), ("parts", "part")):
            for r in p.get(field) or []:
                if isinstance(r, dict) and isinstance(r.get(label), str) and isinstance(r.get("ms_per_step"), (int, float)):
                    out[(prof, r[label])] = r["ms_per_step"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before")
    ap.add_argument("now")
    ap.add_argument("--min-change", type=float, default=0.0, help="list only rows that moved by more than this fraction")
    args = ap.parse_args()
    if not args.min_change >= 0:
        bad(f"--min-change {args.min_change}: want a fraction >= 0")
    kind_b, jb, before = load(args.before)
    kind_n, jn, now = load(args.now)
    if kind_b != kind_n:
        bad(f"{args.before} is {kind_b}'s JSON, {args.now} is {kind_n}'s: compare runs of one benchmark")
    db, dn = jb.get("device", "?"), jn.get("device", "?")
    print(f"{kind_n}: before {args.before} ({db}), now {args.now} ({dn})")
    if db != dn:
        print(f"devices differ ({db} / {dn}): the ratios mix the change with the machine")

    both, only_before, only_now, untimed = [], [], [], []
    for key in sorted(set(before) | set(now)):
        b, n = before.get(key), now.get(key)
        if b is None:
            only_now.append(key)
        elif n is None:
            only_before.append(key)
        elif not (b.get("seconds", 0) > 0 or n.get("seconds", 0) > 0):
            untimed.append(key)
        else:
            both.append((key, b.get("seconds", 0), n.get("seconds", 0), n.get("wrong", -1)))

    def ratio(item):
        _, b, n, _ = item
        return n / b if b > 0 and n > 0 else float("inf")

    width = max([len(name(k)) for k, *_ in both] + [10])
    print(f"{'row':<{width}} {'before ms':>11} {'now ms':>11} {'now/before':>11}")
    listed = 0
    # (moved: |log(now / before)|, so 2x slower and 2x faster weigh alike)
    for item in sorted(both, key=lambda it: abs(math.log(ratio(it))) if ratio(it) != float("inf") else 1e9, reverse=True):
        key, b, n, wrong = item
        r = ratio(item)
        if r != float("inf") and abs(r - 1) <= args.min_change:
            continue
        cell = lambda s: f"{s * 1e3:>11.4f}" if s > 0 else f"{'not timed':>11}"
        rtxt = f"{r:>10.3f}x" if r != float("inf") else f"{'-':>11}"
        flag = f"  ({wrong} wrong now)" if wrong > 0 else ""
        print(f"{name(key):<{width}} {cell(b)} {cell(n)} {rtxt}{flag}")
        listed += 1
    print(f"{listed} of {len(both)} rows timed in both runs listed" +
          (f" (moved by more than {args.min_change:.0%})" if args.min_change > 0 else ""))
    if only_before:
        # (in the count's line format, which gpu_check's summary keeps: a run
        # cut off by its budget must not read as a clean comparison)
        cut = "" if jn.get("complete", True) else ", the run incomplete"
        print(f"{len(only_before)} of {len(only_before) + len(both) + len(untimed)} rows of the record missing now{cut}")
    for label, keys in (("only before", only_before), ("only now", only_now), ("timed in neither", untimed)):
        if keys:
            print(f"{label} ({len(keys)}): " + "; ".join(name(k) for k in keys))

    pb, pn = profile_rows(jb), profile_rows(jn)
    shared = [(k, pb[k], pn[k]) for k in set(pb) & set(pn)]
    moved = lambda b, n: abs(math.log(n / b)) if b > 0 and n > 0 else float("inf")
    shared = sorted((x for x in shared if x[1] > 0 and abs(x[2] / x[1] - 1) > args.min_change),
                    key=lambda x: -moved(x[1], x[2]))
    if shared:
        print("profiles, ms a step, before -> now (the rows that moved most first):")
        for (prof, row), b, n in shared:
            r = f"{n / b:.3f}x" if b > 0 else "-"
            print(f"  {prof}: {row}: {b:.4f} -> {n:.4f} ({r})")
    gone = sorted(k for k in set(pb) - set(pn) if k[0] in {p for p, _ in pn})
    if gone:
        print("profile rows gone (in a profile both runs have): " + "; ".join(f"{p}: {r}" for p, r in gone))


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # (| head: end quietly)
    main()
