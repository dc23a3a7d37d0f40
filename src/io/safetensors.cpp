// Implements: io/safetensors.h. Validation rules follow the reference Rust crate
// (safetensors/src/tensor.rs `validate`): offsets contiguous from 0, in order, covering the data
// section exactly, each span equal to numel x itemsize.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "io/file_util.h"
#include "util/log.h"

namespace t2i::io {

namespace {

// The reference implementation refuses headers above 100 MB.
constexpr uint64_t kMaxHeaderSize = 100'000'000;

struct DtypeEntry {
    const char* name;
    torch::ScalarType type;
    size_t size;
};

const DtypeEntry kDtypes[] = {
    {"F64", torch::kFloat64, 8},   {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kInt64, 8},   {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2},     {"I8", torch::kInt8, 1},     {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1},
};

std::string accepted_dtypes() {
    std::string s;
    for (const auto& d : kDtypes) s += std::string(s.empty() ? "" : ", ") + d.name;
    return s;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
    throw std::runtime_error("safetensors file '" + path + "': " + what);
}

}  // namespace

torch::ScalarType dtype_from_safetensors(const std::string& name, const std::string& context) {
    for (const auto& d : kDtypes)
        if (name == d.name) return d.type;
    throw std::runtime_error(context + ": unknown dtype '" + name + "' (expected one of " +
                             accepted_dtypes() + ")");
}

std::string dtype_to_safetensors(torch::ScalarType dtype) {
    for (const auto& d : kDtypes)
        if (d.type == dtype) return d.name;
    throw std::runtime_error(std::string("safetensors: cannot store dtype ") +
                             c10::toString(dtype) + " (supported: " + accepted_dtypes() + ")");
}

size_t dtype_size(const std::string& name) {
    for (const auto& d : kDtypes)
        if (name == d.name) return d.size;
    return 0;
}

void parse_header(const std::string& header_json, uint64_t data_size, const std::string& path,
                  std::vector<TensorInfo>* tensors, Metadata* metadata) {
    nlohmann::json header;
    try {
        header = nlohmann::json::parse(header_json);
    } catch (const std::exception& e) {
        fail(path, std::string("header is not valid JSON (") + e.what() +
                       "); the file is damaged or not a safetensors file");
    }
    if (!header.is_object()) fail(path, "header is not a JSON object");
    tensors->clear();
    metadata->clear();
    for (auto it = header.begin(); it != header.end(); ++it) {
        const std::string& name = it.key();
        const auto& v           = it.value();
        if (name == "__metadata__") {
            if (!v.is_object()) fail(path, "__metadata__ must be an object of strings");
            for (auto m = v.begin(); m != v.end(); ++m) {
                if (!m.value().is_string())
                    fail(path, "__metadata__ value of '" + m.key() + "' is not a string");
                (*metadata)[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        const std::string where = "tensor '" + name + "'";
        if (!v.is_object()) fail(path, where + ": entry is not an object");
        if (!v.contains("dtype") || !v["dtype"].is_string())
            fail(path, where + ": missing string 'dtype'");
        if (!v.contains("shape") || !v["shape"].is_array())
            fail(path, where + ": missing array 'shape'");
        if (!v.contains("data_offsets") || !v["data_offsets"].is_array() ||
            v["data_offsets"].size() != 2)
            fail(path, where + ": 'data_offsets' must be [begin, end]");
        TensorInfo info;
        info.name         = name;
        info.dtype        = v["dtype"].get<std::string>();
        const size_t item = dtype_size(info.dtype);
        if (item == 0)
            fail(path, where + ": unknown dtype '" + info.dtype + "' (expected one of " +
                           accepted_dtypes() + ")");
        uint64_t numel = 1;
        for (const auto& d : v["shape"]) {
            if (!d.is_number_unsigned())
                fail(path, where + ": shape entries must be integers >= 0");
            const uint64_t n = d.get<uint64_t>();
            if (n != 0 && numel > UINT64_MAX / n) fail(path, where + ": shape overflows");
            numel *= n;
            info.shape.push_back(static_cast<int64_t>(n));
        }
        for (const auto& o : v["data_offsets"])
            if (!o.is_number_unsigned()) fail(path, where + ": data_offsets must be integers >= 0");
        info.begin = v["data_offsets"][0].get<uint64_t>();
        info.end   = v["data_offsets"][1].get<uint64_t>();
        if (info.end < info.begin)
            fail(path,
                 where + strformat(": data_offsets [%llu, %llu] end before begin",
                                   (unsigned long long)info.begin, (unsigned long long)info.end));
        if (numel > UINT64_MAX / item || info.end - info.begin != numel * item)
            fail(path, where + strformat(": data_offsets span %llu bytes but shape x dtype "
                                         "needs %llu bytes",
                                         (unsigned long long)(info.end - info.begin),
                                         (unsigned long long)(numel * item)));
        if (info.end > data_size)
            fail(path,
                 where + strformat(": data_offsets end %llu runs past the end of the data "
                                   "(%llu bytes); the file is truncated",
                                   (unsigned long long)info.end, (unsigned long long)data_size));
        tensors->push_back(std::move(info));
    }
    // Offsets must tile the data section: sorted by begin, each starting where the last ended.
    std::sort(tensors->begin(), tensors->end(), [](const TensorInfo& a, const TensorInfo& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    uint64_t expected = 0;
    for (size_t i = 0; i < tensors->size(); ++i) {
        const TensorInfo& t = (*tensors)[i];
        if (t.begin < expected)
            fail(path, "tensor '" + t.name + "' overlaps tensor '" + (*tensors)[i - 1].name +
                           strformat("' (begins at byte %llu, previous ends at %llu)",
                                     (unsigned long long)t.begin, (unsigned long long)expected));
        if (t.begin > expected)
            fail(path, "tensor '" + t.name +
                           strformat("' begins at byte %llu but the previous tensor ends at %llu "
                                     "(gap in the data section)",
                                     (unsigned long long)t.begin, (unsigned long long)expected));
        expected = t.end;
    }
    if (expected != data_size)
        fail(path, strformat("the tensors cover %llu bytes but the data section has %llu bytes",
                             (unsigned long long)expected, (unsigned long long)data_size));
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        fail(path, "not a regular file");
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ < 8) {
        ::close(fd);
        fail(path, strformat("file is %llu bytes, shorter than the 8-byte header length",
                             (unsigned long long)size_));
    }
    map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (map_ == MAP_FAILED) {
        map_ = nullptr;
        fail(path, std::string("mmap failed: ") + std::strerror(errno));
    }
    try {
        const auto* bytes = static_cast<const uint8_t*>(map_);
        uint64_t n        = 0;
        for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];  // little-endian u64
        if (n > kMaxHeaderSize)
            fail(path,
                 strformat("header length %llu exceeds the 100 MB limit", (unsigned long long)n));
        if (n > size_ - 8)
            fail(path, strformat("header length %llu runs past the end of the %llu-byte file",
                                 (unsigned long long)n, (unsigned long long)size_));
        const std::string header(reinterpret_cast<const char*>(bytes + 8), n);
        data_ = bytes + 8 + n;
        parse_header(header, size_ - 8 - n, path, &tensors_, &metadata_);
        for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
    } catch (...) {
        ::munmap(map_, size_);
        map_ = nullptr;
        throw;
    }
}

SafetensorsFile::~SafetensorsFile() {
    if (map_) ::munmap(map_, size_);
}

bool SafetensorsFile::contains(const std::string& name) const { return index_.count(name) > 0; }

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) fail(path_, "no tensor named '" + name + "'");
    return tensors_[it->second];
}

torch::Tensor SafetensorsFile::view(const std::string& name) const {
    const TensorInfo& t = info(name);
    const auto dtype    = dtype_from_safetensors(t.dtype, path_);
    // from_blob needs a non-const pointer; the tensor is only ever read.
    void* ptr = const_cast<uint8_t*>(data_ + t.begin);
    return torch::from_blob(ptr, t.shape, torch::TensorOptions().dtype(dtype));
}

torch::Tensor SafetensorsFile::get(const std::string& name) const { return view(name).clone(); }

TensorMap SafetensorsFile::get_all() const {
    TensorMap out;
    for (const auto& t : tensors_) out[t.name] = get(t.name);
    return out;
}

TensorMap load_safetensors(const std::string& path) { return SafetensorsFile(path).get_all(); }

void save_safetensors(const std::string& path, const TensorMap& tensors, const Metadata& metadata,
                      bool replace) {
    nlohmann::json header = nlohmann::json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::vector<torch::Tensor> data;
    uint64_t offset = 0;
    for (const auto& [name, tensor] : tensors) {
        torch::Tensor t         = tensor.detach().to(torch::kCPU).contiguous();
        const std::string dtype = dtype_to_safetensors(t.scalar_type());
        const uint64_t bytes    = static_cast<uint64_t>(t.numel()) * t.element_size();
        header[name]            = {{"dtype", dtype},
                                   {"shape", t.sizes().vec()},
                                   {"data_offsets", {offset, offset + bytes}}};
        offset += bytes;
        data.push_back(t);
    }
    std::string json = header.dump();
    json.append((8 - json.size() % 8) % 8, ' ');
    const uint64_t n = json.size();
    std::string out;
    out.reserve(8 + n);
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
    out += json;
    write_file_atomic(
        path,
        [&](std::FILE* f) {
            if (std::fwrite(out.data(), 1, out.size(), f) != out.size()) return false;
            for (const auto& t : data) {
                const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
                if (bytes && std::fwrite(t.data_ptr(), 1, bytes, f) != bytes) return false;
            }
            return true;
        },
        replace);
}

}  // namespace t2i::io
