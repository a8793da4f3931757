#!/usr/bin/env bash
# examples/export_hf on checkpoints train_switch writes: mixtral_tiny (shrunk,
# written at EP=2 so the experts come from two shard files) exports to
# config.json + model.safetensors in f32 and bf16, and --verify's independent
# HF-convention forward matches the model's logits; a GPT-2-layout
# checkpoint is refused with one line and exit 2; an existing --out is refused;
# capacity-limited training routing is exported with a note.
#   export_hf_cli_test.sh TRAIN_SWITCH EXPORT_HF SOURCE_DIR MPIRUN
set -u
BIN=$1; EXPORT=$2; SRC=$3; MPIRUN=$4
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
common=(--set train.steps=3 --set train.warmup_steps=1 --set train.eval_interval=0 --set train.eval_batches=1
        --set train.batch=4 --set data.source=SYNTHETIC --set data.path= --set data.synthetic_bytes=50000 --set train.checkpoint_interval=3
        --set model.d_model=32 --set model.seq_len=32 --set moe.num_experts=4)
fail=0
"$MPIRUN" --oversubscribe -np 2 "$BIN" --config "$SRC/configs/mixtral_tiny.pbtxt" "${common[@]}" --set parallel.expert_parallel=2 \
  --set train.checkpoint_dir=mx > mx.log 2>&1 || { cat mx.log; exit 1; }
"$BIN" --config "$SRC/configs/tiny.pbtxt" "${common[@]}" --set train.checkpoint_dir=gpt2 > gpt2.log 2>&1 || { cat gpt2.log; exit 1; }
"$BIN" --config "$SRC/configs/mixtral_tiny.pbtxt" "${common[@]}" --set moe.dropless=false \
  --set train.checkpoint_dir=capped > capped.log 2>&1 || { cat capped.log; exit 1; }

if out=$("$EXPORT" --checkpoint latest --checkpoint-dir mx --out hf32 --verify "ROMEO: a byte-level test" 2>&1); then
  echo "$out"
  grep -qE "^verify: 32 x 256 logits, largest \|logit\| [0-9.e+-]+, largest difference [0-9.e+-]+ " <<<"$out" \
    && echo "ok   f32 export verified" || { echo "FAIL: no verify line"; fail=1; }
else echo "FAIL f32 export: $out"; fail=1; fi
[ "$(ls hf32 | tr '\n' ' ')" = "config.json model.safetensors " ] && echo "ok   files: $(ls hf32 | tr '\n' ' ')" \
  || { echo "FAIL: files $(ls -a hf32)"; fail=1; }
python3 - hf32 <<'PY' || fail=1
import json, struct, sys
d = sys.argv[1]
c = json.load(open(d + "/config.json"))
want = {"model_type": "mixtral", "hidden_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2,
        "num_hidden_layers": 2, "vocab_size": 256, "rope_theta": 10000.0, "rms_norm_eps": 1e-05,
        "intermediate_size": 176, "max_position_embeddings": 32}
bad = {k: (c.get(k), v) for k, v in want.items() if c.get(k) != v}
f = open(d + "/model.safetensors", "rb")
n = struct.unpack("<Q", f.read(8))[0]
h = json.loads(f.read(n))
names = sorted(k for k in h if k != "__metadata__")
need = {"model.layers.1.block_sparse_moe.experts.3.w3.weight": [176, 32],
        "model.layers.0.self_attn.o_proj.weight": [32, 32], "lm_head.weight": [256, 32]}
for k, s in need.items():
    if k not in h or h[k]["shape"] != s or h[k]["dtype"] != "F32":
        bad[k] = h.get(k)
if len(names) != 1 + 2 * (7 + 3 * 4) + 2:
    bad["count"] = len(names)
print(("FAIL config/tensors: %s" % bad) if bad else "ok   config.json and %d tensors in HF names" % len(names))
sys.exit(1 if bad else 0)
PY
# (the bf16 export's logits within bf16 rounding of the model's: the tool
# bounds only the f32 export's, so the test bounds this one, at 2e-2 of the
# largest logit)
if out=$("$EXPORT" --checkpoint mx/step_00000003 --out hf16 --dtype bf16 --verify "x" 2>&1) \
   && grep -q '"torch_dtype": "bfloat16"' hf16/config.json \
   && python3 -c 'import re,sys; m=re.search(r"\(([0-9.e+-]+) of it\)", sys.argv[1]); sys.exit(0 if m and float(m.group(1)) <= 2e-2 else 1)' "$out"
then echo "ok   bf16: $(grep verify <<<"$out")"
else echo "FAIL bf16 export: $out"; fail=1; fi

out=$("$EXPORT" --checkpoint latest --checkpoint-dir gpt2 --out g 2>&1); rc=$?
if [ $rc -eq 2 ] && [ "$(wc -l <<<"$out")" -eq 1 ] && grep -q "model.position = LEARNED: .*cannot be exported to Hugging Face Mixtral" <<<"$out" \
   && [ ! -e g ]; then echo "ok   GPT-2 layout refused: $out"
else echo "FAIL: GPT-2 layout (rc $rc): $out"; fail=1; fi
out=$("$EXPORT" --checkpoint latest --checkpoint-dir mx --out hf32 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "hf32: exists" <<<"$out" && echo "ok   existing --out refused" || { echo "FAIL: rc $rc: $out"; fail=1; }
out=$("$EXPORT" --checkpoint latest --checkpoint-dir mx --out /proc/sy_export_test 2>&1); rc=$?
[ $rc -eq 2 ] && [ "$(wc -l <<<"$out")" -eq 1 ] && grep -q "^error: /proc/sy_export_test: cannot create the export's directory in /proc: " <<<"$out" \
  && echo "ok   unwritable --out refused: $out" || { echo "FAIL: --out under /proc (rc $rc): $out"; fail=1; }
out=$("$EXPORT" --checkpoint latest --checkpoint-dir capped --out hfc 2>&1); rc=$?
[ $rc -eq 0 ] && grep -q "^note: trained with capacity-limited routing" <<<"$out" && echo "ok   capacity note" \
  || { echo "FAIL: capped (rc $rc): $out"; fail=1; }
exit $fail
