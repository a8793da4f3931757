// UTF-8 well-formedness (Unicode 15, section 3.9, table 3-7): the text a
// SentencePiece tokenizer takes (runtime/tokenizer.h encodes it;
// runtime/piece_codec.h encodes prompts with it).
#pragma once
#include <cstddef>
#include <string>

namespace sy {

// The offset of the first byte of `text` that is not part of a well-formed
// UTF-8 sequence (no overlong forms, surrogates or code points past
// U+10FFFF), or std::string::npos when there is none.
size_t invalid_utf8_at(const std::string& text);
// "" where text is UTF-8, else what a refusal says of it: "not UTF-8 at byte
// 3 (0xE9)".
std::string utf8_problem(const std::string& text);

}  // namespace sy
