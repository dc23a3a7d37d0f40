// Implements: the shape of t2i's fuzz targets (libFuzzer, https://llvm.org/docs/LibFuzzer.html).
// Each target is one function `int fuzz_<name>(const uint8_t*, size_t)` that feeds the bytes to
// a parser of user files and swallows the std::exception a bad input must end in; anything else
// (a crash, a sanitizer report, an abort, a hang) is a finding. T2I_FUZZ_TARGET(name) defines
// the function, and with T2I_LIBFUZZER also libFuzzer's entry point, so that the same code runs
// under `scripts/fuzz.sh` and, over the seed corpus, in the sanitized test binary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

#include "util/torch_compat.h"

namespace t2i::fuzz {

// A private folder in memory (/dev/shm when it exists) for targets whose parsers read files;
// `fresh` empties it first.
std::string scratch_dir(bool fresh = true);
void write_file(const std::string& path, const std::string& bytes);
// The input split at every occurrence of "\xFF\xFE\xFD" (a separator unlikely in text), so
// one input can hold several files; always `n` parts (missing ones empty).
std::vector<std::string> split_parts(const uint8_t* data, size_t size, size_t n);
// Once per process: one intra-op thread, logs quiet.
void init_once();

}  // namespace t2i::fuzz

#define T2I_FUZZ_BODY(name)                                         \
    static void fuzz_body_##name(const uint8_t* data, size_t size); \
    int fuzz_##name(const uint8_t* data, size_t size) {             \
        t2i::fuzz::init_once();                                     \
        try {                                                       \
            fuzz_body_##name(data, size);                           \
        } catch (const std::exception&) {                           \
        }                                                           \
        return 0;                                                   \
    }

#ifdef T2I_LIBFUZZER
#define T2I_FUZZ_TARGET(name)                                                 \
    int fuzz_##name(const uint8_t* data, size_t size);                        \
    extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { \
        return fuzz_##name(data, size);                                       \
    }                                                                         \
    T2I_FUZZ_BODY(name)                                                       \
    static void fuzz_body_##name(const uint8_t* data, size_t size)
#else
#define T2I_FUZZ_TARGET(name) \
    T2I_FUZZ_BODY(name)       \
    static void fuzz_body_##name(const uint8_t* data, size_t size)
#endif
