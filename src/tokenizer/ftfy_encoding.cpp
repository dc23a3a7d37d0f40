// Implements: ftfy 6.1.1's fix_encoding (declared in ftfy.h as detail::fix_encoding and
// detail::fix_c1_controls): the mojibake badness heuristic (badness.py), the nine single-byte
// charmaps ftfy re-encodes through (chardata.CHARMAP_ENCODINGS, bad_codecs/sloppy.py), the byte
// repairs restore_byte_a0 and replace_lossy_sequences, utf-8-variants, decode_inconsistent_utf8,
// and the Latin-1 -> Windows-1252 and C1-control fallbacks (ftfy/__init__.py).
#include <unicode/ucnv.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/ftfy.h"
#include "tokenizer/unicode.h"

namespace t2i::tokenizer {

using detail::check_icu;
using detail::contains;
using detail::decode_utf8;
using detail::fix_c1_controls;
using detail::fix_encoding;
using detail::is_ascii_letter;
using detail::is_word_char;
using detail::kCp1252High;

// ---------------------------------------------------------------------------------------------
// ftfy badness heuristic (badness.py: MOJIBAKE_CATEGORIES and BADNESS_RE)

namespace {

enum : uint16_t {
    kCommon      = 1 << 0,
    kC1          = 1 << 1,
    kBad         = 1 << 2,
    kCurrency    = 1 << 3,
    kStartPunct  = 1 << 4,
    kEndPunct    = 1 << 5,
    kNumeric     = 1 << 6,
    kKaomoji     = 1 << 7,
    kUpperAcc    = 1 << 8,
    kLowerAcc    = 1 << 9,
    kUpperCommon = 1 << 10,
    kLowerCommon = 1 << 11,
    kBox         = 1 << 12,
};

const std::unordered_map<char32_t, uint16_t>& mojibake_categories() {
    static const auto table = [] {
        std::unordered_map<char32_t, uint16_t> t;
        auto add = [&](const char32_t* chars, uint16_t bit) {
            for (; *chars; ++chars) t[*chars] |= bit;
        };
        auto add_range = [&](char32_t lo, char32_t hi, uint16_t bit) {
            for (char32_t c = lo; c <= hi; ++c) t[c] |= bit;
        };
        add(U"\u00a0\u00ad\u00b7\u00b4\u2013\u2014\u2015\u2026\u2019", kCommon);
        add_range(0x80, 0x9F, kC1);
        add(U"¦¤¨¬¯¶§¸ƒˆˇ˘˛˜†‡‰⌐◊\ufffdªº", kBad);
        add(U"¢£¥₧€", kCurrency);
        add(U"¡«¿©΄΅‘‚“„•‹\uf8ff", kStartPunct);
        add(U"®»˝”›™", kEndPunct);
        add(U"²³¹±¼½¾×µ÷⁄∂∆∏∑√∞∩∫≈≠≡≤≥№", kNumeric);
        add_range(U'Ò', U'Ö', kKaomoji);
        add_range(U'Ù', U'Ü', kKaomoji);
        add_range(U'ò', U'ö', kKaomoji);
        add_range(U'ø', U'ü', kKaomoji);
        add(U"Ő°", kKaomoji);
        add_range(0xC0, 0xD1, kUpperAcc);
        add(U"ØÜÝĂĄĆČĎĐĘĚĞİĹĽŁŃŇŒŘŚŞŠŢŤŮŰŸŹŻŽҐ", kUpperAcc);
        add_range(0xE0, 0xF1, kLowerAcc);
        add(U"ßăąćčďđęěğĺľłœŕśşšťüźżžґﬁﬂ", kLowerAcc);
        add_range(U'Α', U'Ω', kUpperCommon);
        add_range(U'Ё', U'Я', kUpperCommon);
        add(U"ÞΆΈΉΊΌΎΏΪΫ", kUpperCommon);
        add_range(U'α', U'ω', kLowerCommon);
        add_range(U'а', U'џ', kLowerCommon);
        add(U"άέήίΰ", kLowerCommon);
        add(U"│┌┐┘├┤┬┼▀▄█▌▐░▒▓", kBox);
        add_range(U'═', U'╬', kBox);
        return t;
    }();
    return table;
}

// True when text[i] exists and belongs to one of `bits`.
struct Cats {
    const std::u32string& t;
    uint16_t at(size_t i) const {
        if (i >= t.size()) return 0;
        const auto& table = mojibake_categories();
        auto it           = table.find(t[i]);
        return it == table.end() ? 0 : it->second;
    }
    bool is(size_t i, uint16_t bits) const { return (at(i) & bits) != 0; }
    bool in(size_t i, const char32_t* set) const { return i < t.size() && contains(set, t[i]); }
    bool ch(size_t i, char32_t c) const { return i < t.size() && t[i] == c; }
};

// One position of BADNESS_RE; the alternatives in the order of badness.py.
bool badness_at(const Cats& c, size_t i) {
    const std::u32string& t = c.t;
    const uint16_t accs     = kLowerAcc | kUpperAcc;
    const uint16_t marks    = kBox | kStartPunct | kEndPunct | kCurrency | kNumeric;
    auto lower_az           = [&](size_t k) { return k < t.size() && t[k] >= 'a' && t[k] <= 'z'; };
    auto space              = [&](size_t k) { return k < t.size() && is_python_space(t[k]); };
    if (c.is(i, kC1)) return true;
    if (c.is(i, kBad | accs | marks) && c.is(i + 1, kBad)) return true;
    if (i < t.size() && is_ascii_letter(t[i]) && c.is(i + 1, kLowerCommon | kUpperCommon) &&
        c.is(i + 2, kBad))
        return true;
    if (c.is(i, kBad) && c.is(i + 1, accs | marks)) return true;
    if (c.is(i, kLowerAcc | kLowerCommon | kBox | kEndPunct | kCurrency | kNumeric) &&
        c.is(i + 1, kUpperAcc))
        return true;
    if (c.is(i, kBox | kEndPunct | kCurrency | kNumeric) && c.is(i + 1, kLowerAcc)) return true;
    if (c.is(i, kLowerAcc | kBox | kEndPunct) && c.is(i + 1, kCurrency)) return true;
    if (space(i) && c.is(i + 1, kUpperAcc) && c.is(i + 2, kCurrency)) return true;
    if (c.is(i, kUpperAcc | kBox) && c.is(i + 1, kNumeric)) return true;
    if (c.is(i, accs | kBox | kCurrency | kEndPunct) && c.is(i + 1, kStartPunct) &&
        c.is(i + 2, kNumeric))
        return true;
    if (c.is(i, accs | kCurrency | kNumeric | kBox) && c.is(i + 1, kEndPunct) &&
        c.is(i + 2, kStartPunct))
        return true;
    if (c.is(i, kCurrency | kNumeric | kBox) && c.is(i + 1, kStartPunct)) return true;
    if (lower_az(i) && c.is(i + 1, kUpperAcc) && c.is(i + 2, kStartPunct | kCurrency)) return true;
    if (c.is(i, kBox) && c.is(i + 1, kKaomoji)) return true;
    if (c.is(i, accs | kCurrency | kNumeric | kStartPunct | kEndPunct) && c.is(i + 1, kBox))
        return true;
    if (c.is(i, kBox) && c.is(i + 1, kEndPunct)) return true;
    if (c.is(i, accs) && c.is(i + 1, kEndPunct) && i + 2 < t.size() && is_word_char(t[i + 2]))
        return true;
    if (c.in(i, U"Œœ") && i + 1 < t.size() && !is_ascii_letter(t[i + 1])) return true;
    if (c.in(i, U"ÂÃÎÐ") &&
        (c.in(i + 1, U"€Šš¢£Ÿž\u00a0\u00ad®©°·»–—´") || c.is(i + 1, kStartPunct | kEndPunct)))
        return true;
    if (c.ch(i, U'×') && c.in(i + 1, U"²³")) return true;
    auto oslash = [&](size_t k) {
        return c.is(k, kCommon | kCurrency | kBad | kNumeric | kStartPunct) || c.in(k, U"ŸŠ®°µ»");
    };
    if (c.in(i, U"ØÙ") && oslash(i + 1) && c.in(i + 2, U"ØÙ") && oslash(i + 3)) return true;
    if (c.ch(i, U'à') && c.in(i + 1, U"²µ¹¼½¾")) return true;
    if (c.ch(i, U'√') && c.in(i + 1, U"±∂†≠®™´≤≥¥µø")) return true;
    if (c.ch(i, U'≈') && c.in(i + 1, U"°¢")) return true;
    if (c.ch(i, U'‚') && c.ch(i + 1, U'Ä') && c.in(i + 2, U"ìîïòôúùû†°¢π")) return true;
    if (c.ch(i, U'‚') && c.in(i + 1, U"âó") && c.in(i + 2, U"àä°ê")) return true;
    if (c.ch(i, U'в') && c.ch(i + 1, U'Ђ')) return true;
    const uint16_t cyr_mid = kC1 | kBad | kStartPunct | kEndPunct | kCurrency;
    if (c.in(i, U"ВГРС") && (c.is(i + 1, cyr_mid) || c.in(i + 1, U"°µ")) && c.in(i + 2, U"ВГРС"))
        return true;
    if (t.compare(i, 5, U"ГўВЂВ") == 0 && i + 6 < t.size() && t[i + 5] != '\n' &&
        (is_ascii_letter(t[i + 6]) || t[i + 6] == ' '))
        return true;
    if (c.ch(i, U'Ã') && c.in(i + 1, U"\u00a0¡")) return true;
    if (lower_az(i) && ((space(i + 1) && c.in(i + 2, U"ÃÂ") && c.ch(i + 3, ' ')) ||
                        (c.in(i + 1, U"ÃÂ") && c.ch(i + 2, ' '))))
        return true;
    if (i == 0 && c.in(0, U"ÃÂ") && c.ch(1, ' ')) return true;
    if ((lower_az(i) || c.in(i, U".,?!") || c.is(i, kEndPunct)) && c.ch(i + 1, U'Â') &&
        (c.ch(i + 2, ' ') || c.is(i + 2, kStartPunct | kEndPunct)))
        return true;
    if (c.ch(i, U'β') && c.ch(i + 1, U'€') && c.in(i + 2, U"™\u00a0Ά\u00ad®°")) return true;
    if (c.in(i, U"ΒΓΞΟ") && (c.is(i + 1, cyr_mid) || c.ch(i + 1, U'°')) && c.in(i + 2, U"ΒΓΞΟ"))
        return true;
    return false;
}

bool is_bad(const std::u32string& text) {
    const Cats c{text};
    for (size_t i = 0; i < text.size(); ++i)
        if (badness_at(c, i)) return true;
    return false;
}

// ---------------------------------------------------------------------------------------------
// Single-byte charmaps (chardata.CHARMAP_ENCODINGS, bad_codecs/sloppy.py)

struct CharMap {
    const char* name;
    bool sloppy;  // ftfy's sloppy-*: byte 0x1A <-> U+FFFD
    std::array<char32_t, 256> decode{};
    std::unordered_map<char32_t, uint8_t> encode;  // bytes 0x80..0xFF and 0x1A

    // chardata.possible_encoding: every character is ASCII other than U+1A, or one of the
    // characters bytes 0x80..0xFF (and 0x1A) decode to.
    bool possible(const std::u32string& text) const {
        for (char32_t c : text)
            if (!((c < 0x80 && c != 0x1A) || encode.count(c))) return false;
        return true;
    }
    std::string encode_text(const std::u32string& text) const {
        std::string out;
        for (char32_t c : text)
            out.push_back(static_cast<char>((c < 0x80 && c != 0x1A) ? c : encode.at(c)));
        return out;
    }
};

CharMap make_charmap(const char* name, const char* icu_name, bool sloppy) {
    CharMap map;
    map.name   = name;
    map.sloppy = sloppy;
    for (int b = 0; b < 256; ++b) map.decode[b] = static_cast<char32_t>(b);
    if (icu_name) {
        UErrorCode err  = U_ZERO_ERROR;
        UConverter* cnv = ucnv_open(icu_name, &err);
        check_icu(err, icu_name);
        ucnv_setToUCallBack(cnv, UCNV_TO_U_CALLBACK_STOP, nullptr, nullptr, nullptr, &err);
        for (int b = 0x80; b < 0x100; ++b) {
            UChar buf[4];
            const char in = static_cast<char>(b);
            err           = U_ZERO_ERROR;
            ucnv_reset(cnv);
            const int32_t len = ucnv_toUChars(cnv, buf, 4, &in, 1, &err);
            // Unassigned bytes keep their Latin-1 meaning (the "sloppy" rule).
            if (U_SUCCESS(err) && len == 1) map.decode[b] = buf[0];
        }
        ucnv_close(cnv);
    }
    // Python's cp437 decodes 0xE6 as MICRO SIGN; ICU's ibm-437 says GREEK SMALL LETTER MU.
    if (std::string(name) == "cp437") map.decode[0xE6] = 0xB5;
    if (sloppy) map.decode[0x1A] = 0xFFFD;
    for (int b = 0x80; b < 0x100; ++b) map.encode[map.decode[b]] = static_cast<uint8_t>(b);
    map.encode[map.decode[0x1A]] = 0x1A;
    return map;
}

const std::vector<CharMap>& charmaps() {
    static const std::vector<CharMap> maps = {
        make_charmap("latin-1", nullptr, false),
        make_charmap("sloppy-windows-1252", "windows-1252", true),
        make_charmap("sloppy-windows-1251", "windows-1251", true),
        make_charmap("sloppy-windows-1250", "windows-1250", true),
        make_charmap("sloppy-windows-1253", "windows-1253", true),
        make_charmap("sloppy-windows-1254", "windows-1254", true),
        make_charmap("iso-8859-2", "iso-8859-2", false),
        make_charmap("macroman", "macintosh", false),
        make_charmap("cp437", "ibm-437", false),
    };
    return maps;
}

// ---------------------------------------------------------------------------------------------
// Byte-level transcoders used inside fix_encoding (fixes.restore_byte_a0,
// fixes.replace_lossy_sequences; chardata.ALTERED_UTF8_RE, LOSSY_UTF8_RE)

struct Bytes {
    const std::string& s;
    uint32_t at(size_t k) const { return k < s.size() ? static_cast<uint8_t>(s[k]) : 0x100; }
    bool range(size_t k, uint32_t lo, uint32_t hi) const { return at(k) >= lo && at(k) <= hi; }
};

// Length of the ALTERED_UTF8_RE match at i, or 0.
size_t altered_utf8_at(const Bytes& b, size_t i) {
    auto cont_no_a0 = [&](size_t k) {
        const uint32_t v = b.at(k);
        return (v >= 0x80 && v <= 0x84) || (v >= 0x86 && v <= 0x9F) || (v >= 0xA1 && v <= 0xBF);
    };
    const uint32_t v = b.at(i);
    if ((v == 0xC2 || v == 0xC3 || v == 0xC5 || v == 0xCE || v == 0xD0 || v == 0xD9) &&
        b.at(i + 1) == ' ')
        return 2;
    if ((v == 0xE2 || v == 0xE3) && b.at(i + 1) == ' ' && cont_no_a0(i + 2)) return 3;
    if (v >= 0xE0 && v <= 0xE3 && cont_no_a0(i + 1) && b.at(i + 2) == ' ') return 3;
    if (v == 0xF0) {
        const bool c1 = b.range(i + 1, 0x80, 0xBF), c2 = b.range(i + 2, 0x80, 0xBF),
                   c3 = b.range(i + 3, 0x80, 0xBF);
        if ((b.at(i + 1) == ' ' && c2 && c3) || (c1 && b.at(i + 2) == ' ' && c3) ||
            (c1 && c2 && b.at(i + 3) == ' '))
            return 4;
    }
    return 0;
}

bool altered_utf8_search(const std::string& s) {
    const Bytes b{s};
    for (size_t i = 0; i < s.size(); ++i)
        if (altered_utf8_at(b, i)) return true;
    return false;
}

std::string restore_byte_a0(const std::string& in) {
    // A_GRAVE_WORD_RE: "\xc3 " not followed by " ", "quele", "quela", "quilo" or "s ".
    std::string s;
    for (size_t i = 0; i < in.size(); ++i) {
        if (static_cast<uint8_t>(in[i]) == 0xC3 && i + 1 < in.size() && in[i + 1] == ' ') {
            const std::string rest = in.substr(i + 2, 5);
            const bool keep        = rest.rfind(" ", 0) == 0 || rest.rfind("quele", 0) == 0 ||
                              rest.rfind("quela", 0) == 0 || rest.rfind("quilo", 0) == 0 ||
                              rest.rfind("s ", 0) == 0;
            if (!keep) {
                s += "\xc3\xa0 ";
                ++i;
                continue;
            }
        }
        s.push_back(in[i]);
    }
    std::string out;
    const Bytes b{s};
    for (size_t i = 0; i < s.size();) {
        if (const size_t len = altered_utf8_at(b, i)) {
            for (size_t k = i; k < i + len; ++k) out.push_back(s[k] == ' ' ? '\xa0' : s[k]);
            i += len;
        } else {
            out.push_back(s[i++]);
        }
    }
    return out;
}

// Length of the LOSSY_UTF8_RE match at i, or 0.
size_t lossy_utf8_at(const Bytes& b, size_t i) {
    auto lost        = [&](size_t k) { return b.at(k) == 0x1A || b.at(k) == '?'; };  // [\x1a?]
    auto sub         = [&](size_t k) { return b.at(k) == 0x1A || b.range(k, 0x80, 0xBF); };
    auto any         = [&](size_t k) { return lost(k) || b.range(k, 0x80, 0xBF); };
    const uint32_t v = b.at(i);
    if (v >= 0xC2 && v <= 0xDF && b.at(i + 1) == 0x1A) return 2;
    if ((v == 0xC2 || v == 0xC3) && b.at(i + 1) == '?') return 2;
    if (v == 0xED && b.range(i + 1, 0xA0, 0xAF) && b.at(i + 3) == 0xED &&
        b.range(i + 4, 0xB0, 0xBF)) {
        if (lost(i + 2) && any(i + 5)) return 6;
        if (any(i + 2) && lost(i + 5)) return 6;
    }
    if (v >= 0xE0 && v <= 0xEF && ((lost(i + 1) && sub(i + 2)) || (sub(i + 1) && lost(i + 2))))
        return 3;
    if (v >= 0xF0 && v <= 0xF4 &&
        ((lost(i + 1) && sub(i + 2) && sub(i + 3)) || (sub(i + 1) && lost(i + 2) && sub(i + 3)) ||
         (sub(i + 1) && sub(i + 2) && lost(i + 3))))
        return 4;
    if (v == 0x1A) return 1;
    return 0;
}

std::string replace_lossy_sequences(const std::string& s) {
    std::string out;
    const Bytes b{s};
    for (size_t i = 0; i < s.size();) {
        if (const size_t len = lossy_utf8_at(b, i)) {
            out += "\xef\xbf\xbd";
            i += len;
        } else {
            out.push_back(s[i++]);
        }
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// fix_encoding (ftfy/__init__.py: fix_encoding_and_explain, _fix_encoding_one_step_and_explain)

// chardata.UTF8_CLUES
constexpr const char32_t* kFirstOf2 =
    U"ÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖ×ØÙÚÛÜÝÞßĂĆČĎĐĘĚĞİĹŃŇŐŘŞŢŮŰ"
    U"ΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩΪΫάέήίВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ";
constexpr const char32_t* kFirstOf3 = U"àáâãäåæçèéêëìíîïăćčďęěĺŕΰαβγδεζηθικλμνξοабвгдежзийклмноп";
constexpr const char32_t* kFirstOf4 = U"ðóđğπσру";
constexpr const char32_t* kContinuationExtra =
    U"ĄąĽľŁłŒœŚśŞşŠšŤťŸŹźŻżŽžƒˆˇ˘˛˜˝΄΅ΆΈΉΊΌΎΏЁЂЃЄЅІЇЈЉЊЋЌЎЏёђѓєѕіїјљњћќўџҐґ†‡•‰‹›€№™";
constexpr const char32_t* kContinuationLoose = U"–—―‘’‚“”„… ";

bool utf8_continuation_strict(char32_t c) {
    return (c >= 0x80 && c <= 0xBF) || contains(kContinuationExtra, c);
}
bool utf8_continuation(char32_t c) {
    return utf8_continuation_strict(c) || contains(kContinuationLoose, c);
}

// End of the UTF8_DETECTOR_RE match starting at i (== i when there is none).
size_t utf8_detector_end(const std::u32string& t, size_t i) {
    if (i > 0 && utf8_continuation_strict(t[i - 1])) return i;  // the negative lookbehind
    auto conts = [&](size_t from, size_t count) {
        for (size_t k = from; k < from + count; ++k)
            if (k >= t.size() || !utf8_continuation(t[k])) return false;
        return true;
    };
    size_t pos = i;
    while (pos < t.size()) {
        if (contains(kFirstOf2, t[pos]) && conts(pos + 1, 1)) {
            pos += 2;
        } else if (contains(kFirstOf3, t[pos]) && conts(pos + 1, 2)) {
            pos += 3;
        } else if (contains(kFirstOf4, t[pos]) && conts(pos + 1, 3)) {
            pos += 4;
        } else {
            break;
        }
    }
    return pos;
}

// fixes.decode_inconsistent_utf8: fix each detected run that looks bad on its own.
std::u32string decode_inconsistent_utf8(const std::u32string& t, bool* found) {
    std::u32string out;
    *found = false;
    for (size_t i = 0; i < t.size();) {
        const size_t end = utf8_detector_end(t, i);
        if (end == i) {
            out.push_back(t[i++]);
            continue;
        }
        *found                    = true;
        const std::u32string part = t.substr(i, end - i);
        out += (part.size() < t.size() && is_bad(part)) ? fix_encoding(part) : part;
        i = end;
    }
    return out;
}

std::u32string fix_encoding_one_step(const std::u32string& text) {
    bool ascii = true;
    for (char32_t c : text) ascii = ascii && c < 0x80;
    if (text.empty() || ascii || !is_bad(text)) return text;

    // Text that was UTF-8, decoded with a single-byte encoding: re-encode and decode as UTF-8.
    bool latin1_possible = false;
    for (const CharMap& map : charmaps()) {
        if (!map.possible(text)) continue;
        if (std::string(map.name) == "latin-1") latin1_possible = true;
        std::string bytes = map.encode_text(text);
        if (altered_utf8_search(bytes)) bytes = restore_byte_a0(bytes);
        if (map.sloppy) bytes = replace_lossy_sequences(bytes);
        const bool variants =
            bytes.find('\xed') != std::string::npos || bytes.find('\xc0') != std::string::npos;
        if (auto fixed = decode_utf8(bytes, variants)) return *fixed;
    }
    // Mojibake embedded in otherwise fine text.
    bool found                 = false;
    const std::u32string fixed = decode_inconsistent_utf8(text, &found);
    if (found && fixed != text) return fixed;
    // Latin-1 text with C1 controls meant as Windows-1252 (a strict decode: fails on the five
    // bytes Windows-1252 leaves unassigned).
    if (latin1_possible) {
        std::u32string cp1252 = text;
        bool ok               = true;
        for (char32_t& c : cp1252) {
            if (c >= 0x80 && c <= 0x9F) {
                ok = ok && kCp1252High[c - 0x80] != 0;
                c  = kCp1252High[c - 0x80];
            }
        }
        if (ok && cp1252 != text) return cp1252;
    }
    for (char32_t c : text)
        if (c >= 0x80 && c <= 0x9F) return fix_c1_controls(text);
    return text;
}

}  // namespace

std::u32string detail::fix_c1_controls(const std::u32string& text) {
    std::u32string out = text;
    for (char32_t& c : out)
        if (c >= 0x80 && c <= 0x9F && kCp1252High[c - 0x80]) c = kCp1252High[c - 0x80];
    return out;
}

std::u32string detail::fix_encoding(std::u32string text) {
    while (true) {
        std::u32string fixed = fix_encoding_one_step(text);
        if (fixed == text) return text;
        text = std::move(fixed);
    }
}

}  // namespace t2i::tokenizer
