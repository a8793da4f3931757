#!/usr/bin/env bash
# scripts/check_checkpoint.py (Python's struct, json and zlib, nothing else)
# accepts the checkpoints train_switch writes: a dense model on one rank and
# a MoE model with routed attention at EP=2 on 2 ranks (expert shards in two
# files); and it names the file and the tensor of a flipped bit, a truncated
# file and a header that disagrees with the manifest.
#   check_checkpoint_test.sh TRAIN_SWITCH SOURCE_DIR MPIRUN
set -u
BIN=$1; SRC=$2; MPIRUN=$3
CHECK=(python3 "$SRC/scripts/check_checkpoint.py")
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
common=(--set train.steps=2 --set train.warmup_steps=1 --set train.eval_interval=0 --set train.eval_batches=1
        --set train.batch=4 --set data.synthetic_bytes=50000 --set train.checkpoint_interval=2)
fail=0
"$BIN" --config "$SRC/configs/tiny.pbtxt" "${common[@]}" --set train.checkpoint_dir=dense > dense.log 2>&1 || { cat dense.log; exit 1; }
"$MPIRUN" --oversubscribe -np 2 "$BIN" --config "$SRC/configs/switch_tiny.pbtxt" "${common[@]}" --set parallel.expert_parallel=2 \
  --set attention.kind=ROUTED --set attention.num_routing_heads=2 --set attention.window=16 \
  --set train.checkpoint_dir=moe > moe.log 2>&1 || { cat moe.log; exit 1; }
for c in dense moe; do
  if out=$("${CHECK[@]}" "$c/step_00000002"); then echo "ok   $out"; else echo "FAIL $c: $out"; fail=1; fi
done
expect_bad() {  # name, needle
  if out=$("${CHECK[@]}" "$1/step_00000002"); then echo "FAIL $1: accepted"; fail=1
  elif grep -q -- "$2" <<<"$out"; then echo "ok   $1 refused: $(head -1 <<<"$out")"
  else echo "FAIL $1: want '$2' in: $out"; fail=1; fi
}
cp -r moe flipped
python3 -c "import sys; p=sys.argv[1]; d=bytearray(open(p,'rb').read()); d[-1]^=1; open(p,'wb').write(d)" flipped/step_00000002/optim-experts-00001-of-00002.safetensors
expect_bad flipped "optim-experts-00001-of-00002.safetensors: tensor h1.moe.experts.b2.e7.exp_avg_sq: CRC-32"
cp -r moe truncated
truncate -s -100 truncated/step_00000002/model-experts-00000-of-00002.safetensors
expect_bad truncated "model-experts-00000-of-00002.safetensors: tensor h1.moe.experts.b2.e3: byte range ends at"
cp -r moe reshaped
python3 -c "import sys; p=sys.argv[1]; d=open(p,'rb').read(); i=d.index(b'\"shape\":[256,64]'); open(p,'wb').write(d[:i]+b'\"shape\":[64,256]'+d[i+16:])" reshaped/step_00000002/model-dense.safetensors
expect_bad reshaped "model-dense.safetensors: tensor .*: shape \[64, 256\] in the file, \[256, 64\] in the manifest"
# Damage the checker once passed or crashed on: a manifest cut short (it lost
# its last files' entries and still parsed; cut mid-message), an empty one, a
# header key or an offsets list altered, a header that is a JSON list.
cp -r moe cut
python3 - cut/step_00000002/manifest.pbtxt <<'PY'
import sys
p = sys.argv[1]; t = open(p).read()
i = t.rindex("\nfiles {")
open(p, "w").write(t[:i + 1])
PY
expect_bad cut "safetensors: on disk but not in the manifest"
cp -r moe cut2
truncate -s 4000 cut2/step_00000002/manifest.pbtxt
expect_bad cut2 "manifest.pbtxt: cannot parse: "
cp -r moe empty
: > empty/step_00000002/manifest.pbtxt
expect_bad empty "manifest.pbtxt: no format_version"
for case in 'dtype|"dtype":|"dtypx":|no dtype' 'offsets|"data_offsets":[0,|"data_offsets":[-1,|data_offsets' \
            'list|*|[1,2]|header is a JSON list'; do
  IFS='|' read -r name from to want <<<"$case"
  cp -r moe "h_$name"
  python3 - "h_$name/step_00000002/model-dense.safetensors" "$from" "$to" <<'PY'
import struct, sys
p, a, b = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
d = open(p, "rb").read(); n = struct.unpack("<Q", d[:8])[0]; h = d[8:8 + n]
h = b if a == b"*" else h.replace(a, b, 1)
open(p, "wb").write(struct.pack("<Q", len(h)) + h + d[8 + n:])
PY
  expect_bad "h_$name" "model-dense.safetensors: .*$want"
done
exit $fail
