// Implements: small file helpers shared by every reader and writer: atomic write (temp name,
// fsync, rename), bounded whole-file reads and read-only memory maps, with errors that name the
// path. Nothing here reads more than its limit or blocks on a FIFO or device: hostile input and
// wrong paths fail with a message, never with an allocation of whatever size a file claims.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <string_view>

namespace t2i::io {

// Calls `write` on a temporary file next to `path`, fsyncs it, renames it over `path` and fsyncs
// the folder. `write` returns false on a short write. Throws naming `path` on any failure and
// removes the temporary file; an existing `path` is never damaged. `replace` false: a new file
// only; if `path` exists when the write is done (it appeared meanwhile), it is left as it is and
// the call throws (link(2) instead of rename(2)).
void write_file_atomic(const std::string& path, const std::function<bool(std::FILE*)>& write,
                       bool replace = true);
void write_text_atomic(const std::string& path, const std::string& text);
// Makes renames and new entries in `dir` durable (best effort: errors are ignored).
void fsync_dir(const std::string& dir);
void fsync_file(const std::string& path);

// Read limits. Config-like files (config.json, vocab.json, training_state.json, ...) are small;
// data files (metadata.jsonl of millions of images) may be large, but are still read whole.
constexpr uint64_t kMaxConfigFileBytes = 64ull << 20;
constexpr uint64_t kMaxDataFileBytes   = 2ull << 30;

// The whole file, byte for byte (text or binary); throws naming the path. A file that is not a
// regular file, or is larger than `max_bytes`, is an error naming its size and the limit.
std::string read_text_file(const std::string& path, uint64_t max_bytes = kMaxDataFileBytes);

// A read-only memory map of a whole regular file. Pages are read on first touch, so a decoder
// that stops at a bad header never reads (or allocates) the rest of a huge file.
class MappedFile {
  public:
    explicit MappedFile(const std::string& path);
    ~MappedFile();
    MappedFile(const MappedFile&)            = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    std::string_view bytes() const { return {static_cast<const char*>(data_), size_}; }

  private:
    void* data_  = nullptr;
    size_t size_ = 0;
};
bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);

}  // namespace t2i::io
