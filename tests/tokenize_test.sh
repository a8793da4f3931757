#!/usr/bin/env bash
# The tokenized-data path end to end: examples/tokenize trains a small BPE
# tokenizer on text and writes train/val shards; a second run into the same
# directory is refused without --overwrite (exit 2), and a run that loads
# the saved tokenizer writes the same shards; train_switch trains a few
# steps on the shards (data.source TOKEN_FILES) and checkpoints; sample
# decodes through the tokenizer the config names, continuing the prompt; a
# damaged shard is refused with one line naming it (exit 2).
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
"$BIN/tokenize" --input text.txt --vocab-size 400 --out tok > again.log 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "pass --overwrite" again.log || { echo "FAIL: a second run into tok/ gave $rc:"; cat again.log; fail=1; }
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

# A truncated training shard: one line naming the file and the count.
size=$(stat -c %s tok/train_000000.bin)
head -c $((size - 3)) tok/train_000000.bin > tok/cut.bin && mv tok/cut.bin tok/train_000000.bin
"$BIN/train_switch" --config "$SRC/configs/tiny.pbtxt" "${set_args[@]}" > bad.log 2>&1
rc=$?
[ $rc -eq 2 ] && [ "$(grep -c . bad.log)" -eq 1 ] && grep -q "^error: tok/train_000000.bin: count = [0-9]*: truncated" bad.log \
  || { echo "FAIL: a truncated shard gave $rc:"; cat bad.log; fail=1; }
[ $fail -eq 0 ] && echo "ok   tokenize: shards written and refused when present, trained on, sampled through the tokenizer, a bad shard refused"
exit $fail
