#!/usr/bin/env python3
"""PyTorch SDPA at bench_ops' dense causal attention shapes, for the side-by-side comparison.

torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True) in bf16 on one GPU,
forward and forward + backward, at 8 heads of 64 and of 128, T = 4k and 16k, B * T = 16k tokens
(the shapes of examples/bench_ops.cc). q, k, v are strided views of one packed (B, T, 3, H, D)
tensor, like Switchyard's (B, T, 3C) qkv. Timing: CUDA events around each call, median of
--iters runs after --warmup; a call that takes under 1 ms alone is timed as calls back to
back between the two events, as many as fill about 1 ms (at most 200, the row's "reps"),
so that Python's and autograd's dispatch between the events is not counted as the kernels'
time (bench_attention times its own rows the same way). Work by formula, as bench_attention
counts it: forward 2 * 2 * B * H * T(T+1)/2 * D (the causal pairs), backward 2.5x that. A
table on stdout, then one line of JSON; --json FILE is rewritten after every shape
("complete": false until the last), so a run cut off keeps the shapes it finished.

    python3 scripts/bench/torch_attention.py [--backend flash] [--json torch_attention.json]

Long context (examples/bench_attention.cc's shapes, one sequence of n tokens, 8 heads of 64):

    python3 scripts/bench/torch_attention.py --lengths 4096,16384,65536 --head-dims 64 --batch 1 \
        --json torch_attention_long.json

--shapes BxT,... adds batches of short sequences at each head dim: bench_attention's
"dense B<k> T<n/k>" rows, routed attention's k clusters of n/k tokens as one batch (the
attention part's floor when clusters are equal), e.g. --shapes 256x256 for k = 256 at 64k.
"""
import argparse
import json
import os
import statistics
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16384, help="B * T")
    ap.add_argument("--quick", action="store_true", help="one small shape (a smoke test)")
    ap.add_argument("--lengths", default="", help="sequence lengths T, comma-separated (default 4096,16384)")
    ap.add_argument("--head-dims", default="", help="head dims D, comma-separated (default 64,128)")
    ap.add_argument("--batch", type=int, default=0, help="sequences B (default: --tokens // T)")
    ap.add_argument("--shapes", default="", help="more shapes BxT, comma-separated (e.g. 256x256)")
    ap.add_argument("--backend", choices=["default", "flash", "efficient", "cudnn"], default="default",
                    help="restrict SDPA to one backend (default: PyTorch chooses)")
    ap.add_argument("--json", default="", help="also write the JSON here")
    args = ap.parse_args()

    def bad(message):  # bad input: one line, exit 2
        print(f"torch_attention: {message}", file=sys.stderr)
        sys.exit(2)

    def int_list(text, default, flag):
        if not text:
            return default
        try:
            values = [int(x) for x in text.split(",")]
        except ValueError:
            bad(f"{flag} {text!r}: want comma-separated positive integers")
        if any(v < 1 for v in values):
            bad(f"{flag} {text!r}: want comma-separated positive integers")
        return values

    lengths = int_list(args.lengths, [128] if args.quick else [4096, 16384], "--lengths")
    head_dims = int_list(args.head_dims, [64] if args.quick else [64, 128], "--head-dims")
    if args.batch < 0:
        bad(f"--batch {args.batch}: want a positive count, or 0 for --tokens // T")
    batched = []
    for item in filter(None, args.shapes.split(",")):
        parts = item.split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            bad(f"--shapes {args.shapes!r}: {item!r} is not BxT (positive integers, e.g. 256x256)")
        batched.append((int(parts[0]), int(parts[1])))
    shapes = [(args.batch if args.batch > 0 else max(1, args.tokens // T), T, D) for D in head_dims for T in lengths]
    shapes += [(B, T, D) for D in head_dims for B, T in batched]

    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        sys.exit("torch_attention: no CUDA device")
    dev = torch.device("cuda")
    torch.manual_seed(0)

    def sdpa_context():
        if args.backend == "default":
            import contextlib
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                            "cudnn": SDPBackend.CUDNN_ATTENTION}[args.backend])

    def time_ms(fn):  # (the median ms a call, the calls a timed run)
        for _ in range(args.warmup):
            fn()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        alone = start.elapsed_time(stop)
        reps = 1 if alone >= 1.0 else min(200, max(1, int(1.0 / max(alone, 1e-3))))
        times = []
        for _ in range(args.iters):
            start.record()
            for _ in range(reps):
                fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / reps)
        return statistics.median(times), reps

    def header():
        return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "backend": args.backend,
                "cudnn": torch.backends.cudnn.version()}

    def write_json(rows, complete):  # (a temporary file renamed over the path: never half a file)
        if not args.json:
            return
        out = dict(header(), complete=complete, ops=rows)
        tmp = args.json + ".partial"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
        os.replace(tmp, args.json)

    H = args.heads
    rows = []
    for B, T, D in shapes:
        shape = f"B{B} T{T} H{H} D{D}"
        # One shape that fails (out of memory, a backend's refusal) is said
        # and skipped: the others' rows still reach the JSON.
        try:
            qkv = torch.randn(B, T, 3, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
            # (B, H, T, D) views, strided; unbind's backward stacks the three
            # gradients into the packed one in one pass, as a model's split does.
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
            dout = torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16)
            fwd_flops = 2.0 * 2.0 * B * H * (T * (T + 1) / 2) * D

            def forward():
                with torch.no_grad(), sdpa_context():
                    F.scaled_dot_product_attention(q, k, v, is_causal=True)

            def forward_backward():
                with sdpa_context():
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    torch.autograd.grad(out, qkv, dout)

            for name, fn, flops in (("sdpa_fwd_bf16", forward, fwd_flops),
                                    ("sdpa_fwd_bwd_bf16", forward_backward, 3.5 * fwd_flops)):
                ms, reps = time_ms(fn)
                rows.append({"op": name, "shape": shape, "seconds": ms / 1e3, "flops": flops,
                             "tflops_per_s": flops / (ms / 1e3) / 1e12, "reps": reps})
        except Exception as e:  # noqa: BLE001 (any failure of one shape)
            print(f"torch_attention: {shape} failed: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
        qkv = q = k = v = dout = None  # this shape's tensors freed before the next one's
        torch.cuda.empty_cache()
        write_json(rows, False)

    print(f"device {torch.cuda.get_device_name()} | torch {torch.__version__} | SDPA backend {args.backend}")
    print(f"{'op':<20} {'shape':<22} {'ms':>10} {'TFLOP/s':>10} {'reps':>5}")
    for r in rows:
        print(f"{r['op']:<20} {r['shape']:<22} {r['seconds'] * 1e3:>10.3f} {r['tflops_per_s']:>10.1f} {r['reps']:>5}")
    # (which kernel "default" picks depends on the version; cuDNN's is one)
    out = dict(header(), complete=True, ops=rows)
    print(json.dumps(out))
    write_json(rows, True)


if __name__ == "__main__":
    main()
