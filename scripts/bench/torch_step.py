#!/usr/bin/env python3
"""PyTorch counterpart of one Switchyard training step, for speed comparison only.

The same model, shapes and work per step as build/bin/train_switch with
configs/tiny.pbtxt or configs/switch_tiny.pbtxt (their defaults): bytes
(vocab 256), seq 128, batch 16, d_model 64, 2 pre-LayerNorm blocks of causal
attention (4 heads of 16, qkv and output projections with bias) and an FFN
(64 -> 256 -> 64, GELU tanh approximation), final LayerNorm, a bias-free head,
cross-entropy; forward + backward + global-norm clipping (1.0) + AdamW
(betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only).

switch_tiny: every FFN is a Switch MoE layer: 8 experts of the dense FFN's
size, top-1, softmax router (bias-free), multiplicative jitter 0.01 on the
router input and Gaussian noise 0.3 on the logits (training), capacity
ceil(1.25 * N / 8) filled by position, overflow dropped; load-balance loss
(0.01) and router z-loss (0.001). Experts run as a per-expert loop over the
tokens routed to each (index_select, two Linear maps, index_add), the usual
eager-PyTorch MoE (fairseq/Megatron's "local experts" loop); Switchyard runs the
same per-expert GEMM pairs over a group-major buffer.

Tokens are uniform random bytes (Switchyard samples windows of its synthetic
corpus): the FLOPs per step do not depend on the values, and with the router
at init (std 0.02) the noise dominates its logits in both, so routing is near
uniform in both.

Torch 1.13 (Debian's python3-torch) has no fused attention: attention is
q k^T, mask, softmax, @ v, as eager PyTorch of that version writes it.

Prints one JSON object: config, tokens_per_s (median over timed steps), step
times. Run with one thread: torch.set_num_threads(1) is set here; pin the
process (taskset) from outside.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

V, T, B, C, H, FF, L = 256, 128, 16, 64, 4, 256, 2


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.register_buffer("mask", torch.ones(T, T, dtype=torch.bool).triu(1))

    def forward(self, x):  # x (B, T, C)
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(b, t, H, C // H).transpose(1, 2)
        k = k.view(b, t, H, C // H).transpose(1, 2)
        v = v.view(b, t, H, C // H).transpose(1, 2)
        s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // H))
        a = F.softmax(s.masked_fill(self.mask[:t, :t], float("-inf")), dim=-1)
        y = (a @ v).transpose(1, 2).reshape(b, t, C)
        return self.proj(y)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(C, FF)
        self.fc2 = nn.Linear(FF, C)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SwitchMoe(nn.Module):
    def __init__(self, G=8, capacity_factor=1.25, jitter=0.01, noise=0.3, lb=0.01, z=0.001):
        super().__init__()
        self.G, self.cf, self.jitter, self.noise, self.lb, self.z = G, capacity_factor, jitter, noise, lb, z
        self.router = nn.Linear(C, G, bias=False)
        self.experts = nn.ModuleList(Mlp() for _ in range(G))
        self.aux = None

    def forward(self, x):  # x (N, C)
        N = x.shape[0]
        xr = x * torch.empty_like(x).uniform_(1 - self.jitter, 1 + self.jitter)
        logits = self.router(xr)
        logits = logits + self.noise * torch.randn_like(logits)
        probs = F.softmax(logits, dim=-1)
        weight, expert = probs.max(dim=-1)
        onehot = F.one_hot(expert, self.G)
        capacity = math.ceil(self.cf * N / self.G)
        position = (onehot.cumsum(0) * onehot).sum(-1) - 1  # slot within its expert, by position
        kept = position < capacity
        f = onehot.float().mean(0)
        P = probs.mean(0)
        self.aux = self.lb * self.G * (f * P).sum() + self.z * torch.logsumexp(logits, -1).pow(2).mean()
        y = torch.zeros_like(x)
        for g in range(self.G):
            idx = torch.nonzero(kept & (expert == g)).squeeze(1)
            if idx.numel() == 0:
                continue
            out = self.experts[g](x.index_select(0, idx)) * weight.index_select(0, idx).unsqueeze(1)
            y = y.index_add(0, idx, out)
        return y


class Block(nn.Module):
    def __init__(self, moe):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.attn = Attention()
        self.ffn = SwitchMoe() if moe else Mlp()

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        b, t, _ = x.shape
        return x + self.ffn(self.ln2(x).view(b * t, C)).view(b, t, C)


class Model(nn.Module):
    def __init__(self, moe):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block(moe) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        for n, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.ln_f(x))
        loss = F.cross_entropy(logits.view(-1, V), targets.view(-1))
        for b in self.blocks:
            if isinstance(b.ffn, SwitchMoe):
                loss = loss + b.ffn.aux
        return loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=["tiny", "switch_tiny"], required=True)
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Model(moe=args.config == "switch_tiny")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n and "router" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n and "wpe" not in n and "router" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    times = []
    for step in range(args.warmup + args.steps):
        idx = torch.randint(0, V, (B, T))
        targets = torch.randint(0, V, (B, T))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(idx, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            times.append(dt)
    med = statistics.median(times)
    print(json.dumps({"config": args.config, "impl": "pytorch " + torch.__version__, "threads": torch.get_num_threads(),
                      "tokens_per_step": B * T, "steps": len(times), "median_step_s": med,
                      "tokens_per_s": B * T / med, "loss": float(loss)}))


if __name__ == "__main__":
    main()
