// Tests: every fuzz target (fuzz/) over its seed corpus (fuzz/corpus/<target>/), in the
// sanitized test binary: the inputs a fuzzer once found troublesome stay fixed, and every
// parser runs under AddressSanitizer + UndefinedBehaviorSanitizer on each CI run.
#include <gtest/gtest.h>

#include <filesystem>

#include "io/file_util.h"

int fuzz_safetensors(const uint8_t*, size_t);
int fuzz_json_config(const uint8_t*, size_t);
int fuzz_tokenizer(const uint8_t*, size_t);
int fuzz_prompt(const uint8_t*, size_t);
int fuzz_metadata(const uint8_t*, size_t);
int fuzz_image(const uint8_t*, size_t);
int fuzz_checkpoint_state(const uint8_t*, size_t);

namespace t2i {
namespace {

struct Target {
    const char* name;
    int (*run)(const uint8_t*, size_t);
};

class FuzzCorpus : public ::testing::TestWithParam<Target> {};

TEST_P(FuzzCorpus, EveryInputEndsInAResultOrAnExceptionNeverACrash) {
    const std::string dir = std::string(T2I_FUZZ_CORPUS) + "/" + GetParam().name;
    int inputs            = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
        const std::string bytes = io::read_text_file(e.path());
        SCOPED_TRACE(e.path().string());
        GetParam().run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
        ++inputs;
    }
    EXPECT_GE(inputs, 2) << dir;
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzCorpus,
                         ::testing::Values(Target{"safetensors", fuzz_safetensors},
                                           Target{"json_config", fuzz_json_config},
                                           Target{"tokenizer", fuzz_tokenizer},
                                           Target{"prompt", fuzz_prompt},
                                           Target{"metadata", fuzz_metadata},
                                           Target{"image", fuzz_image},
                                           Target{"checkpoint_state", fuzz_checkpoint_state}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace t2i
