// Implements: a reader for TensorBoard event files, enough to check what io/tensorboard.h wrote:
// every record's two masked CRC32Cs are verified, and Events are decoded to scalars, images and
// text. Mirrors tensorboard's event_file_loader (which also checks the CRCs) on a small scale.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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

// The payloads of every TFRecord in `path`. Throws std::runtime_error naming the path, the byte
// offset and which CRC failed, or a truncated record.
std::vector<std::string> read_tfrecords(const std::string& path);

// Decodes every record as an Event. Throws on CRC errors or malformed protobuf.
std::vector<TensorBoardValue> read_tensorboard_events(const std::string& path);

}  // namespace t2i::io
