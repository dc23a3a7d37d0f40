// Implements: io/output_folder.h.
#include "io/output_folder.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <stdexcept>

#include "io/file_util.h"
#include "io/json_config.h"
#include "util/log.h"

namespace t2i::io {

namespace fs = std::filesystem;

namespace {

constexpr const char* kLock     = ".t2i.lock";
constexpr const char* kManifest = ".t2i-manifest.json";

}  // namespace

OutputFolder::OutputFolder(std::string dir) : dir_(std::move(dir)) {
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (!dir_exists(dir_))
        throw std::runtime_error("cannot create the output folder '" + dir_ +
                                 "': " + (ec ? ec.message() : "a file of that name exists"));
    const std::string lock = file(kLock);
    lock_fd_               = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
                                    0644);  // never through a link
    if (lock_fd_ < 0)
        throw std::runtime_error("cannot create '" + lock + "': " + std::strerror(errno) +
                                 " (is the output folder writable?)");
    if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
        std::string holder;
        try {
            holder = read_text_file(lock, 64);
        } catch (const std::exception&) {
        }
        ::close(lock_fd_);
        lock_fd_ = -1;
        throw std::runtime_error("the output folder '" + dir_ + "' is in use by another t2i run" +
                                 (holder.empty() ? "" : " (pid " + holder + ")") +
                                 "; wait for it to finish or choose another --output_dir");
    }
    const std::string pid = std::to_string(::getpid());
    if (::ftruncate(lock_fd_, 0) == 0 && ::pwrite(lock_fd_, pid.data(), pid.size(), 0) < 0) {
        // The pid is only for the message above; the lock itself is what counts.
    }
    had_manifest_ = file_exists(file(kManifest));
    if (had_manifest_) {
        const auto manifest = read_json(file(kManifest));
        const auto& entries = manifest.json().value("entries", nlohmann::json::array());
        if (!entries.is_array())
            throw std::runtime_error("'" + file(kManifest) +
                                     "': 'entries' must be a list of names");
        for (const auto& e : entries)
            if (e.is_string()) owned_.insert(e.get<std::string>());
    }
    sweep_temporaries();
}

OutputFolder::~OutputFolder() {
    if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

void OutputFolder::write_manifest() const {
    nlohmann::json j{{"format", "t2i-manifest-1"},
                     {"about",
                      "top-level entries t2i wrote here; t2i replaces or deletes only "
                      "these"},
                     {"entries", owned_}};
    write_text_atomic(file(kManifest), dump_json(j, 2) + "\n");
}

void OutputFolder::claim(const std::string& name) {
    if (owned_.count(name)) return;
    std::error_code ec;
    if (fs::exists(fs::symlink_status(file(name), ec)))
        throw std::runtime_error("'" + file(name) +
                                 "' already exists and was not written by t2i; t2i never "
                                 "replaces files it did not write: move it away or choose "
                                 "another --output_dir");
    owned_.insert(name);
    write_manifest();
}

void OutputFolder::adopt(const std::string& name) {
    if (owned_.insert(name).second) write_manifest();
}

void OutputFolder::forget(const std::string& name) {
    if (owned_.erase(name)) write_manifest();
}

void OutputFolder::check_not_foreign(const std::set<std::string>& names,
                                     const std::string& hint) const {
    for (const auto& name : names) {
        std::error_code ec;
        if (!owns(name) && fs::exists(fs::symlink_status(file(name), ec)))
            throw std::runtime_error("--output_dir '" + dir_ + "' already holds '" + name +
                                     "', which t2i did not write; " + hint);
    }
}

void OutputFolder::sweep_temporaries() {
    // write_file_atomic: NAME.tmp-PID; move_dir_into_place: NAME.old-PID; folders written whole:
    // NAME.tmp-PID or .NAME.tmp-PID; checkpoint rotation: .NAME.deleting-PID.
    static const std::regex kTemporary(R"(^(.+)\.(tmp|old|deleting)-[0-9]+$)");
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir_, ec)) {
        const std::string name = e.path().filename().string();
        std::smatch m;
        if (!std::regex_match(name, m, kTemporary)) continue;
        const std::string base = m[1].str();
        const bool ours        = owns(base) || base == kManifest ||
                          (base.size() > 1 && base[0] == '.' && owns(base.substr(1)));
        if (!ours) continue;
        log_info("removing '%s', left over by an interrupted write", e.path().c_str());
        fs::remove_all(e.path(), ec);
    }
}

}  // namespace t2i::io
