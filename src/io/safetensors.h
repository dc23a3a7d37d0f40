// Implements: the safetensors format (https://github.com/huggingface/safetensors, format.md):
// 8-byte little-endian header length N, N bytes of JSON header, then the raw little-endian data.
// Reading memory-maps the file and validates every offset before any byte is touched, so a
// malformed file is an error naming the file and the tensor, never an out-of-bounds read.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace t2i::io {

using TensorMap = std::map<std::string, torch::Tensor>;
using Metadata  = std::map<std::string, std::string>;

// One tensor's entry of the header.
struct TensorInfo {
    std::string name;
    std::string dtype;  // safetensors spelling: "F32", "BF16", ...
    std::vector<int64_t> shape;
    uint64_t begin = 0;  // byte offsets into the data section
    uint64_t end   = 0;
};

// safetensors dtype name <-> torch dtype; throws naming `context` for an unknown name.
torch::ScalarType dtype_from_safetensors(const std::string& name, const std::string& context);
std::string dtype_to_safetensors(torch::ScalarType dtype);
size_t dtype_size(const std::string& name);

// A validated, memory-mapped safetensors file. Tensors are views copied out on demand.
class SafetensorsFile {
  public:
    explicit SafetensorsFile(const std::string& path);
    ~SafetensorsFile();
    SafetensorsFile(const SafetensorsFile&)            = delete;
    SafetensorsFile& operator=(const SafetensorsFile&) = delete;

    const std::string& path() const { return path_; }
    const Metadata& metadata() const { return metadata_; }
    const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file order
    bool contains(const std::string& name) const;
    const TensorInfo& info(const std::string& name) const;
    uint64_t file_size() const { return size_; }

    // A tensor that borrows the mapped bytes (valid while this object lives). Read-only.
    torch::Tensor view(const std::string& name) const;
    // An owned copy, optionally converted to `dtype`.
    torch::Tensor get(const std::string& name) const;
    TensorMap get_all() const;

  private:
    std::string path_;
    void* map_           = nullptr;
    uint64_t size_       = 0;
    const uint8_t* data_ = nullptr;  // start of the data section
    Metadata metadata_;
    std::vector<TensorInfo> tensors_;
    std::map<std::string, size_t> index_;
};

// Parse and validate a header without a file (used by SafetensorsFile and by tests).
// `data_size` is the number of bytes after the header.
void parse_header(const std::string& header_json, uint64_t data_size, const std::string& path,
                  std::vector<TensorInfo>* tensors, Metadata* metadata);

TensorMap load_safetensors(const std::string& path);

// Write tensors (contiguous little-endian copies) in name order, header padded with spaces to a
// multiple of 8 bytes as the reference writer does. Written to `path.tmp-<pid>`, fsynced and
// renamed, so a crash never leaves a half-written file under `path`. `replace` false: a new file
// only (io::write_file_atomic).
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const Metadata& metadata = {{"format", "pt"}}, bool replace = true);

}  // namespace t2i::io
