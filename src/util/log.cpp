// Implements: util/log.h.
#include "util/log.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <thread>
#include <vector>

namespace t2i {

static int g_rank = 0, g_world_size = 1;
static bool g_quiet = false;

static std::string vstrformat(const char* fmt, va_list ap) {
    va_list ap2;
    va_copy(ap2, ap);
    const int n = std::vsnprintf(nullptr, 0, fmt, ap);
    std::vector<char> buf(static_cast<size_t>(std::max(n, 0)) + 1);
    std::vsnprintf(buf.data(), buf.size(), fmt, ap2);
    va_end(ap2);
    return std::string(buf.data(), static_cast<size_t>(std::max(n, 0)));
}

void set_log_rank(int rank, int world_size) {
    g_rank       = rank;
    g_world_size = world_size;
}

void set_log_quiet(bool quiet) { g_quiet = quiet; }

static void vlog(const char* level, const char* fmt, va_list ap) {
    if (g_rank != 0 && level[0] == 'i') return;  // info only from rank 0
    if (g_quiet && level[0] != 'e') return;
    // One write per line, so lines of several processes sharing a terminal never interleave.
    std::string line = g_world_size > 1 ? strformat("[t2i %s rank %d] ", level, g_rank)
                                        : strformat("[t2i %s] ", level);
    line += vstrformat(fmt, ap);
    line += '\n';
    std::fflush(stderr);
    for (size_t done = 0; done < line.size();) {
        const ssize_t w = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
        if (w <= 0) break;
        done += static_cast<size_t>(w);
    }
}

void log_info(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog("info", fmt, ap);
    va_end(ap);
}

void log_warn(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog("warn", fmt, ap);
    va_end(ap);
}

void log_error(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog("error", fmt, ap);
    va_end(ap);
}

std::string strformat(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::string out = vstrformat(fmt, ap);
    va_end(ap);
    return out;
}

std::string join(const std::vector<std::string>& names) {
    std::string s;
    for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
    return s;
}

}  // namespace t2i
