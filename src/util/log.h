// Implements: log_info / log_warn / log_error, one printf-style format for every message on stderr.
#pragma once

#include <cstdarg>
#include <string>
#include <vector>

namespace t2i {

void log_info(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void log_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// With several processes: messages get a "[rank R]" tag and ranks other than 0 print only
// warnings and errors (as accelerate's logger on the main process).
void set_log_rank(int rank, int world_size);

// Only errors are printed (fuzz targets, which call the parsers millions of times).
void set_log_quiet(bool quiet);

// printf into a std::string; used to build error messages.
std::string strformat(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// "a, b, c": lists of accepted values in error messages.
std::string join(const std::vector<std::string>& names);

}  // namespace t2i
