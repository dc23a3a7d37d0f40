// Implements: the text cleaning of transformers' CLIPTokenizer in its two modes (text_clean.h).
//
// kFtfy runs the ftfy 6.1.1 `fix_text` emulation (ftfy.h), then CLIP's `whitespace_clean` and
// `.lower()`.
//
// kBasic mirrors transformers' BasicTokenizer(strip_accents=False, do_split_on_punc=False)
// (models/clip/tokenization_clip.py): _clean_text, _tokenize_chinese_chars, NFC, whitespace
// split, lower-case, re-joined with single spaces.
#include "tokenizer/text_clean.h"

#include <unicode/uchar.h>

#include <stdexcept>

namespace t2i::tokenizer {

using detail::normalize;
using detail::to_lower;

TextCleanMode parse_clean_mode(const std::string& name) {
    if (name == "ftfy") return TextCleanMode::kFtfy;
    if (name == "basic") return TextCleanMode::kBasic;
    throw std::runtime_error("unknown text clean mode '" + name +
                             "': expected 'ftfy' (transformers with ftfy installed) or 'basic' "
                             "(transformers' BasicTokenizer fallback)");
}

namespace {

// CLIP's whitespace_clean: regex `\s+` -> " ", then str.strip().
std::u32string whitespace_clean(const std::u32string& t) {
    std::u32string out;
    for (size_t i = 0; i < t.size();) {
        if (is_regex_space(t[i])) {
            while (i < t.size() && is_regex_space(t[i])) ++i;
            out.push_back(' ');
        } else {
            out.push_back(t[i++]);
        }
    }
    size_t b = 0, e = out.size();
    while (b < e && is_python_space(out[b])) ++b;
    while (e > b && is_python_space(out[e - 1])) --e;
    return out.substr(b, e - b);
}

// ---------------------------------------------------------------------------------------------
// BasicTokenizer (transformers' tokenization_utils._is_control / _is_whitespace and
// BasicTokenizer._is_chinese_char)

bool is_control(char32_t c) {
    if (c == '\t' || c == '\n' || c == '\r') return false;
    switch (u_charType(static_cast<UChar32>(c))) {
        case U_CONTROL_CHAR:
        case U_FORMAT_CHAR:
        case U_SURROGATE:
        case U_PRIVATE_USE_CHAR:
        case U_UNASSIGNED:
            return true;
        default:
            return false;
    }
}

bool is_whitespace(char32_t c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' ||
           u_charType(static_cast<UChar32>(c)) == U_SPACE_SEPARATOR;
}

bool is_chinese_char(char32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

std::u32string basic_clean(const std::u32string& text) {
    // _clean_text, then _tokenize_chinese_chars.
    std::u32string spaced;
    for (char32_t c : text) {
        if (c == 0 || c == 0xFFFD || is_control(c)) continue;
        if (is_whitespace(c)) {
            spaced.push_back(' ');
        } else if (is_chinese_char(c)) {
            spaced += U" ";
            spaced.push_back(c);
            spaced += U" ";
        } else {
            spaced.push_back(c);
        }
    }
    const std::u32string normalized = normalize(spaced, /*nfkc=*/false);
    // whitespace_tokenize (str.split()), lower-case each token, " ".join.
    std::u32string out;
    for (size_t i = 0; i < normalized.size();) {
        if (is_python_space(normalized[i])) {
            ++i;
            continue;
        }
        size_t j = i;
        while (j < normalized.size() && !is_python_space(normalized[j])) ++j;
        if (!out.empty()) out.push_back(' ');
        out += to_lower(normalized.substr(i, j - i));
        i = j;
    }
    return out;
}

}  // namespace

std::string clean_text(const std::string& text, TextCleanMode mode) {
    const std::u32string t = utf8_to_u32(text);
    if (mode == TextCleanMode::kBasic) return u32_to_utf8(basic_clean(t));
    return u32_to_utf8(to_lower(whitespace_clean(ftfy_fix_text_u32(t))));
}

}  // namespace t2i::tokenizer
