// Implements: io/file_util.h.
#include "io/file_util.h"

#include <fcntl.h>
#include <sys/mman.h>
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

void write_file_atomic(const std::string& path, const std::function<bool(std::FILE*)>& write,
                       bool replace) {
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
    if (ok && !replace) {
        const bool linked    = ::link(tmp.c_str(), path.c_str()) == 0;
        const int link_errno = errno;
        std::remove(tmp.c_str());
        if (!linked && link_errno == EEXIST)
            throw std::runtime_error("'" + path +
                                     "' appeared while it was being written; t2i does not "
                                     "replace it (nothing was changed there)");
        if (!linked)
            throw std::runtime_error("writing '" + path + "' failed: " + std::strerror(link_errno));
        fsync_dir(parent_dir(path));
        return;
    }
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

namespace {

// Opens `path` for reading and checks that it is a regular file of at most `max_bytes`.
// O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused right after).
int open_regular_file(const std::string& path, uint64_t max_bytes, struct stat* st) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw std::runtime_error("cannot read '" + path + "': " + std::strerror(errno));
    if (::fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        ::close(fd);
        throw std::runtime_error("cannot read '" + path +
                                 "': not a regular file (a folder, device, FIFO or socket)");
    }
    if (static_cast<uint64_t>(st->st_size) > max_bytes) {
        ::close(fd);
        throw std::runtime_error("'" + path + "' is " + std::to_string(st->st_size) +
                                 " bytes, more than the " + std::to_string(max_bytes) +
                                 " bytes t2i reads for a file of this kind; is it the right file?");
    }
    return fd;
}

}  // namespace

std::string read_text_file(const std::string& path, uint64_t max_bytes) {
    struct stat st {};
    const int fd = open_regular_file(path, max_bytes, &st);
    std::string bytes;
    bytes.reserve(static_cast<size_t>(st.st_size));
    char buffer[1 << 16];
    for (;;) {
        const ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            const std::string err = std::strerror(errno);
            ::close(fd);
            throw std::runtime_error("cannot read '" + path + "': " + err);
        }
        if (n == 0) break;
        bytes.append(buffer, static_cast<size_t>(n));
        if (bytes.size() > max_bytes) {  // the file grew while being read
            ::close(fd);
            throw std::runtime_error("'" + path + "' grew past " + std::to_string(max_bytes) +
                                     " bytes while being read");
        }
    }
    ::close(fd);
    return bytes;
}

MappedFile::MappedFile(const std::string& path) {
    struct stat st {};
    const int fd = open_regular_file(path, UINT64_MAX, &st);
    size_        = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
        data_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (data_ == MAP_FAILED) {
            const std::string err = std::strerror(errno);
            data_                 = nullptr;
            ::close(fd);
            throw std::runtime_error("cannot map '" + path + "': " + err);
        }
    }
    ::close(fd);
}

MappedFile::~MappedFile() {
    if (data_) ::munmap(data_, size_);
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
