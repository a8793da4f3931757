#!/usr/bin/env python3
"""How much of the dense gradient all-reduce backward hides (issue 19: >= 60%
at 4 CPU ranks), measured three ways in one call:

  hidden    1 - exposed_on / all_reduce_off: what the all-reduce costs when
            it runs alone (the run without overlap, where all of it is
            exposed) against what the overlapped run still waits for after
            backward (finish(), runtime/grad_reducer.h). The bar's figure.
  reported  1 - exposed_on / all_reduce_on, as the metrics give it: the
            overlapped collectives take longer (cores shared with backward,
            ranks arriving at a bucket at different times), which inflates
            the denominator, so this reads high
  saved     (step_off - step_on) / all_reduce_off: the step time overlap
            took off; it also charges the overlap for what its thread costs
            backward, and carries the step time's noise
(rank 0's metrics; means over the timed steps).
Two runs of train_switch under mpirun, overlap on then off, same seed and
steps; the first --skip logged steps (allocation, warm-up) and the last
(its line includes the final evaluation) are left out.

  python3 scripts/bench/grad_overlap.py --np 4 [--json out.json] [--set k=v ...]

The default model is dense (no experts: every gradient is a dense one), big
enough for several buckets: d_model 384, 6 layers, ffn 1536, seq 256, batch
8 a rank, 4 MiB buckets (about 43 MiB of gradients).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

# The cores this process may run on (nproc), not the host's (os.cpu_count):
# a machine's CPU set may be a slice of a larger host.
CORES = len(os.sched_getaffinity(0))

DEFAULT_SETS = [
    "model.d_model=384", "model.n_layers=6", "model.n_heads=6", "model.ffn_hidden=1536", "model.seq_len=256",
    "parallel.grad_bucket_mb=4", "data.source=SYNTHETIC", "data.path=",
]


def run(args, overlap, tmp):
    metrics = os.path.join(tmp, f"overlap_{overlap}.jsonl")
    cmd = shlex.split(args.mpirun) + ["-np", str(args.np), args.bin, "--config", args.config]
    sets = DEFAULT_SETS + [
        f"train.batch={8 * args.np}", f"train.steps={args.steps}", "train.warmup_steps=0", "train.log_interval=1",
        "train.eval_interval=100000", "train.eval_batches=1", "train.checkpoint_interval=0",
        f"train.checkpoint_dir={os.path.join(tmp, 'ckpt')}", f"parallel.overlap_grad_reduce={str(overlap).lower()}",
    ] + args.set
    for s in sets:
        cmd += ["--set", s]
    cmd += ["--threads", str(args.blas_threads), "--metrics", metrics, "--overwrite"]
    print("+ " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=args.timeout)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-3000:])
        raise SystemExit(f"grad_overlap.py: train_switch (overlap {overlap}) exited with {r.returncode}")
    lines = [json.loads(l) for l in open(metrics) if l.strip()]
    # The timed steps: after --skip, and before the last (whose line is
    # written after the final evaluation, which its elapsed clock includes).
    timed = [l for l in lines if l["step"] > args.skip][:-1]
    if len(timed) < 2 or "comm_all_reduce_s" not in timed[0]:
        raise SystemExit(f"grad_overlap.py: {len(timed)} timed steps with all-reduce figures in {metrics} "
                         f"(need --steps > --skip + 2 and --np > 1)")
    before = [l for l in lines if l["step"] <= args.skip][-1]
    steps = timed[-1]["step"] - before["step"]
    r = {
        "step_s": (timed[-1]["elapsed_s"] - before["elapsed_s"]) / steps,
        "all_reduce_s": sum(l["comm_all_reduce_s"] for l in timed) / steps,
        "exposed_s": sum(l["comm_all_reduce_exposed_s"] for l in timed) / steps,
        "final_loss": lines[-1]["loss"],
    }
    # Without overlap every line has exposed == all-reduce; with it, finish()
    # waits for less than the collectives took (or the reducer fell back:
    # an MPI without MPI_THREAD_MULTIPLE, runtime/grad_reducer.h).
    if overlap and all(l["comm_all_reduce_exposed_s"] == l["comm_all_reduce_s"] for l in timed):
        raise SystemExit("grad_overlap.py: the overlapped run reported every all-reduce as exposed: "
                         "the reducer did not overlap (see train_switch's log)")
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--np", type=int, default=4)
    p.add_argument("--bin", default="build/bin/train_switch")
    p.add_argument("--config", default="configs/tiny.pbtxt")
    p.add_argument("--steps", type=int, default=14)
    p.add_argument("--skip", type=int, default=4, help="logged steps left out at the start")
    p.add_argument("--set", action="append", default=[], help="more overrides, after the defaults")
    p.add_argument("--mpirun", default="mpirun --oversubscribe --bind-to none",
                   help="(unbound: a rank's BLAS threads and its reducer thread on cores of their own)")
    p.add_argument("--timeout", type=float, default=900, help="seconds a run may take")
    p.add_argument("--blas-threads", type=int, default=0,
                   help="OpenBLAS threads a rank (default: cores / np - 1, a core a rank left for its reducer)")
    p.add_argument("--json")
    args = p.parse_args()
    if args.np < 2 or args.skip < 1 or args.steps <= args.skip + 2:
        raise SystemExit("grad_overlap.py: need --np >= 2, --skip >= 1 and --steps > --skip + 2")
    if args.blas_threads <= 0:
        args.blas_threads = max(1, CORES // args.np - 1)
    with tempfile.TemporaryDirectory() as tmp:
        on, off = run(args, True, tmp), run(args, False, tmp)
    if off["all_reduce_s"] <= 0 or on["all_reduce_s"] <= 0:
        raise SystemExit("grad_overlap.py: no all-reduce time was reported")
    hidden = 1 - on["exposed_s"] / off["all_reduce_s"]
    reported = 1 - on["exposed_s"] / on["all_reduce_s"]
    saved = (off["step_s"] - on["step_s"]) / off["all_reduce_s"]
    print(f"{'':10} {'step ms':>9} {'all-reduce ms':>14} {'exposed ms':>11} {'final loss':>11}")
    for name, r in (("overlap", on), ("no overlap", off)):
        print(f"{name:10} {r['step_s'] * 1e3:9.1f} {r['all_reduce_s'] * 1e3:14.1f} {r['exposed_s'] * 1e3:11.1f} "
              f"{r['final_loss']:11.5f}")
    print(f"hidden: {hidden:.1%} (bar 60%)   as the metrics report it: {reported:.1%}   "
          f"step time saved / all-reduce time: {saved:.1%}   ({args.np} ranks, {args.blas_threads} BLAS "
          f"threads each, {CORES} cores)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ranks": args.np, "cores": CORES, "blas_threads": args.blas_threads, "overlap": on, "no_overlap": off,
                       "hidden": hidden, "hidden_reported": reported, "saved_share": saved, "sets": DEFAULT_SETS + args.set}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
