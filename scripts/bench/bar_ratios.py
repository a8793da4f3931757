#!/usr/bin/env python3
"""Issue 17's bars from one gpu_check run: joins bench_ops's JSON with the
PyTorch peers' (scripts/bench/torch_moe.py, torch_attention.py) and prints
one line a bar, measured figure beside the bar, "ok" or "MISSED":

  gating      gating_top2's effective bandwidth (logits bytes / time) >= 1.5 TB/s (ops::tokens_gate:
              scores and top-k, the probabilities not kept, as the MoE router runs it; timed queued back
              to back where bench_ops did; with the probabilities written, gating_top2_probs, and the
              route with its slots, gating_top2_slots, printed beside it)
  moe/dense   moe_layer_fwd_bwd(_padded, _pad_to_largest) time / dense_ffn_fwd_bwd's <= 1.3
  loop/moe    the PyTorch per-expert loop's fwd+bwd time / ours >= 25
  attention   ours / SDPA throughput, causal fwd+bwd bf16, per shape >= 0.5
and, not bars, the expert GEMM routes side by side (expert_gemm_*) and the FFN's
GELU epilogues beside the passes they replaced (ffn_*).

A figure whose rows are missing is said to be missing, not guessed: a row
bench_ops could not time (its case threw: seconds 0, the error in its note)
counts as missing, and a verdict on a row whose results were wrong (#wrong
> 0) says so. Each line is printed as it is made.

  python3 scripts/bench/bar_ratios.py --bench-ops bench_ops.json \
      --torch-moe torch_moe.json --torch-attention torch_attention.json
"""
import argparse
import json
import os

from compare_runs import variant_name  # (scripts/bench/, beside this file)


def load(path):
    """The JSON at path, or None where there is none, or it cannot be read (a
    writer killed mid-write: said in one line, and the bars that need it say
    their rows are missing)."""
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"bars: {path}: unreadable ({type(e).__name__}: {str(e)[:120]}); its bars are left out", flush=True)
        return None


def timed(row):
    """The row if bench_ops timed it (a case that threw has seconds 0), else None."""
    return row if row and row.get("seconds", 0) > 0 else None


def verdict(ok, *rows):
    v = "ok" if ok else "MISSED"
    wrong = sum(max(0, r.get("wrong", -1)) for r in rows if r)
    return v + (f" (BUT {wrong} WRONG ELEMENTS: the figure is not a result)" if wrong else "")


def say(line):
    print("bars: " + line, flush=True)


def host_bound(prof):
    """Ops and parts of a profile (core/op_profile.h) where the device sat idle:
    the host's own time inside them near or above the device's, or a wait for
    the device. Profiles from before the host columns have none; on the host
    clock every op is the host's, so none are listed."""
    out = []
    if prof.get("clock") != "cuda events":
        return out
    for key, rows in (("op", prof.get("ops", [])), ("part", prof.get("parts", []))):
        for r in rows:
            ms, host, waits = r["ms_per_step"], r.get("host_ms_per_step"), r.get("host_waits_per_step", 0)
            if host is not None and (waits > 0 or host >= 0.9 * ms):
                out.append(f"{r[key]} {ms:.3f} ({host:.3f}, {waits:g})")
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bench-ops", required=True)
    p.add_argument("--torch-moe", default="")
    p.add_argument("--torch-attention", default="")
    args = p.parse_args()

    ours = load(args.bench_ops)
    if ours is None:
        print(f"bars: no {args.bench_ops} (bench_ops did not finish)")
        return
    if not ours.get("complete", True):
        say(f"{args.bench_ops}: bench_ops stopped before its last row; the bars below are from the rows it timed")
    rows = {r["op"]: r for r in ours["ops"]}
    for r in ours["ops"]:
        if r.get("seconds", 0) <= 0:
            say(f"{r['op']} {r.get('shape', '')}: not timed ({r.get('note', '')[:200]})")

    g = timed(rows.get("gating_top2"))
    if g:
        # One call timed alone also holds the device's wait for its launch
        # (a few us of a ~10 us kernel); queued back to back (as a training
        # step issues it) it does not: the bar reads the queued figure where
        # bench_ops took one, and both are printed.
        tbs = g["bytes"] / g["seconds"] / 1e12
        q = g.get("queued_seconds", 0)
        if q > 0:
            qtbs = g["bytes"] / q / 1e12
            say(f"gating {g['shape']}: {qtbs:.2f} TB/s effective queued ({q * 1e6:.1f} us), {tbs:.2f} one call "
                f"alone ({g['seconds'] * 1e6:.1f} us) (bar >= 1.5): {verdict(qtbs >= 1.5, g)}")
        else:
            say(f"gating {g['shape']}: {tbs:.2f} TB/s effective (bar >= 1.5): {verdict(tbs >= 1.5, g)}")
    else:
        say("gating: no gating_top2 row")
    kp = timed(rows.get("gating_top2_probs"))
    if kp:
        kq = kp.get("queued_seconds", 0) or kp["seconds"]
        say(f"gating with the probabilities written (a router that keeps them; not the bar's) {kp['shape']}: "
            f"{kp['bytes'] / kq / 1e12:.2f} TB/s effective")
    sl = timed(rows.get("gating_top2_slots"))
    if sl:
        say(f"gating with capacity and slots (the route a MoE layer takes; not the bar's) {sl['shape']}: "
                     f"{sl['bytes'] / sl['seconds'] / 1e12:.2f} TB/s effective")
    sc = timed(rows.get("router_scores_softmax"))
    copy = ours.get("copy_ceiling", {}).get("bytes_per_s", 0)
    if g and sc and copy > 0:
        # Without the probabilities the gating reads the logits and writes k
        # picks an item: its ceiling is about the copy rate itself. With them
        # (a copy's traffic) it is copy / 2; softmax alone is that floor, and
        # gating_top2_probs less it what the top-k adds.
        def t(r):
            return r.get("queued_seconds", 0) or r["seconds"]
        topk = f"; top-k on top of it {(t(kp) - t(sc)) * 1e6:.1f} us" if kp else ""
        slots = f"; capacity and slots (the route) {(t(sl) - t(g)) * 1e6:.1f} us more" if sl else ""
        say(f"gating floor: softmax alone, the probabilities written, {t(sc) * 1e6:.1f} us "
            f"({sc['bytes'] / t(sc) / copy * 100:.0f}% of the copy ceiling){topk}{slots}; the effective ceiling "
            f"is {copy / 1e12:.2f} TB/s without the probabilities written, {copy / 2 / 1e12:.2f} with them")

    dense = timed(rows.get("dense_ffn_fwd_bwd"))
    fixed, fresh = timed(rows.get("moe_layer_fwd_bwd")), timed(rows.get("moe_layer_fwd_bwd_new_routes"))
    if fixed and fresh:
        # A new route each call (as in training) against one repeated: what
        # the per-route costs add (the RNG's draw of the input is in it too).
        say(f"moe_layer_fwd_bwd, a new route each call: {fresh['seconds'] * 1e3:.3f} ms "
                     f"(host {fresh.get('host_seconds', 0) * 1e3:.3f} ms) against {fixed['seconds'] * 1e3:.3f} ms "
                     f"for one route repeated ({fresh['seconds'] / fixed['seconds']:.2f}x)")
    for name in ("moe_layer_fwd_bwd", "moe_layer_fwd_bwd_padded", "moe_layer_fwd_bwd_pad_to_largest"):
        m = timed(rows.get(name))
        if m and dense:
            r = m["seconds"] / dense["seconds"]
            # The host's time to queue the layer (bench_ops' host ms): near
            # the layer's time, the GPU waited on launches, not on its work.
            host = m.get("host_seconds", 0) * 1e3
            say(f"{name} / dense_ffn_fwd_bwd: {r:.2f}x ({m['seconds'] * 1e3:.3f} / "
                f"{dense['seconds'] * 1e3:.3f} ms, {m['shape']}; host {host:.3f} ms; bar <= 1.3): "
                f"{verdict(r <= 1.3, m, dense)}")
        else:
            say(f"{name} / dense: rows missing")
        prof = ours.get("profiles", {}).get(name)
        if prof:  # where the layer's time goes (CUDA events per op), the largest first
            top = ", ".join(f"{o['op']} {o['ms_per_step']:.3f}" for o in prof["ops"][:5])
            say(f"{name} profile (ms): {top}; between ops "
                f"{prof['step_ms'] - prof['inside_ops_ms']:.3f} of {prof['step_ms']:.3f}")
            # Inside the expert ops: their GEMMs against the rest (parts,
            # core/op_profile.h), the largest first.
            parts = ", ".join(f"{p['part']} {p['ms_per_step']:.3f}" for p in prof.get("parts", [])[:10])
            if parts:
                say(f"{name} parts (ms): {parts}")
            waiting = host_bound(prof)
            if waiting:
                say(f"{name} ops and parts the host bounds (device ms, host ms, waits): {', '.join(waiting[:8])}")

    # The experts' GEMMs alone, seven ways (examples/bench_expert_gemm.h; not a
    # bar: which route the packed layer should take), the fastest first.
    for d in ("up", "down"):
        ways = [(w, timed(rows.get(f"expert_gemm_{d}_{w}")))
                for w in ("lt_loop", "loop", "loop_streams", "grouped", "strided", "strided_tight", "one_gemm")]
        ways = sorted(((w, r) for w, r in ways if r), key=lambda wr: wr[1]["seconds"])
        if ways:
            gemm = ours.get("gemm_ceiling", {}).get("flops_per_s", 0) or float("inf")
            say(f"expert GEMMs {d} ({ways[0][1]['shape']}), ms and % of the GEMM ceiling: " + ", ".join(
                f"{w} {r['seconds'] * 1e3:.3f} ({r['flops'] / r['seconds'] / gemm * 100:.0f}%)"
                + (f" {r['wrong']} WRONG" if r.get("wrong", -1) > 0 else "") for w, r in ways))

    # The FFN's GELU epilogues (ops/matmul.h) beside the passes they replaced
    # (not a bar: what the fused GEMMs save at the FFN's shape).
    for fused, apart in (("ffn_up_gelu_epilogue_bf16", "ffn_up_then_gelu_bf16"),
                         ("ffn_down_dx_dgelu_epilogue_bf16", "ffn_down_dx_then_gelu_backward_bf16")):
        f, a = timed(rows.get(fused)), timed(rows.get(apart))
        if f and a:
            say(f"{fused} {f['shape']}: {f['seconds'] * 1e3:.3f} ms against {apart} {a['seconds'] * 1e3:.3f} ms "
                f"({a['seconds'] / f['seconds']:.2f}x)" + (" WRONG ELEMENTS" if f.get("wrong", -1) > 0 else ""))

    peers = load(args.torch_moe)
    peers = peers if isinstance(peers, list) else []

    def same_shape(peer, row):
        # (torch_moe.py's rows name their shape as bench_ops's do; one from
        # before that has none and is taken as it stands)
        return "shape" not in peer or peer["shape"] == row["shape"]

    loop = next((r for r in peers if r.get("case") == "moe per-expert loop fwd+bwd" and r.get("ms", 0) > 0), None)
    for name in ("moe_layer_fwd_bwd", "moe_layer_fwd_bwd_padded", "moe_layer_fwd_bwd_pad_to_largest"):
        m = timed(rows.get(name))
        if m and loop and not same_shape(loop, m):
            say(f"PyTorch loop / {name}: shapes differ ({loop['shape']} against {m['shape']}): no verdict")
        elif m and loop:
            r = loop["ms"] / 1e3 / m["seconds"]
            say(f"PyTorch per-expert loop / {name}: {r:.1f}x (bar >= 25): {verdict(r >= 25, m)}")
        else:
            say(f"PyTorch loop / {name}: rows missing")
    tdense = next((r for r in peers if r.get("case") == "dense FFN h8192 fwd+bwd" and r.get("ms", 0) > 0), None)
    if tdense and dense and not same_shape(tdense, dense):
        say(f"dense FFN fwd+bwd, ours / PyTorch: shapes differ ({tdense['shape']} against {dense['shape']})")
    elif tdense and dense:
        say(f"dense FFN fwd+bwd, ours / PyTorch time: {dense['seconds'] * 1e3 / tdense['ms']:.2f}")

    sdpa = load(args.torch_attention)
    if sdpa and not sdpa.get("complete", True):
        say(f"{args.torch_attention}: torch_attention.py stopped before its last shape; the shapes it timed are used")
    sdpa_rows = {(r["op"], r["shape"]): r for r in (sdpa or {}).get("ops", []) if r.get("seconds", 0) > 0}
    for r in ours["ops"]:
        if r["op"] != "attention_fwd_bwd_bf16" or not timed(r):
            continue
        s = sdpa_rows.get(("sdpa_fwd_bwd_bf16", r["shape"]))
        if not s:
            say(f"attention {r['shape']}: no SDPA row of this shape")
            continue
        frac = s["seconds"] / r["seconds"]  # same work: throughput ratio = inverse time ratio
        say(f"attention fwd+bwd bf16 {r['shape']}: {frac:.2f} of SDPA's throughput "
            f"({r['seconds'] * 1e3:.3f} / {s['seconds'] * 1e3:.3f} ms; bar >= 0.5): {verdict(frac >= 0.5, r)}")
        # The other tile configurations at this shape (not the product's
        # kernels until one is made the default): the fastest, and each.
        # (A variant's name from its note; the fastest and the estimate count
        # only rows with nothing wrong.)
        def vname(v):
            return variant_name(v["note"])

        vs = [v for v in ours["ops"] if v["op"] == "attention_variant_fwd_bwd_bf16" and v["shape"] == r["shape"]
              and timed(v)]
        # (each variant row is checked against the CPU: -1 says the check
        # did not finish - it threw after the timing - so not counted right)
        right = [v for v in vs if v.get("wrong", -1) == 0]
        if vs:
            each = ", ".join(f"{vname(v)} {s['seconds'] / v['seconds']:.2f}"
                             f"{'' if v in right else ' (#wrong ' + str(v['wrong']) + ')'}" for v in vs)
            best = min(right, key=lambda v: v["seconds"]) if right else None
            say(f"  variants at {r['shape']} (of SDPA): {each}" +
                (f"; fastest {vname(best)} {s['seconds'] / best['seconds']:.2f}" if best else "; none without #wrong"))
            # A forward variant (it has a forward-only row) and a backward one
            # change different kernels: the best of each together, estimated
            # from the two rows (not timed together).
            fwd_names = {vname(v) for v in ours["ops"] if v["op"] == "attention_variant_fwd_bf16"
                         and v["shape"] == r["shape"]}
            fv = [v for v in right if vname(v) in fwd_names]
            bv = [v for v in right if vname(v) not in fwd_names]
            if fv and bv:
                bf, bb = min(fv, key=lambda v: v["seconds"]), min(bv, key=lambda v: v["seconds"])
                t = bf["seconds"] + bb["seconds"] - r["seconds"]
                if bf["seconds"] < r["seconds"] and bb["seconds"] < r["seconds"] and t > 0:  # (both gain)
                    say(f"  estimate, {vname(bf)} with {vname(bb)}: "
                        f"{s['seconds'] / t:.2f} of SDPA")
    if not any(r["op"] == "attention_fwd_bwd_bf16" and timed(r) for r in ours["ops"]):
        say("attention: no timed attention_fwd_bwd_bf16 rows")


if __name__ == "__main__":
    main()
