// piece_codec_check MODEL TEXT SHARD...: encodes TEXT's bytes with
// runtime/piece_codec.h and compares the ids with the shards (examples/
// tokenize wrote them through SentencePiece itself), then decodes them back
// to TEXT. Exit 0 when both agree, 1 naming the first difference.
// (tokenize encodes in pieces of 1 MiB cut after a newline; TEXT must be
// shorter, so both encode it whole.)
#include <fstream>
#include <iostream>
#include <sstream>

#include "runtime/piece_codec.h"
#include "runtime/token_shard.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: piece_codec_check MODEL TEXT SHARD...\n";
    return 2;
  }
  try {
    const sy::PieceCodec c = sy::PieceCodec::load(argv[1]);
    std::ifstream in(argv[2], std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    std::vector<int32_t> want;
    for (int a = 3; a < argc; ++a) {
      const sy::TokenShard s(argv[a], static_cast<uint32_t>(c.vocab_size()));
      for (int64_t i = 0; i < s.size(); ++i) want.push_back(static_cast<int32_t>(s.id(i)));
    }
    const std::vector<int32_t> got = c.encode(text);
    for (size_t i = 0; i < std::max(got.size(), want.size()); ++i)
      if (i >= got.size() || i >= want.size() || got[i] != want[i]) {
        std::cerr << "piece_codec_check: id " << i << " differs: SentencePiece " << (i < want.size() ? want[i] : -1)
                  << ", piece_codec " << (i < got.size() ? got[i] : -1) << " (" << want.size() << " vs " << got.size()
                  << " ids)\n";
        return 1;
      }
    if (c.decode(got) != text) {
      std::cerr << "piece_codec_check: decoding does not give the text back\n";
      return 1;
    }
    std::cout << "piece_codec_check: " << got.size() << " ids, the same as SentencePiece's, decoded back to "
              << text.size() << " bytes\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "piece_codec_check: " << e.what() << "\n";
    return 1;
  }
}
