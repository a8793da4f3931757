#!/usr/bin/env bash
# examples/import_hf reads back what export_hf writes: a mixtral_tiny
# checkpoint (grouped key/value heads, untied head) exported in f32 and
# imported gives every weight bit for bit, and samples of the two are the
# same text; the same from the export split into two shard files with an
# index, and from a tied-embedding model; a bf16 export imports to its
# rounded values (re-exported in bf16: the same bytes), an F16 copy to its
# values widened exactly; the import
# fine-tunes with --init-from. Refused with one line and exit 2, leaving no
# --out behind: another model_type, a short sliding window, an rms_norm_eps
# Switchyard does not use, transformers 5's rope_parameters with scaling or
# another base, a tensor missing, an unknown tensor, an I16 tensor, a
# config.json larger than its weights (from the headers, before the model
# is built), a tokenizer for bytes, an --out that exists. transformers 5's
# rope_parameters are read for the base.
#   import_hf_cli_test.sh TRAIN_SWITCH EXPORT_HF IMPORT_HF SAMPLE SOURCE_DIR
set -u
BIN=$1; EXPORT=$2; IMPORT=$3; SAMPLE=$4; SRC=$5
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
common=(--set train.steps=3 --set train.warmup_steps=1 --set train.eval_interval=0 --set train.eval_batches=1
        --set train.batch=4 --set data.source=SYNTHETIC --set data.path= --set data.synthetic_bytes=50000
        --set train.checkpoint_interval=3 --set model.d_model=32 --set model.seq_len=32 --set moe.num_experts=4)
fail=0
"$BIN" --config "$SRC/configs/mixtral_tiny.pbtxt" "${common[@]}" --set model.n_kv_heads=2 --set model.tie_embeddings=false \
  --set train.checkpoint_dir=mx > mx.log 2>&1 || { cat mx.log; exit 1; }
"$BIN" --config "$SRC/configs/mixtral_tiny.pbtxt" "${common[@]}" --set model.tie_embeddings=true \
  --set train.checkpoint_dir=tied > tied.log 2>&1 || { cat tied.log; exit 1; }
"$EXPORT" --checkpoint latest --checkpoint-dir mx --out hf32 > e32.log 2>&1 || { cat e32.log; exit 1; }
"$EXPORT" --checkpoint latest --checkpoint-dir mx --out hf16 --dtype bf16 > e16.log 2>&1 || { cat e16.log; exit 1; }
"$EXPORT" --checkpoint latest --checkpoint-dir tied --out hftied > et.log 2>&1 || { cat et.log; exit 1; }
# The f32 export as two shard files and an index, as Hugging Face saves large models.
python3 - hf32 hfsharded <<'PY' || exit 1
import json, os, shutil, struct, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
shutil.copy(src + "/config.json", dst)
f = open(src + "/model.safetensors", "rb")
n = struct.unpack("<Q", f.read(8))[0]
head = json.loads(f.read(n))
data = f.read()
names = [k for k in head if k != "__metadata__"]
def write(path, part):
    h, off, blobs = {}, 0, []
    for k in part:
        b, e = head[k]["data_offsets"]
        h[k] = {"dtype": head[k]["dtype"], "shape": head[k]["shape"], "data_offsets": [off, off + e - b]}
        blobs.append(data[b:e]); off += e - b
    j = json.dumps(h).encode(); j += b" " * (-len(j) % 8)
    open(path, "wb").write(struct.pack("<Q", len(j)) + j + b"".join(blobs))
half = len(names) // 2
files = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
for fn, part in files.items(): write(dst + "/" + fn, part)
json.dump({"metadata": {}, "weight_map": {k: fn for fn, part in files.items() for k in part}},
          open(dst + "/model.safetensors.index.json", "w"))
PY

# The tensors of two checkpoints' model files, by name, equal byte for byte.
same_weights() {
  python3 - "$1" "$2" <<'PY'
import glob, json, struct, sys
def load(d):
    out = {}
    for p in glob.glob(d + "/model-*.safetensors"):
        f = open(p, "rb"); n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); data = f.read()
        for k, v in h.items():
            if k != "__metadata__": out[k] = (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
bad = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
print("%d tensors, %d differ%s" % (len(a), len(bad), (": " + ", ".join(bad[:4])) if bad else ""))
sys.exit(1 if bad else 0)
PY
}
for v in hf32 hfsharded hftied; do
  ck=$([ $v = hftied ] && echo tied || echo mx)
  if ! "$IMPORT" --hf $v --out imp_$v --set model.seq_len=32 > imp_$v.log 2>&1; then
    echo "FAIL import $v:"; cat imp_$v.log; fail=1; continue
  fi
  if r=$(same_weights "$ck/step_00000003" imp_$v/step_00000000); then echo "ok   import $v: $r"
  else echo "FAIL import $v: $r"; fail=1; fi
  # (temperature 1: every token a draw from the probabilities, which a
  # different function, e.g. another rope_theta, would move)
  "$SAMPLE" --checkpoint "$ck/step_00000003" --prompt "ROMEO:" --tokens 300 --seed 5 > a.txt 2>/dev/null
  "$SAMPLE" --checkpoint imp_$v/step_00000000 --prompt "ROMEO:" --tokens 300 --seed 5 > b.txt 2>/dev/null
  [ -s a.txt ] && cmp -s <(head -c 306 a.txt) <(head -c 306 b.txt) && echo "ok   import $v: the same 300 sampled bytes" \
    || { echo "FAIL import $v: samples differ"; fail=1; }
done
grep -q "^imported hf32 (2 layers, d_model 32, 4 experts top-2, vocabulary 256, model.seq_len 32, [0-9]* parameters) to imp_hf32/step_00000000" imp_hf32.log \
  || { echo "FAIL: no import line"; cat imp_hf32.log; fail=1; }
# transformers 5 spells the base rope_parameters' rope_theta: read there.
rm -rf v5 && cp -r hf32 v5 && python3 -c "
import json; c = json.load(open('v5/config.json')); t = c.pop('rope_theta')
c['rope_parameters'] = {'rope_type': 'default', 'rope_theta': t}; json.dump(c, open('v5/config.json', 'w'))"
if "$IMPORT" --hf v5 --out imp_v5 --set model.seq_len=32 > v5.log 2>&1 && r=$(same_weights mx/step_00000003 imp_v5/step_00000000) \
   && grep -q "rope_base: 10000" imp_v5/step_00000000/manifest.pbtxt; then echo "ok   transformers 5's rope_parameters: $r, rope_base 10000"
else echo "FAIL rope_parameters:"; cat v5.log; grep rope_base imp_v5/step_00000000/manifest.pbtxt; fail=1; fi
# bf16: the rounded values; exported again in bf16, the same bytes.
if "$IMPORT" --hf hf16 --out imp_hf16 > imp16.log 2>&1 && "$EXPORT" --checkpoint imp_hf16/step_00000000 --out hf16b --dtype bf16 > e16b.log 2>&1 \
   && python3 - hf16 hf16b <<'PY'
import json, struct, sys
def load(p):
    f = open(p + "/model.safetensors", "rb"); n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); d = f.read()
    return {k: (v["dtype"], v["shape"], d[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in h.items() if k != "__metadata__"}
sys.exit(0 if load(sys.argv[1]) == load(sys.argv[2]) else 1)
PY
then echo "ok   bf16: imported and exported again, the same tensors"
else echo "FAIL bf16 round trip"; cat imp16.log e16b.log; fail=1; fi
# F16 (as some fine-tunes are saved): the f32 export's tensors rounded to
# binary16 by Python's struct, imported, exported again in f32: each value
# the exact widening of its half.
python3 - hf32 hfh <<'PY' || { echo "FAIL: writing the F16 copy"; fail=1; }
import json, os, shutil, struct, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst); shutil.copy(src + "/config.json", dst)
f = open(src + "/model.safetensors", "rb"); n = struct.unpack("<Q", f.read(8))[0]; head = json.loads(f.read(n)); data = f.read()
h, blobs, off = {}, [], 0
for k, v in head.items():
    if k == "__metadata__": continue
    b, e = v["data_offsets"]; x = struct.unpack("<%df" % ((e - b) // 4), data[b:e])
    blob = struct.pack("<%de" % len(x), *x); blobs.append(blob)
    h[k] = {"dtype": "F16", "shape": v["shape"], "data_offsets": [off, off + len(blob)]}; off += len(blob)
j = json.dumps(h).encode(); j += b" " * (-len(j) % 8)
open(dst + "/model.safetensors", "wb").write(struct.pack("<Q", len(j)) + j + b"".join(blobs))
PY
if "$IMPORT" --hf hfh --out imp_hfh > imph.log 2>&1 && "$EXPORT" --checkpoint imp_hfh/step_00000000 --out hfh32 > eh.log 2>&1 \
   && python3 - hfh hfh32 <<'PY'
import json, struct, sys
def load(p):
    f = open(p + "/model.safetensors", "rb"); n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); d = f.read()
    return {k: (v["dtype"], d[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in h.items() if k != "__metadata__"}
half, full = load(sys.argv[1]), load(sys.argv[2])
bad = [k for k, (t, b) in half.items()
       if full[k][0] != "F32" or full[k][1] != struct.pack("<%df" % (len(b) // 2), *struct.unpack("<%de" % (len(b) // 2), b))]
print("%d tensors, %d differ %s" % (len(half), len(bad), bad[:3])); sys.exit(1 if bad or len(full) != len(half) else 0)
PY
then echo "ok   F16: imported, every value its half widened exactly"
else echo "FAIL F16 import"; cat imph.log eh.log; fail=1; fi
# A checkpoint of weights only: no optimizer files, and --resume says to use --init-from.
[ -z "$(ls imp_hf32/step_00000000 | grep optim)" ] || { echo "FAIL: optimizer files in the import: $(ls imp_hf32/step_00000000)"; fail=1; }
"$BIN" --resume imp_hf32/step_00000000 --set train.checkpoint_dir=rs > rs.log 2>&1
[ $? -eq 2 ] && grep -q "a checkpoint of weights only (no optimizer state; import_hf writes such): start a new run from it with --init-from" rs.log \
  && echo "ok   weights only: no optimizer files, --resume refused naming --init-from" || { echo "FAIL --resume of the import:"; cat rs.log; fail=1; }
# Fine-tuning from the import: a new run from its weights.
"$BIN" --config "$SRC/configs/mixtral_tiny.pbtxt" "${common[@]}" --set model.n_kv_heads=2 --set model.tie_embeddings=false \
  --set train.checkpoint_dir=ft --init-from imp_hf32/step_00000000 > ft.log 2>&1 \
  && grep -q "initialized from .*imp_hf32/step_00000000 (step 0 of its run)" ft.log && grep -q "^done: loss" ft.log \
  && echo "ok   fine-tuned from the import (--init-from)" || { echo "FAIL fine-tune:"; tail -3 ft.log; fail=1; }

# Refusals: one line, exit 2, no --out left.
refused() {  # name, expected text, then how to break a copy of hf32 (a python snippet on d)
  local name=$1 want=$2 snippet=$3
  rm -rf bad && cp -r hf32 bad
  python3 -c "import json, struct, sys
d = 'bad'
$snippet" || { echo "FAIL $name: the breaking snippet"; fail=1; return; }
  "$IMPORT" --hf bad --out out_$name > r.txt 2>&1
  local rc=$?
  if [ $rc -eq 2 ] && [ "$(grep -c . r.txt)" -eq 1 ] && grep -q "$want" r.txt && [ ! -e out_$name ]; then
    echo "ok   refused $name: $(cat r.txt)"
  else echo "FAIL refused $name: rc $rc, out $( [ -e out_$name ] && echo left || echo absent):"; cat r.txt; fail=1; fi
}
cfg() { echo "c = json.load(open(d + '/config.json')); c['$1'] = $2; json.dump(c, open(d + '/config.json', 'w'))"; }
refused model_type 'config.json: model_type = "llama": the import reads Mixtral' "$(cfg model_type "'llama'")"
refused window 'config.json: sliding_window = 16: Switchyard.s dense attention sees the whole window' "$(cfg sliding_window 16)"
refused rope_type 'config.json: rope_parameters = .*: Switchyard.s RoPE is rope_type "default"' \
  "$(cfg rope_parameters "{'rope_type': 'yarn', 'rope_theta': 10000.0}")"
refused rope_theta2 'config.json: rope_parameters = .*: its rope_theta differs from rope_theta = 10000.0' \
  "$(cfg rope_parameters "{'rope_type': 'default', 'rope_theta': 500000.0}")"
refused eps 'config.json: rms_norm_eps = 1e-06: Switchyard.s RMSNorm adds 1e-05' "$(cfg rms_norm_eps 1e-6)"
refused partial_rotary 'config.json: rope_parameters = .*: Switchyard.s RoPE rotates the whole head' \
  "$(cfg rope_parameters "{'rope_type': 'default', 'rope_theta': 10000.0, 'partial_rotary_factor': 0.5}")"
# The header's tensors rewritten (every byte of the data still covered once):
# one renamed, one more appended, one declared I16 over the same bytes.
retensor() {
  echo "f = open(d + '/model.safetensors', 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); data = f.read()
$1
j = json.dumps(h).encode(); j += b' ' * (-len(j) % 8); open(d + '/model.safetensors', 'wb').write(struct.pack('<Q', len(j)) + j + data)"
}
refused missing 'tensor model.norm.weight is missing' "$(retensor "h['ln_extra'] = h.pop('model.norm.weight')")"
refused fused 'is missing: the experts are in transformers 5.s fused layout (mlp.experts.gate_up_proj, down_proj)' \
  "$(retensor "h['model.layers.0.mlp.experts.gate_up_proj'] = h.pop('model.norm.weight')")"
refused unknown 'tensor ln_extra is not part of a Mixtral of this config.json' \
  "$(retensor "b = len(data); data += data[:8]; h['ln_extra'] = {'dtype': 'F32', 'shape': [2], 'data_offsets': [b, b + 8]}")"
refused i16 'tensor model.norm.weight: dtype I16, the import reads F32, BF16 and F16' \
  "$(retensor "t = h['model.norm.weight']; t['dtype'] = 'I16'; t['shape'] = [2 * t['shape'][0]]")"
# A config.json far larger than its weights: refused from the headers, before
# a model of its size (6.4G parameters) is built.
refused headers 'model.safetensors: tensor model.layers.0.block_sparse_moe.experts.0.w1.weight: shape \[176, 32\], this config.json gives \[65536, 32\]' \
  "$(cfg intermediate_size 65536); $(cfg num_hidden_layers 256)"
refused config_dir 'bad/config.json: is a directory (a Hugging Face model directory has config.json)' \
  "import os; os.remove(d + '/config.json'); os.mkdir(d + '/config.json')"
rm -rf bad && cp -r hf32 bad
"$IMPORT" --hf bad --out out_tok --tokenizer t.model > r.txt 2>&1
[ $? -eq 2 ] && grep -q "^error: --tokenizer t.model: bad's vocab_size is 256, bytes (no tokenizer)" r.txt \
  && echo "ok   refused a tokenizer for bytes" || { echo "FAIL tokenizer for bytes:"; cat r.txt; fail=1; }
mkdir exists
"$IMPORT" --hf hf32 --out exists > x.txt 2>&1
[ $? -eq 2 ] && grep -q "exists: exists; the import writes a new checkpoint directory" x.txt && echo "ok   refused an existing --out" \
  || { echo "FAIL existing --out:"; cat x.txt; fail=1; }
# model.seq_len without --config or --set: the length the export says it was
# trained at (switchyard.trained_seq_len, set to 16 here), not the default 64
# cut to max_position_embeddings (32); a --config whose seq_len that cuts is
# refused.
rm -rf hlen && cp -r hf32 hlen && python3 -c "
import json; c = json.load(open('hlen/config.json')); c['switchyard']['trained_seq_len'] = 16
json.dump(c, open('hlen/config.json', 'w'))"
"$IMPORT" --hf hlen --out imp_len > len.log 2>&1 && grep -q "model.seq_len 16," len.log \
  && echo "ok   seq_len from trained_seq_len: $(grep -o 'model.seq_len [0-9]*' len.log)" \
  || { echo "FAIL seq_len default:"; cat len.log; fail=1; }
# The losses as transformers trains a Mixtral: a file that is no Switchyard
# export (its switchyard block gone) balances only with output_router_logits,
# at router_aux_loss_coef x top_k / n_layers, and has no z-loss; the default
# window gets a note, max_position_embeddings being longer than it.
rm -rf hfpure && cp -r hf32 hfpure && python3 -c "
import json; c = json.load(open('hfpure/config.json')); del c['switchyard']; c['max_position_embeddings'] = 4096
c['router_aux_loss_coef'] = 0.02; json.dump(c, open('hfpure/config.json', 'w'))"
"$IMPORT" --hf hfpure --out imp_pure > pure.log 2>&1 && grep -q "^ *load_balance_coef: 0$" imp_pure/step_00000000/manifest.pbtxt \
  && grep -q "^ *z_loss_coef: 0$" imp_pure/step_00000000/manifest.pbtxt \
  && grep -q "^note: model.seq_len 64 (the default): sample and fine-tuning see windows of 64 tokens, where config.json's max_position_embeddings is 4096" pure.log \
  && echo "ok   a transformers file: no balance loss without output_router_logits, no z-loss, a note on the window" \
  || { echo "FAIL transformers losses:"; cat pure.log; grep -E "load_balance|z_loss" imp_pure/step_00000000/manifest.pbtxt; fail=1; }
# (top-1 here, so that k / L is not 1: the weights do not depend on k)
python3 -c "
import json; c = json.load(open('hfpure/config.json')); c['output_router_logits'] = True; c['num_experts_per_tok'] = 1
json.dump(c, open('hfpure/config.json', 'w'))"
rm -rf imp_pure && "$IMPORT" --hf hfpure --out imp_pure > pure.log 2>&1 \
  && grep -q "^ *load_balance_coef: 0.01$" imp_pure/step_00000000/manifest.pbtxt \
  && grep -q "^note: moe.renormalize at moe.top_k 1: every expert weight is p / p = 1, so the loss trains no router" pure.log \
  && echo "ok   with output_router_logits: load_balance_coef 0.02 x 1 / 2; top-1 renormalised noted" \
  || { echo "FAIL output_router_logits:"; cat pure.log; grep load_balance imp_pure/step_00000000/manifest.pbtxt; fail=1; }
printf 'model { seq_len: 512 }\n' > c512.pbtxt
"$IMPORT" --hf hf32 --out ov --config c512.pbtxt > c.txt 2>&1; rc=$?
[ $rc -eq 2 ] && [ "$(wc -l < c.txt)" -eq 1 ] && grep -qF "error: --config c512.pbtxt: model.seq_len = 512: hf32/config.json allows at most its max_position_embeddings = 32; lower it" c.txt && [ ! -e ov ] \
  && echo "ok   refused a --config seq_len past max_position_embeddings" || { echo "FAIL --config seq_len (rc $rc):"; cat c.txt; fail=1; }
# An override the import would replace (config.json decides the model) or
# cut (model.seq_len to max_position_embeddings) is refused, not dropped.
for o in "model.d_model=128|the import sets model.d_model = " "model.seq_len=100000|(at most its max_position_embeddings)" \
         "moe.top_k=1|the import sets moe.top_k = "; do
  "$IMPORT" --hf hf32 --out ov --set "${o%%|*}" > o.txt 2>&1; rc=$?
  [ $rc -eq 2 ] && [ "$(wc -l < o.txt)" -eq 1 ] && grep -qF "${o#*|}" o.txt && [ ! -e ov ] \
    && echo "ok   refused --set ${o%%|*}: $(cat o.txt)" || { echo "FAIL --set ${o%%|*} (rc $rc):"; cat o.txt; fail=1; }
done
exit $fail
