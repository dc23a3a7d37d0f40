// Implements: small file helpers shared by every writer: atomic write (temp name, fsync, rename)
// and whole-file read with errors that name the path.
#pragma once

#include <cstdio>
#include <functional>
#include <string>

namespace t2i::io {

// Calls `write` on a temporary file next to `path`, fsyncs it, renames it over `path` and fsyncs
// the folder. `write` returns false on a short write. Throws naming `path` on any failure and
// removes the temporary file; an existing `path` is never damaged.
void write_file_atomic(const std::string& path, const std::function<bool(std::FILE*)>& write);
void write_text_atomic(const std::string& path, const std::string& text);
// Makes renames and new entries in `dir` durable (best effort: errors are ignored).
void fsync_dir(const std::string& dir);
void fsync_file(const std::string& path);

// The whole file, byte for byte (text or binary); throws naming the path.
std::string read_text_file(const std::string& path);
bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);

}  // namespace t2i::io
