#!/usr/bin/env bash
# The tokenized-data path end to end: examples/tokenize trains a small BPE
# tokenizer on text and writes train/val shards; a second run into the same
# directory is refused without --overwrite (exit 2, one line naming a file,
# nothing changed), an output that is an input is refused even with it, a
# run with it replaces every output and removes a stale shard, and a run that
# fails while writing (a file size limit) leaves the directory as it was; a
# run that loads the saved tokenizer writes the same shards; train_switch trains a few
# steps on the shards (data.source TOKEN_FILES) and checkpoints; sample
# decodes through the tokenizer the config names, continuing the prompt; a
# damaged shard is refused with one line naming it (exit 2); start and end
# tokens go into the shards (tokenize --bos, --eos), the start before a
# sample's prompt (data.bos_id, sample --bos), both through export_hf and
# import_hf.
# runtime/piece_codec.h encodes the text to SentencePiece's ids.
#   tokenize_test.sh BIN_DIR SOURCE_DIR
set -u
BIN=$1; SRC=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
fail=0
# Text to tokenize: the project's own prose (README and design notes), a few
# hundred kilobytes at most.
cat "$SRC/README.md" "$SRC"/docs/experiments/*.md > text.txt
"$BIN/tokenize" --input text.txt --vocab-size 400 --out tok > tok.log 2>&1 || { echo "FAIL tokenize"; cat tok.log; exit 1; }
cat tok.log
for f in tok/tokenizer.model tok/train_000000.bin tok/val_000000.bin; do
  [ -f "$f" ] || { echo "FAIL: $f not written"; fail=1; }
done
# Every file in tok/ (hidden ones too) with its checksum.
state() { (cd tok && find . -type f -exec md5sum {} + | sort -k2); }
first=$(state)
"$BIN/tokenize" --input text.txt --vocab-size 400 --out tok > again.log 2>&1
rc=$?
[ $rc -eq 2 ] && [ "$(grep -c . again.log)" -eq 1 ] && [ "$(state)" = "$first" ] \
  && grep -q "^error: --out tok/tokenizer.model: exists and is not empty ([0-9]* bytes); pass --overwrite" again.log \
  || { echo "FAIL: a second run into tok/ gave $rc:"; cat again.log; fail=1; }
# An output that is one of the inputs: refused even with --overwrite.
"$BIN/tokenize" --input text.txt --input tok/val_000000.bin --vocab-size 400 --out tok --overwrite > self.log 2>&1
rc=$?
[ $rc -eq 2 ] && [ "$(state)" = "$first" ] \
  && grep -q "^error: --out tok/val_000000.bin: is --input tok/val_000000.bin, an input of this run" self.log \
  || { echo "FAIL: an --input among the outputs gave $rc:"; cat self.log; fail=1; }
"$BIN/tokenize" --input text.txt --model tok/tokenizer.model --out tok --overwrite > self.log 2>&1
rc=$?
[ $rc -eq 2 ] && [ "$(state)" = "$first" ] \
  && grep -q "^error: --out tok/tokenizer.model: is --model tok/tokenizer.model, an input of this run" self.log \
  || { echo "FAIL: --model among the outputs gave $rc:"; cat self.log; fail=1; }
# A --model that is no SentencePiece model: one line in our terms (not
# SentencePiece's source line), exit 2, nothing written.
"$BIN/tokenize" --input text.txt --model text.txt --out tokjunk > junk.log 2>&1; rc=$?
[ $rc -eq 2 ] && [ "$(wc -l < junk.log)" -eq 1 ] && grep -q "^error: text.txt: not a SentencePiece model" junk.log \
  && ! grep -q '\.cc(' junk.log && [ ! -e tokjunk ] \
  || { echo "FAIL: a text file as --model gave $rc:"; cat junk.log; fail=1; }
# Text that is not UTF-8 (Latin-1 here): refused naming the file and the byte,
# not encoded as U+FFFD (the shards would decode to another text).
printf 'caf\xe9\n' > latin1.txt
"$BIN/tokenize" --input text.txt --input latin1.txt --model tok/tokenizer.model --out toklatin > latin.log 2>&1; rc=$?
[ $rc -eq 2 ] && [ "$(wc -l < latin.log)" -eq 1 ] && [ ! -e toklatin ] \
  && grep -q "^error: --input latin1.txt: not UTF-8 at byte 3 (0xE9): the tokenizer takes UTF-8 text" latin.log \
  || { echo "FAIL: a Latin-1 --input gave $rc:"; cat latin.log; fail=1; }
# A model's pieces are its own: --vocab-size beside --model is refused, not ignored.
"$BIN/tokenize" --input text.txt --model tok/tokenizer.model --vocab-size 1000 --out tok2 > vs.log 2>&1; rc=$?
[ $rc -eq 2 ] && [ "$(wc -l < vs.log)" -eq 1 ] && grep -q "^error: --vocab-size excludes --model" vs.log && [ ! -e tok2 ] \
  || { echo "FAIL: --vocab-size with --model gave $rc:"; cat vs.log; fail=1; }
# A run that fails while writing (write() gets EFBIG past a 12 KiB file size
# limit: the tokenizer fits, the training shard does not) leaves tok/ as it was,
# and its error names the system's reason (EFBIG).
( ulimit -f 12; trap '' XFSZ; exec "$BIN/tokenize" --input text.txt --vocab-size 400 --out tok --overwrite ) > full.log 2>&1
rc=$?
[ $rc -eq 1 ] && grep -q "^error: .*train_000000.bin.*: write failed after [0-9]* of [0-9]* bytes: File too large$" full.log && [ "$(state)" = "$first" ] \
  || { echo "FAIL: a run that failed writing gave $rc and left tok/ changed:"; tail -3 full.log; diff <(echo "$first") <(state); fail=1; }
# Refusals before any output: one error line in our terms (not
# SentencePiece's source lines and options), exit 2, no --out directory
# left behind by the run that made it.
head -c 2000 text.txt > small.txt; : > empty.txt
for args in "empty.txt 400|--input empty.txt: empty" \
            "small.txt 270|vocab_size 270: fewer pieces than the" \
            "small.txt 100000|vocab_size 100000: more pieces than this text yields (at most"; do
  in=${args%% *}; rest=${args#* }; v=${rest%%|*}; want=${args#*|}
  "$BIN/tokenize" --input "$in" --vocab-size "$v" --out made > made.log 2>&1
  rc=$?
  [ $rc -eq 2 ] && [ "$(grep -c '^error: ' made.log)" -eq 1 ] && ! grep -q 'LOG(\|\.cc(' made.log && grep -qF -- "$want" made.log \
    && [ ! -e made ] && echo "ok   refused: $(grep '^error: ' made.log)" \
    || { echo "FAIL: tokenize $in --vocab-size $v gave $rc:"; cat made.log; ls -a made 2>&1; fail=1; }
done
# --overwrite replaces every output (the same tokenizer and shards again), and
# a stale shard of an earlier run goes.
printf 'stale' > tok/train_000007.bin
"$BIN/tokenize" --input text.txt --vocab-size 400 --out tok --overwrite > over.log 2>&1
rc=$?
[ $rc -eq 0 ] && [ "$(state)" = "$first" ] || { echo "FAIL: --overwrite gave $rc:"; tail -3 over.log; diff <(echo "$first") <(state); fail=1; }
"$BIN/tokenize" --input text.txt --model tok/tokenizer.model --out tok2 > tok2.log 2>&1 || { echo "FAIL tokenize --model"; cat tok2.log; fail=1; }
cmp -s tok/train_000000.bin tok2/train_000000.bin && cmp -s tok/val_000000.bin tok2/val_000000.bin \
  || { echo "FAIL: the loaded tokenizer wrote other shards"; fail=1; }
# The project's own BPE encoder (runtime/piece_codec.h, what sample uses)
# gives SentencePiece's ids for the whole text, and decodes them back.
"$BIN/piece_codec_check" tok/tokenizer.model text.txt tok/train_000000.bin tok/val_000000.bin || { echo "FAIL: piece_codec"; fail=1; }

set_args=(--set data.source=TOKEN_FILES --set 'data.token_files=tok/train_*.bin' --set 'data.val_token_files=tok/val_*.bin'
          --set data.tokenizer=tok/tokenizer.model --set model.vocab_size=400 --set train.steps=6 --set train.warmup_steps=2
          --set train.batch=4 --set train.eval_batches=1 --set train.eval_interval=0 --set train.log_interval=3)
"$BIN/train_switch" --config "$SRC/configs/tiny.pbtxt" "${set_args[@]}" --set train.checkpoint_interval=6 \
  --set train.checkpoint_dir=ck > train.log 2>&1 || { echo "FAIL train_switch on shards"; cat train.log; exit 1; }
grep -E "data: [0-9]+ train tokens in 1 shard / [0-9]+ val tokens in 1 shard" train.log || { echo "FAIL: no data line"; cat train.log; fail=1; }
# A data.tokenizer that is no SentencePiece model: refused before training
# (only sample would have found it), exit 2.
"$BIN/train_switch" --config "$SRC/configs/tiny.pbtxt" "${set_args[@]}" --set data.tokenizer=text.txt > tt.log 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q '^error: .*data.tokenizer = "text.txt": text.txt: not a SentencePiece model' tt.log \
  && echo "ok   refused: $(grep '^error' tt.log)" || { echo "FAIL: a text file as data.tokenizer gave $rc:"; cat tt.log; fail=1; }
grep -q "^done: loss" train.log || { echo "FAIL: no done line"; cat train.log; fail=1; }
"$BIN/sample" --checkpoint latest --checkpoint-dir ck --prompt "Switchyard" --tokens 20 --seed 3 > s.txt 2> s.err \
  || { echo "FAIL sample"; cat s.err; fail=1; }
head -1 s.txt | grep -q "^Switchyard" || { echo "FAIL: the sample does not start with the prompt"; cat s.txt; fail=1; }
grep -q "^--- 20 tokens from " s.txt || { echo "FAIL: no tokens line"; cat s.txt; fail=1; }
# Without the tokenizer where the config says: refused, naming it, exit 2.
mv tok/tokenizer.model tok/moved.model
"$BIN/sample" --checkpoint latest --checkpoint-dir ck --tokens 5 > m.txt 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "tokenizer tok/tokenizer.model: no such file" m.txt || { echo "FAIL: missing tokenizer gave $rc:"; cat m.txt; fail=1; }
"$BIN/sample" --checkpoint latest --checkpoint-dir ck --tokens 5 --tokenizer tok/moved.model > m2.txt 2>&1 \
  || { echo "FAIL: --tokenizer"; cat m2.txt; fail=1; }
mv tok/moved.model tok/tokenizer.model
# A vocabulary padded past the tokenizer's 400 pieces (to 448): sampling
# never draws the ids no piece decodes (a hot temperature would otherwise
# draw some of the 48), and says so.
"$BIN/train_switch" --config "$SRC/configs/tiny.pbtxt" "${set_args[@]}" --set model.vocab_size=448 \
  --set train.checkpoint_interval=6 --set train.checkpoint_dir=ck448 > train448.log 2>&1 || { echo "FAIL train_switch, vocab 448"; cat train448.log; fail=1; }
"$BIN/sample" --checkpoint latest --checkpoint-dir ck448 --tokens 300 --temperature 3 --seed 4 > p.txt 2> p.err \
  && grep -q "note: model.vocab_size = 448, the tokenizer has 400 pieces: ids 400 and up are never drawn" p.err \
  || { echo "FAIL: sampling a padded vocabulary:"; cat p.err; fail=1; }

# Start and end tokens (Mixtral's <s> and </s>): tokenize --bos and --eos
# put them before and after each input's tokens; a model trained with
# data.bos_id samples with it before the prompt (sample --bos -1: without,
# another text), decodes it to nothing, and export_hf / import_hf carry both
# as config.json's bos_token_id and eos_token_id (the bos unless the
# directory's tokenizer_config.json says add_bos_token false). (Stopping at
# the eos: kv_cache_test's GenerationStopsAfterTheStopId.)
"$BIN/tokenize" --input text.txt --input text.txt --model tok/tokenizer.model --bos 1 --eos 2 --out tokb > tokb.log 2>&1 \
  || { echo "FAIL tokenize --bos --eos"; cat tokb.log; fail=1; }
python3 - tok tokb <<'PY' || { echo "FAIL: the bos and eos ids in the shards, each input's tail in val"; fail=1; }
import glob, struct, sys
def ids(d, split):
    out = []
    for p in sorted(glob.glob("%s/%s_*.bin" % (d, split))):
        b = open(p, "rb").read(); w = struct.unpack("<I", b[12:16])[0]; n = struct.unpack("<Q", b[16:24])[0]
        out += list(struct.unpack("<%d%s" % (n, "H" if w == 2 else "I"), b[32:32 + n * w]))
    return out
text = ids(sys.argv[1], "train") + ids(sys.argv[1], "val")  # (the text's ids: its train and val shards)
# Two inputs, the text twice: each 1, its ids, 2; the last tenth of each
# input (not of the whole stream) held out, the two tails the val shards
# (the second's with the fraction of a token the first left over).
part = [1] + text + [2]
first = int(len(part) * 0.1)
second = int(len(part) * 0.1 - first + len(part) * 0.1)
train, val = ids(sys.argv[2], "train"), ids(sys.argv[2], "val")
sys.exit(0 if train == part[:-first] + part[:-second] and val == part[-first:] + part[-second:] else 1)
PY
"$BIN/tokenize" --input text.txt --vocab-size 400 --bos 400 --out tokbad > tokbad.log 2>&1
[ $? -eq 2 ] && grep -q "^error: --bos 400: the tokenizer to train has 400 pieces (--vocab-size)" tokbad.log && [ ! -e tokbad ] \
  || { echo "FAIL: --bos past the vocabulary:"; cat tokbad.log; fail=1; }
"$BIN/tokenize" --input text.txt --vocab-size 400 --eos 400 --out tokbad > tokbad.log 2>&1
[ $? -eq 2 ] && grep -q "^error: --eos 400: the tokenizer to train has 400 pieces (--vocab-size)" tokbad.log && [ ! -e tokbad ] \
  || { echo "FAIL: --eos past the vocabulary:"; cat tokbad.log; fail=1; }
"$BIN/tokenize" --input text.txt --model tok/tokenizer.model --bos 400 --out tokbad > tokbad.log 2>&1
[ $? -eq 2 ] && grep -q "^error: --bos 400: the tokenizer tok/tokenizer.model has 400 pieces$" tokbad.log && [ ! -e tokbad ] \
  || { echo "FAIL: --bos past a loaded --model's vocabulary:"; cat tokbad.log; fail=1; }
"$BIN/train_switch" --config "$SRC/configs/mixtral_tiny.pbtxt" "${set_args[@]}" --set data.token_files='tokb/train_*.bin' \
  --set data.val_token_files='tokb/val_*.bin' --set data.path= --set data.bos_id=1 --set data.eos_id=2 --set model.d_model=32 --set moe.num_experts=4 \
  --set train.checkpoint_interval=6 --set train.checkpoint_dir=ckb > trainb.log 2>&1 || { echo "FAIL train_switch, bos"; cat trainb.log; fail=1; }
"$BIN/sample" --checkpoint latest --checkpoint-dir ckb --prompt "Switchyard" --tokens 30 --seed 3 > b1.txt 2>/dev/null
"$BIN/sample" --checkpoint latest --checkpoint-dir ckb --prompt "Switchyard" --tokens 30 --seed 3 --bos -1 > b0.txt 2>/dev/null
head -1 b1.txt | grep -q "^Switchyard" && head -1 b0.txt | grep -q "^Switchyard" && ! cmp -s b1.txt b0.txt \
  || { echo "FAIL: sampling with and without the bos:"; cat b1.txt b0.txt; fail=1; }
"$BIN/sample" --checkpoint latest --checkpoint-dir ckb --tokens 5 --bos 400 > b2.txt 2>&1
[ $? -eq 2 ] && grep -q "^error: --bos 400: tokenizer tok/tokenizer.model has 400 pieces" b2.txt || { echo "FAIL: sample --bos 400:"; cat b2.txt; fail=1; }
"$BIN/sample" --checkpoint latest --checkpoint-dir ckb --tokens 5 --eos 400 > b2.txt 2>&1
[ $? -eq 2 ] && grep -q "^error: --eos 400: tokenizer tok/tokenizer.model has 400 pieces" b2.txt || { echo "FAIL: sample --eos 400:"; cat b2.txt; fail=1; }
"$BIN/sample" --checkpoint latest --checkpoint-dir ckb --tokens 5 --prompt "$(printf 'caf\xe9')" > b2.txt 2>&1
[ $? -eq 2 ] && grep -q "^error: --prompt: not UTF-8 at byte 3 (0xE9): tokenizer tok/tokenizer.model takes UTF-8 text" b2.txt \
  || { echo "FAIL: sample with a Latin-1 prompt:"; cat b2.txt; fail=1; }
"$BIN/export_hf" --checkpoint latest --checkpoint-dir ckb --out hfb > eb.log 2>&1 \
  && python3 -c "import json, sys; c = json.load(open('hfb/config.json')); sys.exit((c['bos_token_id'], c['eos_token_id']) != (1, 2))" \
  && cp tok/tokenizer.model hfb/ && "$BIN/import_hf" --hf hfb --out impb > ib.log 2>&1 \
  && grep -q "bos_id: 1$" impb/step_00000000/manifest.pbtxt && grep -q "eos_id: 2$" impb/step_00000000/manifest.pbtxt \
  && echo '{"add_bos_token": false}' > hfb/tokenizer_config.json && "$BIN/import_hf" --hf hfb --out impb0 > ib0.log 2>&1 \
  && grep -q "bos_id: -1$" impb0/step_00000000/manifest.pbtxt && grep -q "eos_id: 2$" impb0/step_00000000/manifest.pbtxt \
  && "$BIN/sample" --checkpoint impb/step_00000000 --prompt "Switchyard" --tokens 30 --seed 3 > b3.txt 2>/dev/null \
  && cmp -s <(head -c 60 b1.txt) <(head -c 60 b3.txt) \
  || { echo "FAIL: bos_token_id and eos_token_id through export_hf and import_hf:"; cat eb.log ib.log ib0.log 2>/dev/null
       grep -E 'bos|eos' impb*/step_00000000/manifest.pbtxt; fail=1; }

# A truncated training shard: one line naming the file and the count.
size=$(stat -c %s tok/train_000000.bin)
head -c $((size - 3)) tok/train_000000.bin > tok/cut.bin && mv tok/cut.bin tok/train_000000.bin
"$BIN/train_switch" --config "$SRC/configs/tiny.pbtxt" "${set_args[@]}" > bad.log 2>&1
rc=$?
[ $rc -eq 2 ] && [ "$(grep -c . bad.log)" -eq 1 ] && grep -q "^error: tok/train_000000.bin: count = [0-9]*: truncated" bad.log \
  || { echo "FAIL: a truncated shard gave $rc:"; cat bad.log; fail=1; }
[ $fail -eq 0 ] && echo "ok   tokenize: shards written, refused when present or an input, replaced whole or not at all, trained on, sampled through the tokenizer, a bos token carried, a bad shard refused"
exit $fail
