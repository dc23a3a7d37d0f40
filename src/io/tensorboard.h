// Implements: TensorBoard event files (`events.out.tfevents.*`) without protobuf or TensorFlow:
// TFRecord framing with masked CRC32C, and Event / Summary protobufs encoded by hand.
// Mirrors torch.utils.tensorboard.SummaryWriter (add_scalar, add_image / add_images, add_text)
// and tensorboard's EventFileWriter. Field numbers are those of tensorboard/compat/proto:
//   Event    { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
//   } Summary  { repeated Value value = 1; } Value    { string tag = 1; float simple_value = 2;
//   Image image = 4; TensorProto tensor = 8;
//              SummaryMetadata metadata = 9; }
//   Image    { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded_image_string
//   = 4; } SummaryMetadata { PluginData plugin_data = 1 { string plugin_name = 1; bytes content =
//   2; } } TensorProto { DataType dtype = 1; TensorShapeProto tensor_shape = 2; repeated bytes
//   string_val = 8; } TensorShapeProto { repeated Dim dim = 2 { int64 size = 1; } }, DT_STRING = 7
// Records are encoded and written on a background thread, so add_* costs a copy and a queue push.
#pragma once

#include <torch/torch.h>

#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "io/image_io.h"  // encode_png

namespace t2i::io {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), continuing from `crc` (0 to start).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

// TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8, of crc32c(data).
uint32_t masked_crc32c(const void* data, size_t n);

// One TFRecord: uint64 length (LE), masked CRC of the length bytes, data, masked CRC of the data.
std::string tfrecord_frame(const std::string& data);

// torch.utils.tensorboard's make_grid for [N, H, W, 3]: min(N, 8) columns, ceil(N / 8) rows,
// no padding, unused cells black. Returns [H * rows, W * cols, 3] uint8.
torch::Tensor make_image_grid(const torch::Tensor& images_u8_nhwc);

// Serialized Event protobufs (unframed), as EventWriter writes them.
std::string file_version_event(double wall_time);  // file_version = "brain.Event:2"
std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value);
// One Summary.Image of make_image_grid(images) for uint8 [N, H, W, 3].
std::string image_event(double wall_time, int64_t step, const std::string& tag,
                        const torch::Tensor& images_u8_nhwc);
std::string text_event(double wall_time, int64_t step, const std::string& tag,
                       const std::string& text);

class EventWriter {
  public:
    // Creates `log_dir` (with parents) and a new file in it named
    // events.out.tfevents.<unix_time, 10 digits>.<hostname>.<pid>.t2i (".<k>.t2i" if that name is
    // taken), whose first record is Event{wall_time, file_version = "brain.Event:2"}. add_* block
    // only when `max_queue` events wait to be written. Throws naming the path on failure.
    explicit EventWriter(const std::string& log_dir, size_t max_queue = 256);
    // Drains the queue and closes the file; an error not yet reported is logged (log_error).
    ~EventWriter();
    EventWriter(const EventWriter&)            = delete;
    EventWriter& operator=(const EventWriter&) = delete;

    // Errors: bad arguments throw at the call. add_* and flush() also throw (once) an error the
    // writer thread met since the last call, as std::runtime_error naming the file. After a write
    // error later events are dropped (the file's tail is no longer a whole record).

    // Summary.Value{tag, simple_value = float(value)}, as SummaryWriter.add_scalar.
    void add_scalar(const std::string& tag, double value, int64_t step);
    // One Summary.Image (PNG, colorspace 3) under `tag`: uint8 [H, W, 3], or [N, H, W, 3] laid
    // out by make_image_grid as SummaryWriter.add_images(dataformats="NHWC"). The tensor is copied.
    void add_image(const std::string& tag, const torch::Tensor& images_u8, int64_t step);
    // As SummaryWriter.add_text: tag "<tag>/text_summary", a DT_STRING tensor of shape [1] and
    // plugin "text" metadata.
    void add_text(const std::string& tag, const std::string& text, int64_t step);
    // Blocks until everything queued so far is written and flushed to the OS.
    void flush();

    const std::string& path() const { return path_; }

  private:
    struct Item {
        enum Kind { kScalar, kImage, kText, kFlush } kind = kFlush;
        double wall_time                                  = 0;
        int64_t step                                      = 0;
        std::string tag;
        double value = 0;
        torch::Tensor image;  // uint8 [N, H, W, 3], owned copy
        std::string text;
        uint64_t seq = 0;
    };

    uint64_t push(Item item);
    void throw_pending_error();
    void run();
    void write_record(const std::string& event);
    static std::string encode(const Item& item);

    std::string path_;
    std::FILE* file_ = nullptr;
    size_t max_queue_;

    std::mutex mutex_;
    std::condition_variable queue_changed_;  // worker waits for items / stop
    std::condition_variable progress_;       // producers wait for space / flush completion
    std::deque<Item> queue_;
    uint64_t next_seq_ = 1;
    uint64_t done_seq_ = 0;
    bool stop_         = false;
    bool failed_       = false;
    std::string error_;  // not yet reported
    std::thread worker_;
};

}  // namespace t2i::io
