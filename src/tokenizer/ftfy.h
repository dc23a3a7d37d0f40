// Implements: an emulation of ftfy 6.1.1 `fix_text` with the default TextFixerConfig
// (ftfy/__init__.py, fixes.py, chardata.py, badness.py), as transformers' CLIPTokenizer runs it
// when ftfy is installed. Per line: unescape_html ("auto": off from the first line that contains
// '<'), fix_encoding (the mojibake badness heuristic, re-encoding through the nine single-byte
// charmaps ftfy tries, restore_byte_a0, replace_lossy_sequences, utf-8-variants, inconsistent
// UTF-8, Latin-1 -> Windows-1252, C1 controls), fix_c1_controls, fix_latin_ligatures,
// fix_character_width, uncurl_quotes, fix_line_breaks, remove_terminal_escapes,
// remove_control_chars, NFC; repeated until nothing changes.
// Known gaps: HTML entities are the 253 HTML 4 names (+ ftfy's upper-case variants), not all
// 2,231 HTML5 names; lone CESU-8 surrogates are not decoded; lines are not cut at ftfy's
// max_decode_length (10^6 code points).
// ftfy.cpp holds the per-line driver, HTML unescaping and the character-level fixers;
// ftfy_encoding.cpp holds fix_encoding (mojibake detection and repair).
#pragma once

#include <string>

namespace t2i::tokenizer {

// ftfy.fix_text(text) with ftfy 6.1.1's default TextFixerConfig (UTF-8 in, UTF-8 out).
std::string ftfy_fix_text(const std::string& text);
// The same on code points.
std::u32string ftfy_fix_text_u32(const std::u32string& text);

// Shared by ftfy.cpp and ftfy_encoding.cpp; not public API.
namespace detail {

// Windows-1252 bytes 0x80..0x9F; 0 where the byte is unassigned.
inline constexpr char32_t kCp1252High[32] = {
    0x20AC, 0,      0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0,      0x017D, 0,      0,      0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0,      0x017E, 0x0178};

// fixes.fix_encoding: undo mojibake until the text stops changing.
std::u32string fix_encoding(std::u32string text);
// fixes.fix_c1_controls: C1 control characters -> their Windows-1252 meaning.
std::u32string fix_c1_controls(const std::u32string& text);

}  // namespace detail
}  // namespace t2i::tokenizer
