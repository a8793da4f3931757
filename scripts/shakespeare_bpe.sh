#!/usr/bin/env bash
# Trains configs/shakespeare_bpe.pbtxt: tokenizes ../shared/data/tinyshakespeare.txt
# with a 2048-piece SentencePiece BPE tokenizer into build/data/shakespeare_bpe
# (once; delete the directory to redo it), then trains on the shards. Extra
# arguments go to train_switch, e.g. ./scripts/shakespeare_bpe.sh --set train.steps=300
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
[ -x build/bin/tokenize ] || { echo "build/bin/tokenize was not built: SentencePiece (libsentencepiece-dev) is missing"; exit 1; }
out=build/data/shakespeare_bpe
[ -f "$out/tokenizer.model" ] ||
  build/bin/tokenize --input ../shared/data/tinyshakespeare.txt --vocab-size 2048 --out "$out"
exec build/bin/train_switch --config configs/shakespeare_bpe.pbtxt --metrics build/shakespeare_bpe.jsonl --overwrite "$@"
