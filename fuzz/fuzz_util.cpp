// Implements: fuzz/fuzz_target.h.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <vector>

#include "fuzz_target.h"
#include "util/log.h"

namespace t2i::fuzz {

namespace fs = std::filesystem;

std::string scratch_dir(bool fresh) {
    static const std::string dir = [] {
        const fs::path base =
            fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
        return (base / ("t2i-fuzz-" + std::to_string(::getpid()))).string();
    }();
    std::error_code ec;
    if (fresh) fs::remove_all(dir, ec);
    fs::create_directories(dir, ec);
    return dir;
}

void write_file(const std::string& path, const std::string& bytes) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return;
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
}

std::vector<std::string> split_parts(const uint8_t* data, size_t size, size_t n) {
    const std::string all(reinterpret_cast<const char*>(data), size), sep = "\xFF\xFE\xFD";
    std::vector<std::string> parts;
    size_t start = 0;
    while (parts.size() + 1 < n) {
        const size_t at = all.find(sep, start);
        if (at == std::string::npos) break;
        parts.push_back(all.substr(start, at - start));
        start = at + sep.size();
    }
    parts.push_back(start <= all.size() ? all.substr(start) : "");
    parts.resize(n);
    return parts;
}

void init_once() {
    static const bool done = [] {
        t2i::set_num_threads(1);
        t2i::set_log_quiet(true);
        scratch_dir(false);  // its name is built before the handler below, so it outlives it
        std::atexit([] {
            std::error_code ec;
            fs::remove_all(scratch_dir(false), ec);
        });
        return true;
    }();
    (void)done;
}

}  // namespace t2i::fuzz
