// Implements: a reader for TensorBoard event files, enough to check what io/tensorboard.h wrote:
// every record's two masked CRC32Cs are verified, and Events are decoded to scalars, images and
// text. Mirrors tensorboard's event_file_loader (which also checks the CRCs) on a small scale.
// Test support only (header-only; not part of the library).
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "io/file_util.h"
#include "io/tensorboard.h"
#include "util/log.h"

namespace t2i::io {

// One Summary.Value (or the file_version event), with its Event's wall_time and step.
struct TensorBoardValue {
    enum class Kind { kFileVersion, kScalar, kImage, kText, kOther };
    Kind kind        = Kind::kOther;
    double wall_time = 0;
    int64_t step     = 0;
    std::string tag;
    float scalar = 0;    // kScalar: simple_value
    std::string bytes;   // kFileVersion: the version; kImage: encoded image; kText: string_val[0]
    int64_t height = 0;  // kImage: Summary.Image height, width, colorspace
    int64_t width = 0, colorspace = 0;
    std::string plugin_name;  // metadata.plugin_data.plugin_name, if present
};

namespace tensorboard_reader_detail {

inline uint64_t get_le(const char* p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= uint64_t(static_cast<uint8_t>(p[i])) << (8 * i);
    return v;
}

// One field of a message: for varint / fixed fields `number` holds the raw bits, for
// length-delimited ones `bytes` holds the payload.
struct Field {
    int id          = 0;
    int wire_type   = 0;
    uint64_t number = 0;
    std::string bytes;
};

[[noreturn]] inline void malformed(const std::string& what) {
    throw std::runtime_error("malformed TensorBoard protobuf: " + what);
}

inline uint64_t get_varint(const std::string& s, size_t* pos) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*pos >= s.size()) malformed("truncated varint");
        const uint8_t b = static_cast<uint8_t>(s[(*pos)++]);
        v |= uint64_t(b & 0x7F) << shift;
        if (!(b & 0x80)) return v;
    }
    malformed("varint longer than 10 bytes");
}

inline void for_each_field(const std::string& msg, const std::function<void(const Field&)>& visit) {
    size_t pos = 0;
    while (pos < msg.size()) {
        Field f;
        const uint64_t key = get_varint(msg, &pos);
        f.id               = static_cast<int>(key >> 3);
        f.wire_type        = static_cast<int>(key & 7);
        if (f.wire_type == 0) {
            f.number = get_varint(msg, &pos);
        } else if (f.wire_type == 1 || f.wire_type == 5) {
            const size_t n = f.wire_type == 1 ? 8 : 4;
            if (msg.size() - pos < n) malformed("truncated fixed field");
            f.number = get_le(msg.data() + pos, static_cast<int>(n));
            pos += n;
        } else if (f.wire_type == 2) {
            const uint64_t n = get_varint(msg, &pos);
            if (msg.size() - pos < n) malformed("truncated length-delimited field");
            f.bytes = msg.substr(pos, n);
            pos += n;
        } else {
            malformed(strformat("unsupported wire type %d (field %d)", f.wire_type, f.id));
        }
        visit(f);
    }
}

inline double as_double(uint64_t bits) {
    double d;
    std::memcpy(&d, &bits, 8);
    return d;
}

inline float as_float(uint64_t bits) {
    const uint32_t b = static_cast<uint32_t>(bits);
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}

// Summary.Value{tag = 1, simple_value = 2, image = 4, tensor = 8, metadata = 9}.
inline TensorBoardValue decode_value(const std::string& msg) {
    TensorBoardValue v;
    int64_t dtype = 0;
    for_each_field(msg, [&](const Field& f) {
        if (f.id == 1 && f.wire_type == 2) {
            v.tag = f.bytes;
        } else if (f.id == 2 && f.wire_type == 5) {
            v.kind   = TensorBoardValue::Kind::kScalar;
            v.scalar = as_float(f.number);
        } else if (f.id == 4 && f.wire_type == 2) {  // Summary.Image
            v.kind = TensorBoardValue::Kind::kImage;
            for_each_field(f.bytes, [&](const Field& g) {
                if (g.id == 1) v.height = static_cast<int64_t>(g.number);
                if (g.id == 2) v.width = static_cast<int64_t>(g.number);
                if (g.id == 3) v.colorspace = static_cast<int64_t>(g.number);
                if (g.id == 4 && g.wire_type == 2) v.bytes = g.bytes;
            });
        } else if (f.id == 8 && f.wire_type == 2) {  // TensorProto{dtype = 1, string_val = 8}
            for_each_field(f.bytes, [&](const Field& g) {
                if (g.id == 1 && g.wire_type == 0) dtype = static_cast<int64_t>(g.number);
                if (g.id == 8 && g.wire_type == 2) v.bytes = g.bytes;
            });
        } else if (f.id == 9 && f.wire_type == 2) {  // SummaryMetadata{plugin_data = 1{name = 1}}
            for_each_field(f.bytes, [&](const Field& g) {
                if (g.id != 1 || g.wire_type != 2) return;
                for_each_field(g.bytes, [&](const Field& h) {
                    if (h.id == 1 && h.wire_type == 2) v.plugin_name = h.bytes;
                });
            });
        }
    });
    if (dtype == 7 && v.plugin_name == "text") v.kind = TensorBoardValue::Kind::kText;
    return v;
}

}  // namespace tensorboard_reader_detail

// The payloads of every TFRecord in `path`. Throws std::runtime_error naming the path, the byte
// offset and which CRC failed, or a truncated record.
inline std::vector<std::string> read_tfrecords(const std::string& path) {
    const std::string data = read_text_file(path);
    std::vector<std::string> records;
    size_t pos = 0;
    while (pos < data.size()) {
        if (data.size() - pos < 12)
            throw std::runtime_error(
                strformat("%s: truncated record header at byte %zu", path.c_str(), pos));
        const uint64_t length = tensorboard_reader_detail::get_le(data.data() + pos, 8);
        if (tensorboard_reader_detail::get_le(data.data() + pos + 8, 4) !=
            masked_crc32c(data.data() + pos, 8))
            throw std::runtime_error(
                strformat("%s: length CRC mismatch in the record at byte %zu", path.c_str(), pos));
        if (data.size() - pos - 12 < length || data.size() - pos - 12 - length < 4)
            throw std::runtime_error(
                strformat("%s: truncated record at byte %zu", path.c_str(), pos));
        const char* payload = data.data() + pos + 12;
        if (tensorboard_reader_detail::get_le(payload + length, 4) !=
            masked_crc32c(payload, length))
            throw std::runtime_error(
                strformat("%s: data CRC mismatch in the record at byte %zu", path.c_str(), pos));
        records.emplace_back(payload, length);
        pos += 12 + length + 4;
    }
    return records;
}

// Decodes every record as an Event. Throws on CRC errors or malformed protobuf.
inline std::vector<TensorBoardValue> read_tensorboard_events(const std::string& path) {
    std::vector<TensorBoardValue> values;
    for (const std::string& record : read_tfrecords(path)) {
        double wall_time = 0;
        int64_t step     = 0;
        std::vector<TensorBoardValue> event_values;
        // Event{wall_time = 1, step = 2, file_version = 3, summary = 5{repeated value = 1}}.
        tensorboard_reader_detail::for_each_field(
            record, [&](const tensorboard_reader_detail::Field& f) {
                if (f.id == 1 && f.wire_type == 1)
                    wall_time = tensorboard_reader_detail::as_double(f.number);
                if (f.id == 2 && f.wire_type == 0) step = static_cast<int64_t>(f.number);
                if (f.id == 3 && f.wire_type == 2) {
                    TensorBoardValue v;
                    v.kind  = TensorBoardValue::Kind::kFileVersion;
                    v.bytes = f.bytes;
                    event_values.push_back(v);
                }
                if (f.id == 5 && f.wire_type == 2)
                    tensorboard_reader_detail::for_each_field(
                        f.bytes, [&](const tensorboard_reader_detail::Field& g) {
                            if (g.id == 1 && g.wire_type == 2)
                                event_values.push_back(
                                    tensorboard_reader_detail::decode_value(g.bytes));
                        });
            });
        for (auto& v : event_values) {
            v.wall_time = wall_time;
            v.step      = step;
            values.push_back(std::move(v));
        }
    }
    return values;
}

}  // namespace t2i::io
