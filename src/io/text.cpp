// Implements: io/text.h (UTF-8 per RFC 3629, UTF-16 per RFC 2781).
#include "io/text.h"

#include <cstdint>
#include <cstdio>
#include <stdexcept>

#include "io/file_util.h"

namespace t2i::io {

namespace {

void append_utf8(uint32_t cp, std::string* out) {
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

std::string utf16_to_utf8(std::string_view bytes, bool big_endian, const std::string& name) {
    if (bytes.size() % 2 != 0)
        throw std::runtime_error("'" + name + "': UTF-16 text with an odd number of bytes (" +
                                 std::to_string(bytes.size()) + "); the file is truncated");
    auto unit = [&](size_t i) -> uint32_t {
        const auto a = static_cast<uint8_t>(bytes[i]), b = static_cast<uint8_t>(bytes[i + 1]);
        return big_endian ? (a << 8 | b) : (b << 8 | a);
    };
    std::string out;
    out.reserve(bytes.size());
    for (size_t i = 0; i < bytes.size(); i += 2) {
        uint32_t cp = unit(i);
        if (cp >= 0xD800 && cp < 0xDC00 && i + 3 < bytes.size()) {
            const uint32_t low = unit(i + 2);
            if (low >= 0xDC00 && low < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                i += 2;
            }
        }
        if ((cp >= 0xD800 && cp < 0xE000) || cp == 0)
            throw std::runtime_error("'" + name + "': invalid UTF-16 at byte " + std::to_string(i) +
                                     " (an unpaired surrogate or NUL)");
        append_utf8(cp, &out);
    }
    return out;
}

}  // namespace

bool is_valid_utf8(std::string_view s, size_t* bad_offset) {
    const auto* p  = reinterpret_cast<const uint8_t*>(s.data());
    const size_t n = s.size();
    for (size_t i = 0; i < n;) {
        const uint8_t c = p[i];
        size_t len      = 0;
        uint32_t cp = 0, min = 0;
        if (c < 0x80) {
            ++i;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        }
        bool ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; ++k) {
            ok = (p[i + k] & 0xC0) == 0x80;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        ok = ok && cp >= min && cp <= 0x10FFFF && !(cp >= 0xD800 && cp < 0xE000);
        if (!ok) {
            if (bad_offset) *bad_offset = i;
            return false;
        }
        i += len;
    }
    return true;
}

std::string decode_text(std::string_view bytes, const std::string& name) {
    if (bytes.size() >= 2 && bytes[0] == '\xFF' && bytes[1] == '\xFE')
        return utf16_to_utf8(bytes.substr(2), false, name);
    if (bytes.size() >= 2 && bytes[0] == '\xFE' && bytes[1] == '\xFF')
        return utf16_to_utf8(bytes.substr(2), true, name);
    if (bytes.substr(0, 3) == "\xEF\xBB\xBF") bytes.remove_prefix(3);
    if (const auto nul = bytes.find('\0'); nul != std::string_view::npos)
        throw std::runtime_error("'" + name + "' holds a NUL byte at offset " +
                                 std::to_string(nul) +
                                 ": it is not UTF-8 text (UTF-16 without a byte-order mark, or a "
                                 "binary file?); save it as UTF-8");
    size_t bad = 0;
    if (!is_valid_utf8(bytes, &bad))
        throw std::runtime_error("'" + name + "' is not valid UTF-8 (invalid byte 0x" +
                                 [&] {
                                     char hex[3];
                                     std::snprintf(hex, sizeof hex, "%02X",
                                                   static_cast<uint8_t>(bytes[bad]));
                                     return std::string(hex);
                                 }() +
                                 " at offset " + std::to_string(bad) +
                                 "); save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)");
    return std::string(bytes);
}

std::string read_utf8_file(const std::string& path, uint64_t max_bytes) {
    return decode_text(read_text_file(path, max_bytes), path);
}

}  // namespace t2i::io
