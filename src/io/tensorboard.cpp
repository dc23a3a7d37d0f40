// Implements: io/tensorboard.h. Protobuf wire format by hand (varint keys, fields in field-number
// order and proto3 defaults omitted, as Python's serializer does), so files match what
// torch.utils.tensorboard writes byte for byte apart from wall times and PNG compression.
#include "io/tensorboard.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "io/image_io.h"
#include "util/log.h"

namespace t2i::io {
namespace {

// ---- CRC-32C ------------------------------------------------------------------------------

// Byte-at-a-time table for the reflected Castagnoli polynomial (RFC 3720 appendix B.4).
std::array<uint32_t, 256> make_crc32c_table() {
    std::array<uint32_t, 256> table{};
    for (uint32_t i = 0; i < 256; ++i) {
        uint32_t crc = i;
        for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1) ? 0x82F63B78u : 0u);
        table[i] = crc;
    }
    return table;
}

// ---- protobuf wire format -----------------------------------------------------------------

enum WireType { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
    while (v >= 0x80) {
        out.push_back(static_cast<char>((v & 0x7F) | 0x80));
        v >>= 7;
    }
    out.push_back(static_cast<char>(v));
}

void put_key(std::string& out, int field, WireType type) {
    put_varint(out, (static_cast<uint64_t>(field) << 3) | type);
}

void put_fixed(std::string& out, uint64_t bits, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
}

// int32 / int64 fields: negative values are sign-extended to 10 varint bytes, as protobuf does.
void put_int(std::string& out, int field, int64_t v) {
    put_key(out, field, kVarint);
    put_varint(out, static_cast<uint64_t>(v));
}

void put_double(std::string& out, int field, double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    put_key(out, field, kFixed64);
    put_fixed(out, bits, 8);
}

void put_float(std::string& out, int field, float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    put_key(out, field, kFixed32);
    put_fixed(out, bits, 4);
}

void put_bytes(std::string& out, int field, const std::string& bytes) {
    put_key(out, field, kLengthDelimited);
    put_varint(out, bytes.size());
    out += bytes;
}

// Event{wall_time = 1, step = 2, summary = 5{value = 1{...}}}; step 0 is the proto3 default.
std::string event_with_value(double wall_time, int64_t step, const std::string& value) {
    std::string summary, event;
    put_bytes(summary, 1, value);
    put_double(event, 1, wall_time);
    if (step != 0) put_int(event, 2, step);
    put_bytes(event, 5, summary);
    return event;
}

double unix_now() {
    using namespace std::chrono;
    return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
    char name[256] = {0};
    if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
    return name;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
    static const std::array<uint32_t, 256> table = make_crc32c_table();
    const auto* p                                = static_cast<const uint8_t*>(data);
    crc                                          = ~crc;
    for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t n) {
    const uint32_t crc = crc32c(data, n);
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string tfrecord_frame(const std::string& data) {
    std::string record, length;
    put_fixed(length, data.size(), 8);
    record.reserve(data.size() + 16);
    record += length;
    put_fixed(record, masked_crc32c(length.data(), length.size()), 4);
    record += data;
    put_fixed(record, masked_crc32c(data.data(), data.size()), 4);
    return record;
}

torch::Tensor make_image_grid(const torch::Tensor& images_u8_nhwc) {
    TORCH_CHECK(images_u8_nhwc.dim() == 4 && images_u8_nhwc.size(0) > 0,
                "make_image_grid: expected [N, H, W, C], got ", images_u8_nhwc.sizes());
    const int64_t n = images_u8_nhwc.size(0), h = images_u8_nhwc.size(1);
    const int64_t w = images_u8_nhwc.size(2), c = images_u8_nhwc.size(3);
    const int64_t cols = std::min<int64_t>(n, 8), rows = (n + cols - 1) / cols;
    auto canvas = torch::zeros({h * rows, w * cols, c}, images_u8_nhwc.options());  // [H*r, W*c, C]
    for (int64_t i = 0; i < n; ++i) {
        const int64_t y = i / cols, x = i % cols;
        canvas.slice(0, y * h, (y + 1) * h).slice(1, x * w, (x + 1) * w).copy_(images_u8_nhwc[i]);
    }
    return canvas;
}

std::string file_version_event(double wall_time) {
    std::string event;
    put_double(event, 1, wall_time);
    put_bytes(event, 3, "brain.Event:2");
    return event;
}

std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value) {
    std::string summary_value;
    put_bytes(summary_value, 1, tag);
    put_float(summary_value, 2, value);
    return event_with_value(wall_time, step, summary_value);
}

std::string image_event(double wall_time, int64_t step, const std::string& tag,
                        const torch::Tensor& images_u8_nhwc) {
    const auto grid = make_image_grid(images_u8_nhwc);  // [H, W, 3]
    std::string image, summary_value;
    put_int(image, 1, grid.size(0));
    put_int(image, 2, grid.size(1));
    put_int(image, 3, 3);  // colorspace RGB
    put_bytes(image, 4, encode_png(grid));
    put_bytes(summary_value, 1, tag);
    put_bytes(summary_value, 4, image);
    return event_with_value(wall_time, step, summary_value);
}

// torch.utils.tensorboard.summary.text: the tag gains "/text_summary"; the plugin content
// TextPluginData(version=0) serializes to nothing, so PluginData holds only the name.
std::string text_event(double wall_time, int64_t step, const std::string& tag,
                       const std::string& text) {
    std::string dim, shape, tensor, plugin_data, metadata, summary_value;
    put_int(dim, 1, 1);
    put_bytes(shape, 2, dim);
    put_int(tensor, 1, 7);  // DT_STRING
    put_bytes(tensor, 2, shape);
    put_bytes(tensor, 8, text);
    put_bytes(plugin_data, 1, "text");
    put_bytes(metadata, 1, plugin_data);
    put_bytes(summary_value, 1, tag + "/text_summary");
    put_bytes(summary_value, 8, tensor);
    put_bytes(summary_value, 9, metadata);
    return event_with_value(wall_time, step, summary_value);
}

// ---- EventWriter --------------------------------------------------------------------------

EventWriter::EventWriter(const std::string& log_dir, size_t max_queue)
    : max_queue_(std::max<size_t>(max_queue, 1)) {
    std::error_code ec;
    std::filesystem::create_directories(log_dir, ec);
    if (ec)
        throw std::runtime_error("cannot create TensorBoard log folder '" + log_dir +
                                 "': " + ec.message());
    // tensorboard's EventFileWriter: events.out.tfevents.%010d.<host>.<pid>.<uid><suffix>.
    const std::string stem =
        log_dir + "/" +
        strformat("events.out.tfevents.%010lld.%s.%d", static_cast<long long>(unix_now()),
                  host_name().c_str(), static_cast<int>(::getpid()));
    for (int k = 0; !file_; ++k) {
        path_ = k == 0 ? stem + ".t2i" : stem + "." + std::to_string(k) + ".t2i";
        file_ = std::fopen(path_.c_str(), "wbx");  // "x": fail if it exists (glibc, C11)
        if (!file_ && (errno != EEXIST || k > 1000))
            throw std::runtime_error("cannot create TensorBoard event file '" + path_ +
                                     "': " + std::strerror(errno));
    }
    const std::string record = tfrecord_frame(file_version_event(unix_now()));
    if (std::fwrite(record.data(), 1, record.size(), file_) != record.size() ||
        std::fflush(file_) != 0) {
        const std::string why = std::strerror(errno);
        std::fclose(file_);
        throw std::runtime_error("cannot write TensorBoard event file '" + path_ + "': " + why);
    }
    worker_ = std::thread([this] { run(); });
}

EventWriter::~EventWriter() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    queue_changed_.notify_all();
    worker_.join();
    if (std::fclose(file_) != 0 && !failed_)
        error_ = "cannot close TensorBoard event file '" + path_ + "': " + std::strerror(errno);
    if (!error_.empty()) log_error("%s", error_.c_str());
}

void EventWriter::throw_pending_error() {
    if (error_.empty()) return;
    std::string message;
    message.swap(error_);
    throw std::runtime_error(message);
}

uint64_t EventWriter::push(Item item) {
    std::unique_lock<std::mutex> lock(mutex_);
    throw_pending_error();
    progress_.wait(lock, [&] { return queue_.size() < max_queue_ || !error_.empty(); });
    throw_pending_error();
    const uint64_t seq = item.seq = next_seq_++;
    queue_.push_back(std::move(item));
    lock.unlock();
    queue_changed_.notify_one();
    return seq;
}

void EventWriter::add_scalar(const std::string& tag, double value, int64_t step) {
    Item item;
    item.kind      = Item::kScalar;
    item.wall_time = unix_now();
    item.step      = step;
    item.tag       = tag;
    item.value     = value;
    push(std::move(item));
}

void EventWriter::add_image(const std::string& tag, const torch::Tensor& images_u8, int64_t step) {
    TORCH_CHECK(images_u8.scalar_type() == torch::kUInt8 &&
                    (images_u8.dim() == 3 || images_u8.dim() == 4) && images_u8.size(-1) == 3 &&
                    images_u8.numel() > 0,
                "EventWriter::add_image('", tag,
                "'): expected a non-empty uint8 [H, W, 3] or [N, H, W, 3] tensor, got ",
                images_u8.scalar_type(), " ", images_u8.sizes());
    Item item;
    item.kind      = Item::kImage;
    item.wall_time = unix_now();
    item.step      = step;
    item.tag       = tag;
    // Own a copy: the caller may reuse its buffer before the writer thread encodes it.
    auto images = images_u8.dim() == 3 ? images_u8.unsqueeze(0) : images_u8;  // [N, H, W, 3]
    // One owned, contiguous CPU copy (the caller may reuse or free its tensor).
    item.image = torch::empty(images.sizes(), images.options().device(torch::kCPU)).copy_(images);
    push(std::move(item));
}

void EventWriter::add_text(const std::string& tag, const std::string& text, int64_t step) {
    Item item;
    item.kind      = Item::kText;
    item.wall_time = unix_now();
    item.step      = step;
    item.tag       = tag;
    item.text      = text;
    push(std::move(item));
}

void EventWriter::flush() {
    const uint64_t seq = push(Item());
    std::unique_lock<std::mutex> lock(mutex_);
    progress_.wait(lock, [&] { return done_seq_ >= seq; });
    throw_pending_error();
}

std::string EventWriter::encode(const Item& item) {
    switch (item.kind) {
        case Item::kScalar:
            return scalar_event(item.wall_time, item.step, item.tag,
                                static_cast<float>(item.value));
        case Item::kImage:
            return image_event(item.wall_time, item.step, item.tag, item.image);
        case Item::kText:
            return text_event(item.wall_time, item.step, item.tag, item.text);
        default:
            return {};
    }
}

void EventWriter::write_record(const std::string& event) {
    const std::string record = tfrecord_frame(event);
    if (std::fwrite(record.data(), 1, record.size(), file_) != record.size())
        throw std::runtime_error("cannot write TensorBoard event file '" + path_ +
                                 "': " + std::strerror(errno));
}

void EventWriter::run() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
        queue_changed_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) break;  // stop_ and drained
        Item item = std::move(queue_.front());
        queue_.pop_front();
        const bool idle = queue_.empty();
        const bool skip = failed_;
        lock.unlock();
        progress_.notify_all();  // room in the queue

        // An event that cannot be encoded is reported and skipped; a failed write leaves a
        // partial record, so everything after it is dropped.
        std::string error;
        bool write_failed = false;
        if (!skip) {
            std::string event;
            try {
                if (item.kind != Item::kFlush) event = encode(item);
            } catch (const std::exception& e) {
                error = "TensorBoard event '" + item.tag + "' was not written: " + e.what();
            }
            try {
                if (!event.empty()) write_record(event);
                // Flush when idle too, so a live TensorBoard sees events within a step.
                if ((item.kind == Item::kFlush || idle) && std::fflush(file_) != 0)
                    throw std::runtime_error("cannot write TensorBoard event file '" + path_ +
                                             "': " + std::strerror(errno));
            } catch (const std::exception& e) {
                error        = e.what();
                write_failed = true;
            }
        }

        lock.lock();
        if (write_failed) failed_ = true;
        if (!error.empty() && error_.empty()) error_ = error;  // the first unreported one
        done_seq_ = item.seq;
        progress_.notify_all();
    }
}

}  // namespace t2i::io
