// Implements: the two text-cleaning modes of transformers' slow CLIPTokenizer
// (models/clip/tokenization_clip.py, `CLIPTokenizer._tokenize`):
//   kFtfy  - ftfy 6.1.1 installed: `whitespace_clean(ftfy.fix_text(text)).lower()`;
//   kBasic - no ftfy: `" ".join(BasicTokenizer(strip_accents=False, do_split_on_punc=False)
//            .tokenize(text))` (control chars dropped, CJK spaced, NFC, lower-cased).
// The ftfy emulation is in ftfy.h, the UTF-8 and Unicode character-class layer in unicode.h (both
// included here for the tokenizer and its tests).
#pragma once

#include <string>

#include "tokenizer/ftfy.h"
#include "tokenizer/unicode.h"

namespace t2i::tokenizer {

enum class TextCleanMode { kFtfy, kBasic };

// "ftfy" | "basic"; anything else throws naming the accepted values.
TextCleanMode parse_clean_mode(const std::string& name);

// The cleaned text CLIP's regex and BPE run on (UTF-8 in, UTF-8 out).
std::string clean_text(const std::string& text, TextCleanMode mode);

}  // namespace t2i::tokenizer
