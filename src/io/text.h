// Implements: text files as UTF-8, the encoding every parser in t2i expects. Python reads
// captions and metadata as UTF-8 and fails on anything else; t2i converts what is unambiguous
// (a UTF-16 file with its byte-order mark, as Windows editors and Excel write it) and names the
// file and byte offset for the rest, instead of training on mojibake.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace t2i::io {

// Whether `s` is valid UTF-8 (no overlong forms, surrogates or code points above U+10FFFF);
// `bad_offset` receives the offset of the first invalid byte.
bool is_valid_utf8(std::string_view s, size_t* bad_offset = nullptr);

// The text of a file's bytes as UTF-8: a UTF-8 byte-order mark is dropped, UTF-16 LE / BE with a
// byte-order mark is converted. Anything else must be valid UTF-8 without NUL bytes (UTF-16
// without a mark shows up as NUL bytes); otherwise throws naming `name` and the offset.
std::string decode_text(std::string_view bytes, const std::string& name);

// read_text_file + decode_text.
std::string read_utf8_file(const std::string& path, uint64_t max_bytes);

}  // namespace t2i::io
