// Tests io/tensorboard.h against the TFRecord / CRC32C specifications and the tensorboard protos:
// CRC known vectors (RFC 3720 B.4), exact bytes of scalar and text events, and a full round trip
// through tests/tensorboard_reader.h, which verifies both CRCs of every record.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>

#include "io/file_util.h"
#include "io/image_io.h"
#include "io/tensorboard.h"
#include "tensorboard_reader.h"
#include "test_util.h"

namespace t2i::io {
namespace {

using Kind = TensorBoardValue::Kind;

std::vector<std::string> event_files(const std::string& dir) {
    std::vector<std::string> files;
    for (const auto& entry : std::filesystem::directory_iterator(dir))
        files.push_back(entry.path().string());
    std::sort(files.begin(), files.end());
    return files;
}

torch::Tensor random_u8(std::vector<int64_t> shape, int seed) {
    torch::manual_seed(seed);
    return torch::randint(0, 256, shape, torch::kUInt8);
}

std::string bytes_of(std::initializer_list<int> values) {
    std::string s;
    for (int v : values) s.push_back(static_cast<char>(v));
    return s;
}

double now() {
    using namespace std::chrono;
    return duration<double>(system_clock::now().time_since_epoch()).count();
}

TEST(TensorBoard, Crc32cKnownVectors) {
    EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);  // the CRC catalogue's check value
    EXPECT_EQ(crc32c("", 0), 0u);
    // RFC 3720 appendix B.4.
    std::string zeros(32, '\0'), ones(32, '\xff'), ramp;
    for (int i = 0; i < 32; ++i) ramp.push_back(static_cast<char>(i));
    EXPECT_EQ(crc32c(zeros.data(), 32), 0x8A9136AAu);
    EXPECT_EQ(crc32c(ones.data(), 32), 0x62A8AB43u);
    EXPECT_EQ(crc32c(ramp.data(), 32), 0x46DD794Eu);
    // Continuing from a previous CRC equals one pass.
    EXPECT_EQ(crc32c("6789", 4, crc32c("12345", 5)), 0xE3069283u);
}

TEST(TensorBoard, MaskedCrcAndFrame) {
    // ((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xa282ead8 mod 2^32, worked out separately.
    EXPECT_EQ(masked_crc32c("123456789", 9), 0xC78AB0E5u);
    const std::string frame = tfrecord_frame("abc");
    ASSERT_EQ(frame.size(), 8u + 4 + 3 + 4);
    EXPECT_EQ(frame.substr(0, 8), bytes_of({3, 0, 0, 0, 0, 0, 0, 0}));
    uint32_t length_crc, data_crc;
    std::memcpy(&length_crc, frame.data() + 8, 4);
    std::memcpy(&data_crc, frame.data() + 15, 4);
    EXPECT_EQ(length_crc, masked_crc32c(frame.data(), 8));
    EXPECT_EQ(frame.substr(12, 3), "abc");
    EXPECT_EQ(data_crc, masked_crc32c("abc", 3));
}

// Files that TensorFlow's protobuf and CRC code wrote, quoted in other projects' tests:
// tensorboard_logger's tests/test_tensorboard_logger.py::test_serialization (wall_time 256.5) and
// TensorFlow's event_file_loader_test.py (a "brain.Event:1" record).
TEST(TensorBoard, MatchesRecordsWrittenByTensorFlow) {
    const std::string expected = std::string(
        "\x18\x00\x00\x00\x00\x00\x00\x00\xa3\x7fK\"\t\x00\x00\x00\x00\x00\x08p@\x1a\rbrain."
        "Event:2\xbc\x98!+"
        "\x19\x00\x00\x00\x00\x00\x00\x00\x8b\xf1\x08(\t\x00\x00\x00\x00\x00\x08p@\x10\x01*"
        "\x0c\n\n\n\x03v/1\x15\x00\x00\xc0?,\xec\xc0\x87"
        "\x1a\x00\x00\x00\x00\x00\x00\x00\x12\x9b\xd8-\t\x00\x00\x00\x00\x00\x08p@\x10\x02*"
        "\r\n\x0b\n\x04v/22\x15\x00\x00\x80"
        "A\x8f\xa3\xb6\x88",
        3 * 16 + 0x18 + 0x19 + 0x1a);
    const std::string ours = tfrecord_frame(file_version_event(256.5)) +
                             tfrecord_frame(scalar_event(256.5, 1, "v/1", 1.5f)) +
                             tfrecord_frame(scalar_event(256.5, 2, "v/22", 16.0f));
    EXPECT_EQ(ours, expected);

    const std::string tf_record = std::string(
        "\x18\x00\x00\x00\x00\x00\x00\x00\xa3\x7fK\"\t\x00\x00\xc0%\xddu\xd5"
        "A\x1a\rbrain.Event:1"
        "\xec\xf3"
        "2\x8d",
        16 + 0x18);
    EXPECT_EQ(tfrecord_frame(tf_record.substr(12, 0x18)), tf_record);
}

TEST(TensorBoard, FileNameAndFirstEvent) {
    testing::TempDir tmp;
    const std::string dir = tmp.file("logs/nested");  // created with parents
    const double before   = now();
    std::string first, second;
    {
        EventWriter a(dir);
        EventWriter b(dir);  // same second, same process: must not share a file
        first  = a.path();
        second = b.path();
    }
    EXPECT_NE(first, second);
    char host[256] = {0};
    ::gethostname(host, sizeof host - 1);
    const std::regex pattern("events\\.out\\.tfevents\\.[0-9]{10}\\." + std::string(host) + "\\." +
                             std::to_string(::getpid()) + "\\.t2i");
    EXPECT_TRUE(std::regex_match(std::filesystem::path(first).filename().string(), pattern))
        << first;
    EXPECT_EQ(std::filesystem::path(first).parent_path().string(), dir);
    EXPECT_EQ(event_files(dir).size(), 2u);

    const auto values = read_tensorboard_events(first);
    ASSERT_EQ(values.size(), 1u);
    EXPECT_EQ(values[0].kind, Kind::kFileVersion);
    EXPECT_EQ(values[0].bytes, "brain.Event:2");
    EXPECT_EQ(values[0].step, 0);
    EXPECT_NEAR(values[0].wall_time, before, 60.0);
}

TEST(TensorBoard, ScalarAndTextEventBytes) {
    testing::TempDir tmp;
    std::string path;
    {
        EventWriter writer(tmp.path());
        path = writer.path();
        writer.add_scalar("a", 1.5, 7);
        writer.add_text("t", "hi", 300);
    }
    const auto records = read_tfrecords(path);
    ASSERT_EQ(records.size(), 3u);
    // Event{wall_time: 09 <double>, step: 10 07, summary: 2a {value: 0a {tag: 0a 01 'a',
    // simple_value: 15 <float 1.5 = 0x3fc00000 LE>}}}
    const std::string& scalar = records[1];
    ASSERT_EQ(scalar.size(), 9u + 14);
    EXPECT_EQ(scalar[0], '\x09');
    EXPECT_EQ(scalar.substr(9), bytes_of({0x10, 0x07, 0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, 'a', 0x15,
                                          0x00, 0x00, 0xc0, 0x3f}));
    // step 300 = varint ac 02; value {tag "t/text_summary", tensor: 42 {dtype: 08 07,
    // tensor_shape: 12 04 {dim: 12 02 {size: 08 01}}, string_val: 42 02 "hi"},
    // metadata: 4a 08 {plugin_data: 0a 06 {plugin_name: 0a 04 "text"}}}
    std::string value = bytes_of({0x0a, 14}) + "t/text_summary" +
                        bytes_of({0x42, 12,   0x08, 0x07, 0x12, 0x04, 0x12, 0x02, 0x08, 0x01,
                                  0x42, 0x02, 'h',  'i',  0x4a, 0x08, 0x0a, 0x06, 0x0a, 0x04}) +
                        "text";
    const std::string summary = bytes_of({0x0a, static_cast<int>(value.size())}) + value;
    const std::string tail =
        bytes_of({0x10, 0xac, 0x02, 0x2a, static_cast<int>(summary.size())}) + summary;
    EXPECT_EQ(records[2].substr(9), tail);
}

TEST(TensorBoard, RoundTripScalarsImagesText) {
    testing::TempDir tmp;
    const auto single        = random_u8({5, 7, 3}, 1);      // [H, W, 3]
    const auto batch         = random_u8({10, 4, 6, 3}, 2);  // [N, H, W, 3]: a 2 x 8 grid
    const std::string config = "{\n  \"learning_rate\": 1e-05,\n  \"caption\": \"caf\xc3\xa9\"\n}";
    const double before      = now();
    std::string path;
    {
        EventWriter writer(tmp.path());
        path = writer.path();
        for (int step = 1; step <= 5; ++step) {
            writer.add_scalar("train_loss", 0.1 * step, step);
            writer.add_scalar("lr", 1e-5, step);
        }
        writer.add_image("validation", single, 1);
        auto reused = batch.clone();
        writer.add_image("validation", reused, 2);
        reused.zero_();  // the writer must have taken its own copy
        writer.add_text("config", config, 0);
        writer.add_scalar("train_loss", -3.25, -1);  // negative step: 10-byte varint
        writer.flush();
        // flush() made everything visible while the writer is still open.
        EXPECT_EQ(read_tfrecords(path).size(), 1u + 10 + 2 + 1 + 1);
    }
    const auto values = read_tensorboard_events(path);
    ASSERT_EQ(values.size(), 15u);
    EXPECT_EQ(values[0].kind, Kind::kFileVersion);
    for (int i = 0; i < 5; ++i) {
        const auto& loss = values[1 + 2 * i];
        const auto& lr   = values[2 + 2 * i];
        EXPECT_EQ(loss.kind, Kind::kScalar);
        EXPECT_EQ(loss.tag, "train_loss");
        EXPECT_EQ(loss.step, i + 1);
        EXPECT_EQ(loss.scalar, static_cast<float>(0.1 * (i + 1)));
        EXPECT_EQ(lr.tag, "lr");
        EXPECT_EQ(lr.scalar, 1e-5f);
        EXPECT_GE(loss.wall_time, before - 1);
        EXPECT_LE(loss.wall_time, now() + 1);
    }

    const auto& image = values[11];
    EXPECT_EQ(image.kind, Kind::kImage);
    EXPECT_EQ(image.tag, "validation");
    EXPECT_EQ(image.step, 1);
    EXPECT_EQ(image.height, 5);
    EXPECT_EQ(image.width, 7);
    EXPECT_EQ(image.colorspace, 3);
    EXPECT_TRUE(torch::equal(decode_image_bytes(image.bytes, "event image"), single));

    const auto& grid = values[12];
    EXPECT_EQ(grid.kind, Kind::kImage);
    EXPECT_EQ(grid.step, 2);
    EXPECT_EQ(grid.height, 8);
    EXPECT_EQ(grid.width, 48);
    const auto decoded = decode_image_bytes(grid.bytes, "event grid");  // [8, 48, 3]
    ASSERT_EQ(decoded.sizes(), torch::IntArrayRef({8, 48, 3}));
    for (int64_t i = 0; i < 10; ++i) {
        const int64_t y = i / 8, x = i % 8;
        EXPECT_TRUE(
            torch::equal(decoded.slice(0, y * 4, y * 4 + 4).slice(1, x * 6, x * 6 + 6), batch[i]))
            << "grid cell " << i;
    }
    EXPECT_EQ(decoded.slice(0, 4, 8).slice(1, 12, 48).count_nonzero().item<int64_t>(), 0);

    const auto& text = values[13];
    EXPECT_EQ(text.kind, Kind::kText);
    EXPECT_EQ(text.tag, "config/text_summary");
    EXPECT_EQ(text.plugin_name, "text");
    EXPECT_EQ(text.bytes, config);
    EXPECT_EQ(text.step, 0);

    EXPECT_EQ(values[14].step, -1);
    EXPECT_EQ(values[14].scalar, -3.25f);
}

TEST(TensorBoard, ImageGridLayout) {
    const auto three = random_u8({3, 2, 2, 3}, 3);
    const auto grid  = make_image_grid(three);  // one row of three
    ASSERT_EQ(grid.sizes(), torch::IntArrayRef({2, 6, 3}));
    EXPECT_TRUE(torch::equal(grid.slice(1, 4, 6), three[2]));
    EXPECT_EQ(make_image_grid(random_u8({9, 2, 2, 3}, 4)).sizes(), torch::IntArrayRef({4, 16, 3}));
    EXPECT_TRUE(torch::equal(make_image_grid(three.slice(0, 0, 1)), three[0]));
}

TEST(TensorBoard, ReaderRejectsCorruption) {
    testing::TempDir tmp;
    std::string path;
    {
        EventWriter writer(tmp.path());
        path = writer.path();
        writer.add_scalar("train_loss", 0.5, 1);
    }
    const std::string good = read_text_file(path);
    ASSERT_NO_THROW(read_tfrecords(path));
    uint64_t first_length = 0;
    std::memcpy(&first_length, good.data(), 8);
    const size_t second = 12 + first_length + 4;  // start of the scalar record
    auto expect_error   = [&](std::string bytes, const std::string& what) {
        const std::string bad = tmp.file("bad.tfevents");
        std::ofstream(bad, std::ios::binary) << bytes;
        try {
            read_tfrecords(bad);
            ADD_FAILURE() << "no error for: " << what;
        } catch (const std::runtime_error& e) {
            EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
        }
    };
    std::string flipped = good;
    flipped[good.size() - 6] ^= 0x01;  // inside the last record's data
    expect_error(flipped, "data CRC mismatch");
    flipped = good;
    flipped[second + 9] ^= 0x10;  // the last record's length-CRC bytes
    expect_error(flipped, "length CRC mismatch");
    flipped = good;
    flipped[good.size() - 1] ^= 0x80;  // the data CRC itself
    expect_error(flipped, "data CRC mismatch");
    expect_error(good.substr(0, good.size() - 3), "truncated");
    expect_error(good.substr(0, good.size() - 20), "truncated");
}

TEST(TensorBoard, BadArgumentsThrowAtTheCall) {
    testing::TempDir tmp;
    const std::string file = tmp.file("plain");
    std::ofstream(file) << "x";
    EXPECT_THROW(EventWriter(file + "/logs"), std::runtime_error);  // a file is in the way
    EventWriter writer(tmp.file("logs"));
    EXPECT_THROW(writer.add_image("v", torch::zeros({4, 4, 3}), 1), c10::Error);     // float
    EXPECT_THROW(writer.add_image("v", random_u8({4, 4, 4}, 5), 1), c10::Error);     // RGBA
    EXPECT_THROW(writer.add_image("v", random_u8({0, 4, 4, 3}, 5), 1), c10::Error);  // empty
    writer.flush();
    EXPECT_EQ(read_tfrecords(writer.path()).size(), 1u);
}

// A write error on the writer thread (here: the file-size limit) comes back from the next call,
// once; later events are dropped because the file's tail is no longer a whole record.
TEST(TensorBoard, WriterThreadErrorIsReported) {
    testing::TempDir tmp;
    EventWriter writer(tmp.path());
    rlimit old{};
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
    auto* old_handler = ::signal(SIGXFSZ, SIG_IGN);
    rlimit small      = old;
    small.rlim_cur    = 256 * 1024;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
    writer.add_image("validation", random_u8({512, 512, 3}, 6), 1);  // ~770 KB of noise as PNG
    std::string error;
    try {
        writer.flush();
    } catch (const std::runtime_error& e) {
        error = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &old);
    ::signal(SIGXFSZ, old_handler);
    EXPECT_NE(error.find("cannot write TensorBoard event file"), std::string::npos) << error;
    EXPECT_NO_THROW(writer.add_scalar("train_loss", 1.0, 2));
    EXPECT_NO_THROW(writer.flush());
}

}  // namespace
}  // namespace t2i::io
