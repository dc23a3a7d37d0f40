// Implements: helpers shared by the tests: fixture paths, golden tensors, allclose with the
// fixtures README's tolerance rule (max |a - b| <= atol + rtol * |ref|), printing the max diff.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "io/safetensors.h"

namespace t2i::testing {

inline std::string fixtures_dir() { return T2I_FIXTURES_DIR; }
inline std::string fixture(const std::string& rel) { return fixtures_dir() + "/" + rel; }

// A temporary folder removed at the end of the test.
class TempDir {
  public:
    TempDir();
    ~TempDir();
    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }

  private:
    std::string path_;
};

// Max |actual - expected| / (atol + rtol * |expected|); <= 1 means within tolerance.
inline ::testing::AssertionResult allclose(const torch::Tensor& actual,
                                           const torch::Tensor& expected, double atol,
                                           double rtol) {
    if (actual.sizes() != expected.sizes())
        return ::testing::AssertionFailure()
               << "shape " << actual.sizes() << " vs expected " << expected.sizes();
    auto a                = actual.detach().to(torch::kFloat64);
    auto e                = expected.detach().to(torch::kFloat64);
    auto diff             = (a - e).abs();
    auto ratio            = diff / (atol + rtol * e.abs());
    const double worst    = ratio.max().item<double>();
    const double max_diff = diff.max().item<double>();
    if (!(worst <= 1.0))
        return ::testing::AssertionFailure()
               << "max abs diff " << max_diff << " exceeds atol " << atol << " + rtol " << rtol
               << " x |ref| (worst ratio " << worst << ")";
    return ::testing::AssertionSuccess() << "max abs diff " << max_diff;
}

// The fixtures README's rule for forward activations: |diff| <= 1e-5 x (1 + |ref|).
inline ::testing::AssertionResult forward_close(const torch::Tensor& a, const torch::Tensor& e) {
    return t2i::testing::allclose(a, e, 1e-5, 1e-5);
}

}  // namespace t2i::testing
