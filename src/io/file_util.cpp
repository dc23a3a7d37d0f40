// Implements: io/file_util.h.
#include "io/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace t2i::io {

namespace {
std::string parent_dir(const std::string& path) {
    const auto slash = path.find_last_of('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}
}  // namespace

void write_file_atomic(const std::string& path, const std::function<bool(std::FILE*)>& write) {
    const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
    std::FILE* f          = std::fopen(tmp.c_str(), "wb");
    if (!f)
        throw std::runtime_error("cannot write '" + path + "': " + std::strerror(errno) +
                                 " (check that the folder exists and is writable)");
    bool ok = false;
    try {
        ok = write(f);
    } catch (...) {
        std::fclose(f);
        std::remove(tmp.c_str());
        throw;
    }
    int saved_errno = ok ? 0 : errno;
    ok              = (std::fflush(f) == 0) && ok;
    ok              = (::fsync(::fileno(f)) == 0) && ok;
    ok              = (std::fclose(f) == 0) && ok;
    if (ok && std::rename(tmp.c_str(), path.c_str()) != 0) ok = false;
    if (!ok) {
        const std::string err = std::strerror(saved_errno ? saved_errno : errno);
        std::remove(tmp.c_str());
        throw std::runtime_error("writing '" + path + "' failed: " + err +
                                 " (disk full or not writable?)");
    }
    fsync_dir(parent_dir(path));
}

namespace {
void fsync_path(const std::string& path, int flags) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | flags);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}
}  // namespace

void fsync_file(const std::string& path) { fsync_path(path, 0); }

void fsync_dir(const std::string& dir) { fsync_path(dir, O_DIRECTORY); }

void write_text_atomic(const std::string& path, const std::string& text) {
    write_file_atomic(path, [&](std::FILE* f) {
        return std::fwrite(text.data(), 1, text.size(), f) == text.size();
    });
}

std::string read_text_file(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw std::runtime_error("cannot read '" + path + "': " + std::strerror(errno));
    std::string bytes;
    char buffer[1 << 16];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof buffer, f)) > 0) bytes.append(buffer, n);
    const bool failed = std::ferror(f);
    std::fclose(f);
    if (failed) throw std::runtime_error("cannot read '" + path + "': read error");
    return bytes;
}

bool file_exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool dir_exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace t2i::io
