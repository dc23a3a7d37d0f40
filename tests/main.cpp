// Implements: the gtest entry point (not a test file): fixed thread count so results do not depend
// on the machine, the CUDA half of libtorch loaded first, and TempDir (test_util.h).
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

}  // namespace t2i::testing

int main(int argc, char** argv) {
    // The CUDA half of libtorch, before any test asks about CUDA (util/device.h): the CUDA tests
    // run where there is a GPU, and the lazy load is exercised everywhere.
    t2i::load_cuda_runtime();
    ::testing::InitGoogleTest(&argc, argv);
    t2i::set_num_threads(0);
    return RUN_ALL_TESTS();
}
