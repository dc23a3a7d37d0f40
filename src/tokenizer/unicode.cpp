// Implements: unicode.h: UTF-8 <-> UTF-32, the ICU normalization and case-mapping wrappers, and
// the Unicode character classes used by text cleaning and CLIP's pre-tokenization regex.
#include "tokenizer/unicode.h"

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <cstdint>
#include <stdexcept>

namespace t2i::tokenizer {

void append_utf8(char32_t cp, std::string* out) {
    if (cp < 0x80) {
        out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

std::string u32_to_utf8(const std::u32string& text) {
    std::string out;
    out.reserve(text.size());
    for (char32_t c : text) append_utf8(c, &out);
    return out;
}

std::u32string utf8_to_u32(const std::string& text) {
    std::u32string out;
    out.reserve(text.size());
    size_t i = 0;
    while (i < text.size()) {
        // Decode one character strictly; a bad byte becomes U+FFFD and decoding resumes after it.
        const uint8_t b0 = static_cast<uint8_t>(text[i]);
        const size_t len = b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
        if (auto one = detail::decode_utf8(text.substr(i, len), false); one && one->size() == 1) {
            out.push_back((*one)[0]);
            i += len;
        } else {
            out.push_back(0xFFFD);
            i += 1;
        }
    }
    return out;
}
bool is_letter(char32_t cp) {
    switch (u_charType(static_cast<UChar32>(cp))) {
        case U_UPPERCASE_LETTER:
        case U_LOWERCASE_LETTER:
        case U_TITLECASE_LETTER:
        case U_MODIFIER_LETTER:
        case U_OTHER_LETTER:
            return true;
        default:
            return false;
    }
}

bool is_number(char32_t cp) {
    switch (u_charType(static_cast<UChar32>(cp))) {
        case U_DECIMAL_DIGIT_NUMBER:
        case U_LETTER_NUMBER:
        case U_OTHER_NUMBER:
            return true;
        default:
            return false;
    }
}

bool is_regex_space(char32_t cp) { return u_isUWhiteSpace(static_cast<UChar32>(cp)); }

bool is_python_space(char32_t cp) { return (cp >= 0x1C && cp <= 0x1F) || is_regex_space(cp); }

namespace {

icu::UnicodeString to_icu(const std::u32string& s) {
    return icu::UnicodeString::fromUTF32(reinterpret_cast<const UChar32*>(s.data()),
                                         static_cast<int32_t>(s.size()));
}

std::u32string from_icu(const icu::UnicodeString& s) {
    std::u32string out;
    for (int32_t i = 0; i < s.length();) {
        const UChar32 c = s.char32At(i);
        out.push_back(static_cast<char32_t>(c));
        i += U16_LENGTH(c);
    }
    return out;
}

}  // namespace

namespace detail {

std::optional<std::u32string> decode_utf8(const std::string& bytes, bool variants) {
    std::u32string out;
    const size_t n = bytes.size();
    auto at        = [&](size_t k) -> uint32_t {
        return k < n ? static_cast<uint8_t>(bytes[k]) : 0x100;  // 0x100: past the end
    };
    auto cont = [](uint32_t b) { return b >= 0x80 && b <= 0xBF; };
    for (size_t i = 0; i < n;) {
        const uint32_t b0 = at(i);
        if (b0 < 0x80) {
            out.push_back(b0);
            i += 1;
        } else if (variants && b0 == 0xC0 && at(i + 1) == 0x80) {
            out.push_back(0);
            i += 2;
        } else if (b0 >= 0xC2 && b0 <= 0xDF && cont(at(i + 1))) {
            out.push_back(((b0 & 0x1F) << 6) | (at(i + 1) & 0x3F));
            i += 2;
        } else if (variants && b0 == 0xED && at(i + 1) >= 0xA0 && at(i + 1) <= 0xAF &&
                   cont(at(i + 2)) && at(i + 3) == 0xED && at(i + 4) >= 0xB0 && at(i + 4) <= 0xBF &&
                   cont(at(i + 5))) {
            const uint32_t hi = 0xD000 | ((at(i + 1) & 0x3F) << 6) | (at(i + 2) & 0x3F);
            const uint32_t lo = 0xD000 | ((at(i + 4) & 0x3F) << 6) | (at(i + 5) & 0x3F);
            out.push_back(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00));
            i += 6;
        } else if (b0 >= 0xE0 && b0 <= 0xEF) {
            const uint32_t b1 = at(i + 1);
            const bool ok     = cont(b1) && cont(at(i + 2)) && !(b0 == 0xE0 && b1 < 0xA0) &&
                            !(b0 == 0xED && b1 >= 0xA0);
            if (!ok) return std::nullopt;
            out.push_back(((b0 & 0x0F) << 12) | ((b1 & 0x3F) << 6) | (at(i + 2) & 0x3F));
            i += 3;
        } else if (b0 >= 0xF0 && b0 <= 0xF4) {
            const uint32_t b1 = at(i + 1);
            const bool ok     = cont(b1) && cont(at(i + 2)) && cont(at(i + 3)) &&
                            !(b0 == 0xF0 && b1 < 0x90) && !(b0 == 0xF4 && b1 >= 0x90);
            if (!ok) return std::nullopt;
            out.push_back(((b0 & 0x07) << 18) | ((b1 & 0x3F) << 12) | ((at(i + 2) & 0x3F) << 6) |
                          (at(i + 3) & 0x3F));
            i += 4;
        } else {
            return std::nullopt;
        }
    }
    return out;
}

void check_icu(UErrorCode err, const char* what) {
    if (U_FAILURE(err))
        throw std::runtime_error(std::string("text_clean: ICU ") + what + " failed: " +
                                 u_errorName(err) + " (is the ICU data library installed?)");
}

std::u32string normalize(const std::u32string& s, bool nfkc) {
    UErrorCode err = U_ZERO_ERROR;
    const icu::Normalizer2* norm =
        nfkc ? icu::Normalizer2::getNFKCInstance(err) : icu::Normalizer2::getNFCInstance(err);
    check_icu(err, "normalizer");
    icu::UnicodeString result = norm->normalize(to_icu(s), err);
    check_icu(err, "normalize");
    return from_icu(result);
}

// Python's str.lower(): full case mapping with the final-sigma rule (ICU root locale).
std::u32string to_lower(const std::u32string& s) {
    bool ascii = true;
    for (char32_t c : s) ascii = ascii && c < 0x80;
    if (ascii) {
        std::u32string out = s;
        for (char32_t& c : out)
            if (c >= 'A' && c <= 'Z') c += 32;
        return out;
    }
    icu::UnicodeString u = to_icu(s);
    u.toLower(icu::Locale::getRoot());
    return from_icu(u);
}

std::u32string to_upper(const std::u32string& s) {
    icu::UnicodeString u = to_icu(s);
    u.toUpper(icu::Locale::getRoot());
    return from_icu(u);
}

bool contains(const char32_t* set, char32_t c) {
    for (; *set; ++set)
        if (*set == c) return true;
    return false;
}

bool is_ascii_letter(char32_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// Python's re `\w` on str: str.isalnum() or '_'.
bool is_word_char(char32_t c) {
    return c == '_' || is_letter(c) ||
           u_getIntPropertyValue(static_cast<UChar32>(c), UCHAR_NUMERIC_TYPE) != U_NT_NONE;
}

}  // namespace detail
}  // namespace t2i::tokenizer
