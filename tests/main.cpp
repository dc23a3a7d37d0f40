// Implements: the gtest entry point: fixed thread count so results do not depend on the machine,
// the CUDA half of libtorch loaded first, TempDir (test_util.h), and one check before any test:
// the fixtures every test reads (../shared/fixtures) are there, else one clear failure.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>

#include "test_util.h"
#include "util/device.h"
#include "util/torch_compat.h"

namespace t2i::testing {

TempDir::TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "t2i-test-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
}

TempDir::~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

namespace {

// The truth the tests compare against: ../shared/fixtures with its checksum list and the tiny
// models. Missing (a clone without ../shared beside it), every test fails with this message.
class FixturesPresent : public ::testing::Environment {
  public:
    void SetUp() override {
        for (const char* f : {"SHA256SUMS", "tiny-sd1/model_index.json",
                              "tiny-sd2/model_index.json", "golden/SHA256SUMS"})
            ASSERT_TRUE(std::filesystem::exists(fixture(f)))
                << fixture(f)
                << " is missing: the tests need ../shared/fixtures beside the project";
    }
};

}  // namespace

}  // namespace t2i::testing

int main(int argc, char** argv) {
    // The CUDA half of libtorch, before any test asks about CUDA (util/device.h): the CUDA tests
    // run where there is a GPU, and the lazy load is exercised everywhere.
    t2i::load_cuda_runtime();
    ::testing::InitGoogleTest(&argc, argv);
    ::testing::AddGlobalTestEnvironment(new t2i::testing::FixturesPresent);
    t2i::set_num_threads(0);
    return RUN_ALL_TESTS();
}
