// Tests: io/safetensors: round trip of every dtype, the byte layout of written files (parsed here
// independently of the reader), the fixture files against their manifest, and one crafted
// malformed file per validation rule, each error naming the file (and the tensor).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "test_util.h"

namespace t2i {
namespace {

namespace fs = std::filesystem;
using testing::fixture;
using testing::TempDir;
using testing::write_bytes;

std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// 8-byte little-endian length, then the header, then `data_size` zero bytes. `length` overrides
// the stored header length (to craft lying files).
std::string craft(const std::string& header, size_t data_size, int64_t length = -1) {
    const uint64_t n = length < 0 ? header.size() : static_cast<uint64_t>(length);
    std::string out;
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
    return out + header + std::string(data_size, '\0');
}

uint64_t read_u64_le(const std::string& bytes) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
    return n;
}

// Opening `path` throws std::runtime_error whose message contains the path and every needle.
::testing::AssertionResult open_fails(const std::string& path,
                                      const std::vector<std::string>& needles) {
    try {
        io::SafetensorsFile file(path);
    } catch (const std::runtime_error& e) {
        const std::string msg = e.what();
        if (msg.find(path) == std::string::npos)
            return ::testing::AssertionFailure() << "message does not name the file: " << msg;
        for (const auto& needle : needles)
            if (msg.find(needle) == std::string::npos)
                return ::testing::AssertionFailure() << "message lacks '" << needle << "': " << msg;
        return ::testing::AssertionSuccess() << msg;
    } catch (const std::exception& e) {
        return ::testing::AssertionFailure() << "not a std::runtime_error: " << e.what();
    }
    return ::testing::AssertionFailure() << "opening " << path << " did not throw";
}

// One tensor per supported dtype, plus a 0-d and two empty tensors.
io::TensorMap all_dtypes() {
    torch::manual_seed(0);
    io::TensorMap t;
    t["f32"]       = torch::randn({2, 3});
    t["f16"]       = torch::randn({3, 1}).to(torch::kFloat16);
    t["bf16"]      = torch::randn({2, 2}).to(torch::kBFloat16);
    t["f64"]       = torch::randn({4}, torch::kFloat64);
    t["i64"]       = torch::tensor({-(int64_t{1} << 40), int64_t{-3}, int64_t{7}}, torch::kInt64);
    t["i32"]       = torch::tensor({-100000, 5}, torch::kInt32);
    t["i16"]       = torch::tensor({-300, 300, 1}, torch::kInt16);
    t["i8"]        = torch::tensor({-128, 127}, torch::kInt8);
    t["u8"]        = torch::tensor({0, 255, 17}, torch::kUInt8);
    t["bool"]      = torch::tensor({true, false, true});
    t["scalar"]    = torch::tensor(3.5f);  // 0-d
    t["empty"]     = torch::zeros({0, 3});
    t["empty_i64"] = torch::zeros({0}, torch::kInt64);
    return t;
}

TEST(Safetensors, RoundTripsEveryDtypeAndMetadata) {
    TempDir dir;
    const std::string path      = dir.file("all.safetensors");
    const auto tensors          = all_dtypes();
    const io::Metadata metadata = {{"format", "pt"}, {"note", "hello \"world\""}};
    io::save_safetensors(path, tensors, metadata);

    io::SafetensorsFile file(path);
    EXPECT_EQ(file.metadata(), metadata);
    const auto loaded = file.get_all();
    ASSERT_EQ(loaded.size(), tensors.size());
    for (const auto& [name, expected] : tensors) {
        SCOPED_TRACE(name);
        ASSERT_EQ(loaded.count(name), 1u);
        const auto& got = loaded.at(name);
        EXPECT_EQ(got.scalar_type(), expected.scalar_type());
        EXPECT_EQ(got.sizes(), expected.sizes());
        EXPECT_TRUE(torch::equal(got, expected));
        EXPECT_EQ(file.info(name).dtype, io::dtype_to_safetensors(expected.scalar_type()));
    }
    EXPECT_EQ(file.info("scalar").shape, std::vector<int64_t>{});
    EXPECT_EQ(file.info("scalar").end - file.info("scalar").begin, 4u);
    EXPECT_EQ(file.info("empty").begin, file.info("empty").end);
    EXPECT_EQ(io::load_safetensors(path).size(), tensors.size());
}

TEST(Safetensors, DtypeTable) {
    const std::vector<std::pair<std::string, torch::ScalarType>> table = {
        {"F64", torch::kFloat64},   {"F32", torch::kFloat32}, {"F16", torch::kFloat16},
        {"BF16", torch::kBFloat16}, {"I64", torch::kInt64},   {"I32", torch::kInt32},
        {"I16", torch::kInt16},     {"I8", torch::kInt8},     {"U8", torch::kUInt8},
        {"BOOL", torch::kBool}};
    for (const auto& [name, type] : table) {
        EXPECT_EQ(io::dtype_from_safetensors(name, "ctx"), type);
        EXPECT_EQ(io::dtype_to_safetensors(type), name);
        EXPECT_EQ(io::dtype_size(name), c10::elementSize(type));
    }
    EXPECT_THROW(io::dtype_from_safetensors("F8_E4M3", "ctx"), std::runtime_error);
    EXPECT_THROW(io::dtype_to_safetensors(torch::kComplexFloat), std::runtime_error);
}

TEST(Safetensors, WrittenBytesFollowTheSpec) {
    TempDir dir;
    const std::string path = dir.file("spec.safetensors");
    const auto tensors     = all_dtypes();
    io::save_safetensors(path, tensors);
    const std::string bytes = read_bytes(path);

    // 8-byte little-endian header length, header padded with spaces to a multiple of 8.
    ASSERT_GE(bytes.size(), 8u);
    const uint64_t n = read_u64_le(bytes);
    ASSERT_LE(8 + n, bytes.size());
    EXPECT_EQ(n % 8, 0u);
    const std::string header = bytes.substr(8, n);
    EXPECT_EQ(header.front(), '{');
    const auto last = header.find_last_not_of(' ');
    EXPECT_EQ(header[last], '}');
    EXPECT_LT(header.size() - last - 1, 8u) << "more padding than needed";
    const auto json = nlohmann::json::parse(header);
    ASSERT_TRUE(json.is_object());
    EXPECT_EQ(json["__metadata__"], nlohmann::json({{"format", "pt"}}));

    // Data offsets tile [0, data size) in name order, each span holding the raw LE bytes.
    const uint64_t data_size = bytes.size() - 8 - n;
    const char* data         = bytes.data() + 8 + n;
    uint64_t expected        = 0;
    size_t count             = 0;
    for (const auto& [name, tensor] : tensors) {
        SCOPED_TRACE(name);
        ASSERT_TRUE(json.contains(name));
        const auto& entry = json[name];
        EXPECT_EQ(entry["dtype"].get<std::string>(),
                  io::dtype_to_safetensors(tensor.scalar_type()));
        EXPECT_EQ(entry["shape"].get<std::vector<int64_t>>(), tensor.sizes().vec());
        const uint64_t begin = entry["data_offsets"][0].get<uint64_t>();
        const uint64_t end   = entry["data_offsets"][1].get<uint64_t>();
        EXPECT_EQ(begin, expected);
        const uint64_t size = static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
        ASSERT_EQ(end - begin, size);
        ASSERT_LE(end, data_size);
        if (size > 0)  // an empty tensor's data pointer may be null (memcmp's is nonnull)
            EXPECT_EQ(std::memcmp(data + begin, tensor.contiguous().data_ptr(), size), 0);
        expected = end;
        ++count;
    }
    EXPECT_EQ(expected, data_size);
    EXPECT_EQ(json.size(), count + 1);  // + __metadata__
}

TEST(Safetensors, NoMetadataWritesNoMetadataKey) {
    TempDir dir;
    const std::string path = dir.file("nometa.safetensors");
    io::save_safetensors(path, {{"x", torch::ones({2})}}, {});
    const std::string bytes = read_bytes(path);
    const auto json         = nlohmann::json::parse(bytes.substr(8, read_u64_le(bytes)));
    EXPECT_FALSE(json.contains("__metadata__"));
    EXPECT_TRUE(io::SafetensorsFile(path).metadata().empty());
}

TEST(Safetensors, NonContiguousAndEmptyFile) {
    TempDir dir;
    const std::string path = dir.file("t.safetensors");
    const auto base        = torch::arange(12, torch::kFloat32).reshape({3, 4});
    io::save_safetensors(path, {{"t", base.t()}, {"s", base.index({torch::indexing::Slice(), 1})}});
    const auto loaded = io::load_safetensors(path);
    EXPECT_TRUE(torch::equal(loaded.at("t"), base.t()));
    EXPECT_TRUE(torch::equal(loaded.at("s"), torch::tensor({1.f, 5.f, 9.f})));

    const std::string empty = dir.file("empty.safetensors");
    io::save_safetensors(empty, {});
    io::SafetensorsFile file(empty);
    EXPECT_TRUE(file.tensors().empty());
    EXPECT_EQ(file.metadata().at("format"), "pt");
}

TEST(Safetensors, ReadsUnpaddedHeaderAndUnalignedData) {
    // Other writers need not pad; the data then starts at an odd address.
    TempDir dir;
    const std::string path   = dir.file("odd.safetensors");
    const std::string header = R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                               R"("a":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
    ASSERT_NE(header.size() % 8, 0u);
    std::string bytes = craft(header, 0);
    const float a[2]  = {1.25f, -2.5f};
    bytes.push_back(static_cast<char>(7));
    bytes.append(reinterpret_cast<const char*>(a), sizeof(a));
    write_bytes(path, bytes);
    io::SafetensorsFile file(path);
    EXPECT_TRUE(torch::equal(file.get("a"), torch::tensor({1.25f, -2.5f})));
    EXPECT_EQ(file.get("b").item<uint8_t>(), 7);
    EXPECT_TRUE(file.contains("a"));
    EXPECT_FALSE(file.contains("c"));
    EXPECT_THROW(file.get("c"), std::runtime_error);
}

TEST(Safetensors, FixtureFilesMatchManifest) {
    const auto manifest = nlohmann::json::parse(read_bytes(fixture("manifests/tiny-sd1.json")));
    ASSERT_TRUE(manifest.contains("unet/diffusion_pytorch_model.safetensors"));
    for (const auto& [rel, entry] : manifest.items()) {
        SCOPED_TRACE(rel);
        io::SafetensorsFile file(fixture("tiny-sd1/" + rel));
        EXPECT_EQ(file.metadata(), (io::Metadata{{"format", "pt"}}));
        const auto& expected = entry["tensors"];
        ASSERT_EQ(file.tensors().size(), expected.size());
        int64_t n_params = 0;
        for (const auto& info : file.tensors()) {
            SCOPED_TRACE(info.name);
            ASSERT_TRUE(expected.contains(info.name));
            EXPECT_EQ(info.dtype, expected[info.name]["dtype"].get<std::string>());
            EXPECT_EQ(info.shape, expected[info.name]["shape"].get<std::vector<int64_t>>());
            const auto t = file.get(info.name);
            EXPECT_EQ(t.sizes().vec(), info.shape);
            EXPECT_EQ(t.scalar_type(), torch::kFloat32);
            n_params += t.numel();
        }
        EXPECT_EQ(n_params, entry["n_params"].get<int64_t>());
    }
}

// ---- malformed files ----------------------------------------------------------------------

class MalformedSafetensors : public ::testing::Test {
  protected:
    // Writes a file with `header` and `data_size` data bytes, returns its path.
    std::string make(const std::string& header, size_t data_size, int64_t length = -1) {
        const std::string path = dir.file("bad" + std::to_string(counter++) + ".safetensors");
        write_bytes(path, craft(header, data_size, length));
        return path;
    }
    static std::string f32(const std::string& name, const std::string& shape, uint64_t begin,
                           uint64_t end) {
        return "\"" + name + R"(":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[)" +
               std::to_string(begin) + "," + std::to_string(end) + "]}";
    }
    TempDir dir;
    int counter = 0;
};

TEST_F(MalformedSafetensors, FileShorterThanEightBytes) {
    const std::string path = dir.file("short.safetensors");
    write_bytes(path, std::string("\x02\0\0\0\0", 5));
    EXPECT_TRUE(open_fails(path, {"shorter"}));
    EXPECT_THROW(io::load_safetensors(path), std::runtime_error);
}

TEST_F(MalformedSafetensors, HeaderLengthBeyondFile) {
    EXPECT_TRUE(open_fails(make("{}", 0, /*length=*/100), {"100", "past the end"}));
}

TEST_F(MalformedSafetensors, HeaderLengthOver100MB) {
    EXPECT_TRUE(open_fails(make("{}", 0, /*length=*/100'000'001), {"100 MB"}));
}

TEST_F(MalformedSafetensors, HeaderNotJson) {
    EXPECT_TRUE(open_fails(make("{\"a\": [1, 2", 0), {"JSON"}));
}

TEST_F(MalformedSafetensors, HeaderNotAnObject) {
    EXPECT_TRUE(open_fails(make("[1, 2, 3]", 0), {"not a JSON object"}));
}

TEST_F(MalformedSafetensors, UnknownDtype) {
    EXPECT_TRUE(open_fails(make(R"({"w":{"dtype":"F8_E5M2","shape":[2],"data_offsets":[0,2]}})", 2),
                           {"'w'", "F8_E5M2"}));
}

TEST_F(MalformedSafetensors, OverlappingOffsets) {
    EXPECT_TRUE(
        open_fails(make("{" + f32("a", "[2]", 0, 8) + "," + f32("b", "[2]", 4, 12) + "}", 12),
                   {"'b'", "'a'", "overlaps"}));
}

TEST_F(MalformedSafetensors, GapBetweenTensors) {
    EXPECT_TRUE(
        open_fails(make("{" + f32("a", "[1]", 0, 4) + "," + f32("b", "[1]", 8, 12) + "}", 12),
                   {"'b'", "gap"}));
}

TEST_F(MalformedSafetensors, OffsetsPastTheEnd) {
    EXPECT_TRUE(open_fails(make("{" + f32("a", "[2]", 0, 8) + "}", 4), {"'a'", "past the end"}));
}

TEST_F(MalformedSafetensors, OffsetsDisagreeWithShape) {
    EXPECT_TRUE(open_fails(make("{" + f32("a", "[3]", 0, 8) + "}", 8),
                           {"'a'", "shape x dtype", "8", "12"}));
}

TEST_F(MalformedSafetensors, EndBeforeBegin) {
    EXPECT_TRUE(
        open_fails(make("{" + f32("a", "[1]", 8, 4) + "}", 8), {"'a'", "end before begin"}));
}

TEST_F(MalformedSafetensors, DataSectionLongerThanTensors) {
    EXPECT_TRUE(
        open_fails(make("{" + f32("a", "[1]", 0, 4) + "}", 8), {"cover 4 bytes", "8 bytes"}));
}

TEST_F(MalformedSafetensors, NegativeOrFractionalShape) {
    EXPECT_TRUE(open_fails(make("{" + f32("neg", "[-1]", 0, 0) + "}", 0), {"'neg'", "shape"}));
    EXPECT_TRUE(open_fails(make("{" + f32("frac", "[1.5]", 0, 4) + "}", 4), {"'frac'", "shape"}));
    EXPECT_TRUE(open_fails(make("{" + f32("str", "[\"2\"]", 0, 8) + "}", 8), {"'str'", "shape"}));
}

TEST_F(MalformedSafetensors, MetadataValueNotString) {
    EXPECT_TRUE(open_fails(make(R"({"__metadata__":{"format":"pt","step":3}})", 0),
                           {"__metadata__", "'step'"}));
    EXPECT_TRUE(open_fails(make(R"({"__metadata__":["pt"]})", 0), {"__metadata__"}));
}

TEST_F(MalformedSafetensors, EntryMissingFields) {
    EXPECT_TRUE(
        open_fails(make(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4), {"'a'", "dtype"}));
    EXPECT_TRUE(
        open_fails(make(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", 4), {"'a'", "shape"}));
    EXPECT_TRUE(open_fails(make(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4),
                           {"'a'", "data_offsets"}));
    EXPECT_TRUE(open_fails(make(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,-4]}})", 4),
                           {"'a'", "data_offsets"}));
}

TEST_F(MalformedSafetensors, MissingFile) {
    EXPECT_TRUE(open_fails(dir.file("does_not_exist.safetensors"), {"cannot open"}));
}

// ---- atomic writes ------------------------------------------------------------------------

std::vector<std::string> temp_files(const std::string& dir) {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir))
        if (e.path().filename().string().find(".tmp-") != std::string::npos)
            out.push_back(e.path().string());
    return out;
}

TEST(SafetensorsAtomicWrite, OverwritesAndLeavesNoTempFile) {
    TempDir dir;
    const std::string path = dir.file("w.safetensors");
    io::save_safetensors(path, {{"x", torch::ones({3})}});
    io::save_safetensors(path, {{"y", torch::zeros({2, 2})}});
    const auto loaded = io::load_safetensors(path);
    ASSERT_EQ(loaded.size(), 1u);
    EXPECT_TRUE(torch::equal(loaded.at("y"), torch::zeros({2, 2})));
    EXPECT_TRUE(temp_files(dir.path()).empty());
}

// replace = false (t2i convert's outputs): a new file is written; a file that is there when the
// write ends (one that appeared meanwhile) stays byte for byte, and no temp file is left.
TEST(SafetensorsAtomicWrite, NoReplaceWritesANewFileAndNeverAnExistingOne) {
    TempDir dir;
    const std::string path = dir.file("new.safetensors");
    io::save_safetensors(path, {{"x", torch::ones({3})}}, {{"format", "pt"}}, /*replace=*/false);
    EXPECT_TRUE(torch::equal(io::load_safetensors(path).at("x"), torch::ones({3})));
    const std::string users = dir.file("users.safetensors");
    write_bytes(users, "the user's bytes");
    try {
        io::save_safetensors(users, {{"x", torch::ones({3})}}, {{"format", "pt"}}, false);
        FAIL() << "no exception";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("does not replace"), std::string::npos) << e.what();
    }
    std::ifstream in(users);
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "the user's bytes");
    EXPECT_TRUE(temp_files(dir.path()).empty());
}

TEST(SafetensorsAtomicWrite, MissingFolderThrowsNamingPathAndLeavesNoTempFile) {
    TempDir dir;
    const std::string path = dir.file("no_such_folder/w.safetensors");
    try {
        io::save_safetensors(path, {{"x", torch::ones({3})}});
        FAIL() << "no exception";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dir.file("no_such_folder")));
    EXPECT_TRUE(temp_files(dir.path()).empty());
}

TEST(SafetensorsAtomicWrite, FailedRenameRemovesTempFileAndKeepsTarget) {
    // The target is a non-empty folder: the temp file is written, the rename fails.
    TempDir dir;
    const std::string path = dir.file("target.safetensors");
    fs::create_directory(path);
    write_bytes(path + "/keep", "x");
    try {
        io::save_safetensors(path, {{"x", torch::ones({3})}});
        FAIL() << "no exception";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
    EXPECT_TRUE(fs::is_directory(path));
    EXPECT_TRUE(fs::exists(path + "/keep"));
    EXPECT_TRUE(temp_files(dir.path()).empty());
}

TEST(SafetensorsAtomicWrite, UnsupportedDtypeKeepsExistingFile) {
    TempDir dir;
    const std::string path = dir.file("keep.safetensors");
    io::save_safetensors(path, {{"x", torch::ones({3})}});
    const std::string before = read_bytes(path);
    EXPECT_THROW(io::save_safetensors(path, {{"c", torch::ones({2}, torch::kComplexFloat)}}),
                 std::runtime_error);
    EXPECT_EQ(read_bytes(path), before);
    EXPECT_TRUE(temp_files(dir.path()).empty());
}

}  // namespace
}  // namespace t2i
