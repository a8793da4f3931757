#!/usr/bin/env python3
"""PyTorch peers of bench_ops's MoE rows, on the same GPU in the same call
(scripts/gpu_check.sh runs this): what a user would write instead.

  gating:  softmax + top-2 over 65536 x 64 fp32 logits (logits read once)
  moe:     a per-expert loop at T=16384, d=1024, hidden 4096, 64 experts, top-2,
           capacity factor 1.25 (tokens over capacity dropped), bf16, GELU (tanh)
  dense:   the FFN of equal active FLOPs (hidden 8192), bf16
Forward and forward+backward, median of CUDA-event timings after warm-up. Each row
names its shape as bench_ops's rows do (bar_ratios.py sets rows of one shape only side
by side); --json FILE is rewritten after every row, so a run cut off keeps its rows.
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F


def median_ms(fn, warmup=3, iters=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json", default="")
    args = p.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    rows = []

    def add(row):  # (a temporary file renamed over the path: never half a file)
        rows.append(row)
        if args.json:
            with open(args.json + ".partial", "w") as f:
                json.dump(rows, f, indent=1)
            os.replace(args.json + ".partial", args.json)

    # 8 logits buffers in turn (134 MB, past the L2), as bench_ops's gating row reads.
    logits = [torch.randn(65536, 64, device=dev) for _ in range(8)]
    turn = [0]
    def gating():
        turn[0] = (turn[0] + 1) % len(logits)
        probs = torch.softmax(logits[turn[0]], dim=-1)
        return torch.topk(probs, 2, dim=-1)
    with torch.no_grad():
        ms = median_ms(gating, iters=48)
    add({"case": "gating softmax+top2 65536x64 fp32", "ms": ms, "gb_s": logits[0].numel() * 4 / ms / 1e6})

    T, d, h, E, k, cf = 16384, 1024, 4096, 64, 2, 1.25
    dt = torch.bfloat16
    x = torch.randn(T, d, device=dev, dtype=dt, requires_grad=True)
    wg = (torch.randn(d, E, device=dev) * 0.02).requires_grad_()
    # One parameter per expert, as a user's nn.ModuleList holds them (slices of
    # one stacked (E, d, h) tensor would each get a gradient of the whole
    # stack in backward: ~0.5 GB per expert and weight, not the loop's cost).
    w1 = [(torch.randn(d, h, device=dev, dtype=dt) * 0.02).requires_grad_() for _ in range(E)]
    w2 = [(torch.randn(h, d, device=dev, dtype=dt) * 0.02).requires_grad_() for _ in range(E)]
    cap = int(cf * T * k / E)

    def moe_forward():
        probs = torch.softmax(x.float() @ wg, dim=-1)
        w, idx = torch.topk(probs, k, dim=-1)
        y = torch.zeros_like(x)
        for e in range(E):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            tok, slot = tok[:cap], slot[:cap]  # by position: first come, first served
            if tok.numel() == 0:
                continue
            hdn = F.gelu(x[tok] @ w1[e], approximate="tanh")
            y.index_add_(0, tok, (hdn @ w2[e]) * w[tok, slot].unsqueeze(1).to(dt))
        return y

    def fresh(params):  # each timed backward writes its gradients, as after zero_grad(set_to_none=True)
        for t in params:
            t.grad = None

    dy = torch.randn(T, d, device=dev, dtype=dt)
    moe_params = [x, wg] + w1 + w2
    with torch.no_grad():
        ms_f = median_ms(lambda: moe_forward())
    ms_fb = median_ms(lambda: (fresh(moe_params), moe_forward().backward(dy)))
    flops = 2.0 * T * k * (2 * d * h)
    moe_shape = f"T{T} d{d} h{h} E{E} top{k} bf16"  # (bench_ops's moe_layer rows')
    add({"case": "moe per-expert loop fwd", "shape": moe_shape, "ms": ms_f, "tflops": flops / ms_f / 1e9})
    add({"case": "moe per-expert loop fwd+bwd", "shape": moe_shape, "ms": ms_fb, "tflops": 3 * flops / ms_fb / 1e9})

    d1 = (torch.randn(d, 2 * h, device=dev, dtype=dt) * 0.02).requires_grad_()
    d2 = (torch.randn(2 * h, d, device=dev, dtype=dt) * 0.02).requires_grad_()
    dense = lambda: F.gelu(x @ d1, approximate="tanh") @ d2
    with torch.no_grad():
        ms_df = median_ms(dense)
    ms_dfb = median_ms(lambda: (fresh([x, d1, d2]), dense().backward(dy)))
    dense_shape = f"T{T} d{d} h{2 * h} bf16"  # (bench_ops's dense_ffn rows')
    add({"case": "dense FFN h8192 fwd", "shape": dense_shape, "ms": ms_df, "tflops": flops / ms_df / 1e9})
    add({"case": "dense FFN h8192 fwd+bwd", "shape": dense_shape, "ms": ms_dfb, "tflops": 3 * flops / ms_dfb / 1e9})

    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name()}")
    for r in rows:
        extra = f"{r['tflops']:.1f} TFLOP/s" if "tflops" in r else f"{r['gb_s']:.0f} GB/s"
        print(f"{r['case']:40s} {r['ms']:10.3f} ms  {extra}")


if __name__ == "__main__":
    main()
