#!/usr/bin/env bash
# Gradient accumulation (train.micro_batches) trains what one pass over the
# whole batch trains: for a dense model (tiny: no routing, whose capacity and
# losses are per forward), the per-step loss and gradient norm of 2 and 4
# micro-batches equal one pass's to 1e-5 relative over 20 steps (the sums
# differ only in order); the same over 2 MPI ranks with 2 micro-batches each (the gradient
# all-reduce after the last), with the same logged FLOPs per token. A MoE
# model (switch_tiny) trains with 2 micro-batches to a loss within 2% of one
# pass's (routing is per micro-batch), and where its routing does not depend
# on the split (dropless, no load-balance loss), with its router noise and
# balancing bias on, to 1e-5, on 1 rank, 2 ranks and 2 ranks of expert
# parallelism: the noise drawn for a micro-batch's tokens is theirs in the
# global batch, and the bias moves once a step. A batch that does not split
# is refused with one line.
set -u
BIN=$1; SRC=$2; MPIRUN=$3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# (AdamW's eps at 0.01, not 1e-8: the update then depends on the gradient's
# scale, so a sum not divided by the micro-batch count shows in the loss;
# with eps ~0 AdamW is blind to it.)
common=(--set train.steps=20 --set train.warmup_steps=2 --set train.log_interval=1 --set train.eval_interval=0
        --set train.batch=8 --set data.synthetic_bytes=100000 --set train.eps=0.01 --threads 1)
losses() { sed -E 's/.*"loss":([-0-9.e]+).*/\1/' "$1"; }
norms() { sed -E 's/.*"grad_norm":([-0-9.e]+).*/\1/' "$1"; }
worst() {  # worst relative loss (and gradient norm) difference of two metrics files, or "steps=N"
  paste <(losses "$1"; norms "$1") <(losses "$2"; norms "$2") |
    awk '{ d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > m) m = d; n++ } END { if (n != 40) print "steps=" n / 2; else printf "%.2e", m }'
}
fail=0
check() {  # check NAME REF GOT TOL
  local w
  w=$(worst "$2" "$3")
  case "$w" in
    steps=*) echo "FAIL $1: $w lines"; fail=1 ;;
    *) if awk -v w="$w" -v t="$4" 'BEGIN { exit !(w <= t) }'; then echo "ok   $1: worst relative loss difference $w (tolerance $4)"
       else echo "FAIL $1: worst relative loss difference $w > $4"; fail=1; fi ;;
  esac
}
run() {  # run NAME ARGS...: one rank
  local name=$1; shift
  "$BIN" "$@" --metrics "$tmp/$name.jsonl" > "$tmp/$name.log" 2>&1 || { echo "FAIL $name run"; cat "$tmp/$name.log"; fail=1; }
}
tiny=(--config "$SRC/configs/tiny.pbtxt" "${common[@]}")
run tiny1 "${tiny[@]}"
run tiny2 "${tiny[@]}" --set train.micro_batches=2
run tiny4 "${tiny[@]}" --set train.micro_batches=4
check "tiny, 2 micro-batches" "$tmp/tiny1.jsonl" "$tmp/tiny2.jsonl" 1e-5
check "tiny, 4 micro-batches" "$tmp/tiny1.jsonl" "$tmp/tiny4.jsonl" 1e-5
"$MPIRUN" --oversubscribe -np 2 "$BIN" "${tiny[@]}" --set train.micro_batches=2 --set parallel.timeout_s=120 \
  --metrics "$tmp/tiny_np2.jsonl" > "$tmp/tiny_np2.log" 2>&1 || { echo "FAIL 2 ranks run"; cat "$tmp/tiny_np2.log"; fail=1; }
check "tiny, 2 ranks x 2 micro-batches" "$tmp/tiny1.jsonl" "$tmp/tiny_np2.jsonl" 1e-5
# The per-token FLOPs logged are the same (the last forward's over its own tokens).
fpt() { sed -E 's/.*"flops_per_token":([-0-9.e]+).*/\1/' "$1" | tail -1; }
if [ "$(fpt "$tmp/tiny1.jsonl")" = "$(fpt "$tmp/tiny2.jsonl")" ] && [ "$(fpt "$tmp/tiny1.jsonl")" = "$(fpt "$tmp/tiny_np2.jsonl")" ]; then
  echo "ok   flops_per_token $(fpt "$tmp/tiny1.jsonl") with 1, 2 micro-batches and 2 ranks x 2"
else echo "FAIL flops_per_token: $(fpt "$tmp/tiny1.jsonl") / $(fpt "$tmp/tiny2.jsonl") / $(fpt "$tmp/tiny_np2.jsonl")"; fail=1; fi
sw=(--config "$SRC/configs/switch_tiny.pbtxt" "${common[@]}")
run sw1 "${sw[@]}"
run sw2 "${sw[@]}" --set train.micro_batches=2
check "switch_tiny, 2 micro-batches (routing per micro-batch)" "$tmp/sw1.jsonl" "$tmp/sw2.jsonl" 2e-2
# MoE whose routing does not depend on how the batch is split (dropless, no
# load-balance loss; the z-loss is a mean over tokens), with jitter, router
# noise and the balancing bias on (at 10x switch_tiny's rate): equal to one
# pass's to 1e-5 only if each micro-batch's draws are its tokens' in the
# global batch and the bias moves once a step, on the whole step's load.
# 1 rank, 2 ranks and expert parallelism over 2, 2 micro-batches each.
exact=("${sw[@]}" --set moe.dropless=true --set moe.load_balance_coef=0 --set moe.bias_balance_rate=0.01)
run swx1 "${exact[@]}"
run swx2 "${exact[@]}" --set train.micro_batches=2
check "switch_tiny dropless, noise keyed by the global batch, 2 micro-batches" "$tmp/swx1.jsonl" "$tmp/swx2.jsonl" 1e-5
for ep in 1 2; do
  "$MPIRUN" --oversubscribe -np 2 "$BIN" "${exact[@]}" --set train.micro_batches=2 --set parallel.expert_parallel=$ep \
    --set parallel.timeout_s=120 --metrics "$tmp/swx_np2_ep$ep.jsonl" > "$tmp/swx_np2_ep$ep.log" 2>&1 ||
    { echo "FAIL 2 ranks ep=$ep run"; cat "$tmp/swx_np2_ep$ep.log"; fail=1; }
  check "switch_tiny dropless, 2 ranks (ep=$ep) x 2 micro-batches" "$tmp/swx1.jsonl" "$tmp/swx_np2_ep$ep.jsonl" 1e-5
done
# A batch of 8 does not split into 3.
out=$("$BIN" "${tiny[@]}" --set train.micro_batches=3 2>&1); rc=$?
if [ $rc -eq 2 ] && [ "$(grep -c . <<< "$out")" -le 2 ] && grep -q "train.micro_batches" <<< "$out"; then
  echo "ok   micro_batches=3 refused: $(grep train.micro_batches <<< "$out" | head -1)"
else echo "FAIL micro_batches=3: rc $rc, $out"; fail=1; fi
exit $fail
