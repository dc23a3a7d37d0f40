// Implements: ftfy.h: ftfy 6.1.1 `fix_text` -- the per-line driver ("auto" HTML unescaping,
// fixers repeated to a fixed point), unescape_html (Python's html.unescape on
// chardata.HTML_ENTITIES) and the character-level fixers of fixes.py. fix_encoding lives in
// ftfy_encoding.cpp.
#include "tokenizer/ftfy.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>

#include "tokenizer/unicode.h"

namespace t2i::tokenizer {

using detail::fix_c1_controls;
using detail::fix_encoding;
using detail::is_ascii_letter;
using detail::kCp1252High;
using detail::normalize;
using detail::to_upper;

namespace {

// ---------------------------------------------------------------------------------------------
// unescape_html (fixes.unescape_html, chardata.HTML_ENTITIES, Python's html.unescape)

struct Entity {
    const char* name;
    char32_t cp;
};

// The HTML 4 entities (html.entities.name2codepoint) plus &apos;, with HTML5's values.
constexpr Entity kEntities[] = {
    {"AElig", 0xC6},     {"Aacute", 0xC1},   {"Acirc", 0xC2},     {"Agrave", 0xC0},
    {"Alpha", 0x391},    {"Aring", 0xC5},    {"Atilde", 0xC3},    {"Auml", 0xC4},
    {"Beta", 0x392},     {"Ccedil", 0xC7},   {"Chi", 0x3A7},      {"Dagger", 0x2021},
    {"Delta", 0x394},    {"ETH", 0xD0},      {"Eacute", 0xC9},    {"Ecirc", 0xCA},
    {"Egrave", 0xC8},    {"Epsilon", 0x395}, {"Eta", 0x397},      {"Euml", 0xCB},
    {"Gamma", 0x393},    {"Iacute", 0xCD},   {"Icirc", 0xCE},     {"Igrave", 0xCC},
    {"Iota", 0x399},     {"Iuml", 0xCF},     {"Kappa", 0x39A},    {"Lambda", 0x39B},
    {"Mu", 0x39C},       {"Ntilde", 0xD1},   {"Nu", 0x39D},       {"OElig", 0x152},
    {"Oacute", 0xD3},    {"Ocirc", 0xD4},    {"Ograve", 0xD2},    {"Omega", 0x3A9},
    {"Omicron", 0x39F},  {"Oslash", 0xD8},   {"Otilde", 0xD5},    {"Ouml", 0xD6},
    {"Phi", 0x3A6},      {"Pi", 0x3A0},      {"Prime", 0x2033},   {"Psi", 0x3A8},
    {"Rho", 0x3A1},      {"Scaron", 0x160},  {"Sigma", 0x3A3},    {"THORN", 0xDE},
    {"Tau", 0x3A4},      {"Theta", 0x398},   {"Uacute", 0xDA},    {"Ucirc", 0xDB},
    {"Ugrave", 0xD9},    {"Upsilon", 0x3A5}, {"Uuml", 0xDC},      {"Xi", 0x39E},
    {"Yacute", 0xDD},    {"Yuml", 0x178},    {"Zeta", 0x396},     {"aacute", 0xE1},
    {"acirc", 0xE2},     {"acute", 0xB4},    {"aelig", 0xE6},     {"agrave", 0xE0},
    {"alefsym", 0x2135}, {"alpha", 0x3B1},   {"amp", 0x26},       {"and", 0x2227},
    {"ang", 0x2220},     {"apos", 0x27},     {"aring", 0xE5},     {"asymp", 0x2248},
    {"atilde", 0xE3},    {"auml", 0xE4},     {"bdquo", 0x201E},   {"beta", 0x3B2},
    {"brvbar", 0xA6},    {"bull", 0x2022},   {"cap", 0x2229},     {"ccedil", 0xE7},
    {"cedil", 0xB8},     {"cent", 0xA2},     {"chi", 0x3C7},      {"circ", 0x2C6},
    {"clubs", 0x2663},   {"cong", 0x2245},   {"copy", 0xA9},      {"crarr", 0x21B5},
    {"cup", 0x222A},     {"curren", 0xA4},   {"dArr", 0x21D3},    {"dagger", 0x2020},
    {"darr", 0x2193},    {"deg", 0xB0},      {"delta", 0x3B4},    {"diams", 0x2666},
    {"divide", 0xF7},    {"eacute", 0xE9},   {"ecirc", 0xEA},     {"egrave", 0xE8},
    {"empty", 0x2205},   {"emsp", 0x2003},   {"ensp", 0x2002},    {"epsilon", 0x3B5},
    {"equiv", 0x2261},   {"eta", 0x3B7},     {"eth", 0xF0},       {"euml", 0xEB},
    {"euro", 0x20AC},    {"exist", 0x2203},  {"fnof", 0x192},     {"forall", 0x2200},
    {"frac12", 0xBD},    {"frac14", 0xBC},   {"frac34", 0xBE},    {"frasl", 0x2044},
    {"gamma", 0x3B3},    {"ge", 0x2265},     {"gt", 0x3E},        {"hArr", 0x21D4},
    {"harr", 0x2194},    {"hearts", 0x2665}, {"hellip", 0x2026},  {"iacute", 0xED},
    {"icirc", 0xEE},     {"iexcl", 0xA1},    {"igrave", 0xEC},    {"image", 0x2111},
    {"infin", 0x221E},   {"int", 0x222B},    {"iota", 0x3B9},     {"iquest", 0xBF},
    {"isin", 0x2208},    {"iuml", 0xEF},     {"kappa", 0x3BA},    {"lArr", 0x21D0},
    {"lambda", 0x3BB},   {"lang", 0x27E8},   {"laquo", 0xAB},     {"larr", 0x2190},
    {"lceil", 0x2308},   {"ldquo", 0x201C},  {"le", 0x2264},      {"lfloor", 0x230A},
    {"lowast", 0x2217},  {"loz", 0x25CA},    {"lrm", 0x200E},     {"lsaquo", 0x2039},
    {"lsquo", 0x2018},   {"lt", 0x3C},       {"macr", 0xAF},      {"mdash", 0x2014},
    {"micro", 0xB5},     {"middot", 0xB7},   {"minus", 0x2212},   {"mu", 0x3BC},
    {"nabla", 0x2207},   {"nbsp", 0xA0},     {"ndash", 0x2013},   {"ne", 0x2260},
    {"ni", 0x220B},      {"not", 0xAC},      {"notin", 0x2209},   {"nsub", 0x2284},
    {"ntilde", 0xF1},    {"nu", 0x3BD},      {"oacute", 0xF3},    {"ocirc", 0xF4},
    {"oelig", 0x153},    {"ograve", 0xF2},   {"oline", 0x203E},   {"omega", 0x3C9},
    {"omicron", 0x3BF},  {"oplus", 0x2295},  {"or", 0x2228},      {"ordf", 0xAA},
    {"ordm", 0xBA},      {"oslash", 0xF8},   {"otilde", 0xF5},    {"otimes", 0x2297},
    {"ouml", 0xF6},      {"para", 0xB6},     {"part", 0x2202},    {"permil", 0x2030},
    {"perp", 0x22A5},    {"phi", 0x3C6},     {"pi", 0x3C0},       {"piv", 0x3D6},
    {"plusmn", 0xB1},    {"pound", 0xA3},    {"prime", 0x2032},   {"prod", 0x220F},
    {"prop", 0x221D},    {"psi", 0x3C8},     {"quot", 0x22},      {"rArr", 0x21D2},
    {"radic", 0x221A},   {"rang", 0x27E9},   {"raquo", 0xBB},     {"rarr", 0x2192},
    {"rceil", 0x2309},   {"rdquo", 0x201D},  {"real", 0x211C},    {"reg", 0xAE},
    {"rfloor", 0x230B},  {"rho", 0x3C1},     {"rlm", 0x200F},     {"rsaquo", 0x203A},
    {"rsquo", 0x2019},   {"sbquo", 0x201A},  {"scaron", 0x161},   {"sdot", 0x22C5},
    {"sect", 0xA7},      {"shy", 0xAD},      {"sigma", 0x3C3},    {"sigmaf", 0x3C2},
    {"sim", 0x223C},     {"spades", 0x2660}, {"sub", 0x2282},     {"sube", 0x2286},
    {"sum", 0x2211},     {"sup", 0x2283},    {"sup1", 0xB9},      {"sup2", 0xB2},
    {"sup3", 0xB3},      {"supe", 0x2287},   {"szlig", 0xDF},     {"tau", 0x3C4},
    {"there4", 0x2234},  {"theta", 0x3B8},   {"thetasym", 0x3D1}, {"thinsp", 0x2009},
    {"thorn", 0xFE},     {"tilde", 0x2DC},   {"times", 0xD7},     {"trade", 0x2122},
    {"uArr", 0x21D1},    {"uacute", 0xFA},   {"uarr", 0x2191},    {"ucirc", 0xFB},
    {"ugrave", 0xF9},    {"uml", 0xA8},      {"upsih", 0x3D2},    {"upsilon", 0x3C5},
    {"uuml", 0xFC},      {"weierp", 0x2118}, {"xi", 0x3BE},       {"yacute", 0xFD},
    {"yen", 0xA5},       {"yuml", 0xFF},     {"zeta", 0x3B6},     {"zwj", 0x200D},
    {"zwnj", 0x200C}};

const std::unordered_map<std::u32string, std::u32string>& html_entities() {
    static const auto table = [] {
        std::unordered_map<std::u32string, std::u32string> t;
        for (const Entity& e : kEntities)
            t[utf8_to_u32(std::string("&") + e.name + ";")] = std::u32string(1, e.cp);
        // ftfy also decodes all-caps spellings of lower-case names (&EACUTE; -> É).
        for (const Entity& e : kEntities) {
            std::string name = e.name, upper = name;
            for (char& ch : upper) ch = static_cast<char>(std::toupper(ch));
            bool lower = true;
            for (char ch : name) lower = lower && !(ch >= 'A' && ch <= 'Z');
            const std::u32string key = utf8_to_u32("&" + upper + ";");
            if (lower && !t.count(key)) t[key] = to_upper(std::u32string(1, e.cp));
        }
        return t;
    }();
    return table;
}

// html.unescape of "&#...;" (the digits between "&#" and ";"); nullopt when it does not parse.
std::optional<std::u32string> unescape_numeric(const std::u32string& body) {
    const bool hex    = !body.empty() && (body[0] == 'x' || body[0] == 'X');
    const size_t from = hex ? 1 : 0;
    if (body.size() <= from) return std::nullopt;
    uint64_t num = 0;
    for (size_t k = from; k < body.size(); ++k) {
        const char32_t c = body[k];
        int d            = -1;
        if (c >= '0' && c <= '9') d = static_cast<int>(c - '0');
        if (hex && c >= 'a' && c <= 'f') d = static_cast<int>(c - 'a' + 10);
        if (hex && c >= 'A' && c <= 'F') d = static_cast<int>(c - 'A' + 10);
        if (d < 0) return std::nullopt;
        num = std::min<uint64_t>(num * (hex ? 16 : 10) + d, 0x7FFFFFFF);
    }
    if (num == 0) return std::u32string(1, 0xFFFD);
    if (num == 0x0D) return std::u32string(1, U'\r');
    if (num >= 0x80 && num <= 0x9F)
        return std::u32string(1, kCp1252High[num - 0x80] ? kCp1252High[num - 0x80] : num);
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return std::u32string(1, 0xFFFD);
    if ((num >= 0x1 && num <= 0x8) || num == 0xB || (num >= 0xE && num <= 0x1F) || num == 0x7F ||
        (num >= 0xFDD0 && num <= 0xFDEF) || (num & 0xFFFE) == 0xFFFE)
        return std::u32string();
    return std::u32string(1, static_cast<char32_t>(num));
}

// HTML_ENTITY_RE = "&#?[0-9A-Za-z]{1,24};"
std::u32string unescape_html(const std::u32string& t) {
    std::u32string out;
    auto alnum = [](char32_t c) { return c < 0x80 && std::isalnum(static_cast<int>(c)); };
    for (size_t i = 0; i < t.size();) {
        if (t[i] == '&') {
            const size_t start = i + 1 + (i + 1 < t.size() && t[i + 1] == '#' ? 1 : 0);
            size_t end         = start;
            while (end < t.size() && alnum(t[end])) ++end;
            if (end > start && end - start <= 24 && end < t.size() && t[end] == ';') {
                const std::u32string entity = t.substr(i, end + 1 - i);
                const auto& table           = html_entities();
                if (auto it = table.find(entity); it != table.end()) {
                    out += it->second;
                } else if (start == i + 2) {
                    auto num = unescape_numeric(t.substr(start, end - start));
                    out += num ? *num : entity;
                } else {
                    out += entity;
                }
                i = end + 1;
                continue;
            }
        }
        out.push_back(t[i++]);
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// The character-level fixers (fixes.py)

std::u32string fix_latin_ligatures(const std::u32string& t) {
    static const std::unordered_map<char32_t, std::u32string> kLigatures = {
        {U'Ĳ', U"IJ"},  {U'ĳ', U"ij"},  {U'ŉ', U"ʼn"}, {U'Ǳ', U"DZ"}, {U'ǲ', U"Dz"}, {U'ǳ', U"dz"},
        {U'Ǆ', U"DŽ"},  {U'ǅ', U"Dž"},  {U'ǆ', U"dž"}, {U'Ǉ', U"LJ"}, {U'ǈ', U"Lj"}, {U'ǉ', U"lj"},
        {U'Ǌ', U"NJ"},  {U'ǋ', U"Nj"},  {U'ǌ', U"nj"}, {U'ﬀ', U"ff"}, {U'ﬁ', U"fi"}, {U'ﬂ', U"fl"},
        {U'ﬃ', U"ffi"}, {U'ﬄ', U"ffl"}, {U'ﬅ', U"ſt"}, {U'ﬆ', U"st"}};
    std::u32string out;
    for (char32_t c : t) {
        auto it = kLigatures.find(c);
        if (it == kLigatures.end()) {
            out.push_back(c);
        } else {
            out += it->second;
        }
    }
    return out;
}

// chardata.WIDTH_MAP: U+3000 -> space; U+FF01..U+FFEF -> their NFKC form.
std::u32string fix_character_width(const std::u32string& t) {
    std::u32string out;
    for (char32_t c : t) {
        if (c == 0x3000) {
            out.push_back(' ');
        } else if (c >= 0xFF01 && c < 0xFFF0) {
            out += normalize(std::u32string(1, c), /*nfkc=*/true);
        } else {
            out.push_back(c);
        }
    }
    return out;
}

std::u32string uncurl_quotes(const std::u32string& t) {
    std::u32string out = t;
    for (char32_t& c : out) {
        if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) c = '\'';
        if (c >= 0x201C && c <= 0x201F) c = '"';
    }
    return out;
}

std::u32string fix_line_breaks(const std::u32string& t) {
    std::u32string out;
    for (size_t i = 0; i < t.size(); ++i) {
        const char32_t c = t[i];
        if (c == '\r' && i + 1 < t.size() && t[i + 1] == '\n') continue;  // CRLF -> LF
        out.push_back((c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) ? U'\n' : c);
    }
    return out;
}

// ANSI_RE = "\033\[((?:\d|;)*)([a-zA-Z])"
std::u32string remove_terminal_escapes(const std::u32string& t) {
    std::u32string out;
    for (size_t i = 0; i < t.size();) {
        if (t[i] == 0x1B && i + 1 < t.size() && t[i + 1] == '[') {
            size_t j = i + 2;
            while (j < t.size() && (t[j] == ';' || u_charType(static_cast<UChar32>(t[j])) ==
                                                       U_DECIMAL_DIGIT_NUMBER))
                ++j;
            if (j < t.size() && is_ascii_letter(t[j])) {
                i = j + 1;
                continue;
            }
        }
        out.push_back(t[i++]);
    }
    return out;
}

// chardata.CONTROL_CHARS
std::u32string remove_control_chars(const std::u32string& t) {
    std::u32string out;
    for (char32_t c : t) {
        const bool drop = c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
                          (c >= 0x206A && c <= 0x206F) || c == 0xFEFF ||
                          (c >= 0xFFF9 && c <= 0xFFFC);
        if (!drop) out.push_back(c);
    }
    return out;
}

// fix_and_explain with explain=False: the fixers in ftfy's order until a fixed point.
std::u32string fix_segment(std::u32string text, bool unescape) {
    while (true) {
        const std::u32string orig = text;
        if (unescape) text = unescape_html(text);
        text = fix_encoding(text);
        text = fix_c1_controls(text);
        text = fix_latin_ligatures(text);
        text = fix_character_width(text);
        text = uncurl_quotes(text);
        text = fix_line_breaks(text);
        // fix_surrogates: code points decoded from UTF-8 never contain surrogates.
        text = remove_terminal_escapes(text);
        text = remove_control_chars(text);
        text = normalize(text, /*nfkc=*/false);
        if (text == orig) return text;
    }
}

}  // namespace

std::u32string ftfy_fix_text_u32(const std::u32string& text) {
    std::u32string out;
    bool unescape = true;  // unescape_html="auto"
    for (size_t pos = 0; pos < text.size();) {
        const size_t nl              = text.find(U'\n', pos);
        const size_t end             = nl == std::u32string::npos ? text.size() : nl + 1;
        const std::u32string segment = text.substr(pos, end - pos);
        // "auto": a literal '<' means real HTML; entities stay from this line on.
        if (segment.find(U'<') != std::u32string::npos) unescape = false;
        out += fix_segment(segment, unescape);
        pos = end;
    }
    return out;
}

std::string ftfy_fix_text(const std::string& text) {
    return u32_to_utf8(ftfy_fix_text_u32(utf8_to_u32(text)));
}

}  // namespace t2i::tokenizer
