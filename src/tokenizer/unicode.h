// Implements: the Unicode layer the tokenizer's text cleaning and CLIP's pre-tokenization regex
// run on: UTF-8 <-> UTF-32 conversion (Python's strict "utf-8" codec, "replace" on bad bytes, and
// ftfy's "utf-8-variants"), ICU wrappers for NFC/NFKC and Python-style str.lower()/str.upper(), and
// the character classes of Python's `re`/`regex` modules and str.isspace(). Unicode data
// (categories, normalization, full case mapping) comes from ICU.
#pragma once

#include <unicode/utypes.h>

#include <optional>
#include <string>

namespace t2i::tokenizer {

// UTF-8 <-> code points. Invalid UTF-8 decodes to U+FFFD per bad byte (Python's "replace").
std::u32string utf8_to_u32(const std::string& text);
std::string u32_to_utf8(const std::u32string& text);
void append_utf8(char32_t cp, std::string* out);

// Character classes of the `regex` module as used by CLIP's pattern.
bool is_letter(char32_t cp);        // \p{L}: Lu Ll Lt Lm Lo
bool is_number(char32_t cp);        // \p{N}: Nd Nl No
bool is_regex_space(char32_t cp);   // regex-module \s: the Unicode White_Space property
bool is_python_space(char32_t cp);  // str.isspace / str.split(): White_Space + U+1C..U+1F

// Shared by the text cleaners (ftfy.cpp, ftfy_encoding.cpp, text_clean.cpp); not public API.
namespace detail {

// Strict UTF-8 (Python's "utf-8" codec). With `variants`, also ftfy's "utf-8-variants":
// CESU-8 surrogate pairs and Java's C0 80 for U+0000. nullopt when the bytes do not decode.
std::optional<std::u32string> decode_utf8(const std::string& bytes, bool variants);

// Throws naming `what` when an ICU call failed.
void check_icu(UErrorCode err, const char* what);

std::u32string normalize(const std::u32string& s, bool nfkc);  // NFC, or NFKC with `nfkc`
std::u32string to_lower(const std::u32string& s);  // Python's str.lower() (ICU root locale)
std::u32string to_upper(const std::u32string& s);  // Python's str.upper() (ICU root locale)

bool contains(const char32_t* set, char32_t c);  // c is in the NUL-terminated `set`
bool is_ascii_letter(char32_t c);                // [A-Za-z]
bool is_word_char(char32_t c);                   // Python's re `\w` on str

}  // namespace detail
}  // namespace t2i::tokenizer
