// Implements: helpers shared by the tests: fixture paths, golden tensors, allclose with the
// fixtures README's tolerance rule (max |a - b| <= atol + rtol * |ref|), printing the max diff.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "io/image_io.h"
#include "io/safetensors.h"
#include "tokenizer/clip_tokenizer.h"
#include "training/train_config.h"

namespace t2i::testing {

struct RunResult {
    int code;         // exit code, -1 when killed by a signal
    std::string out;  // stdout + stderr
};

// Runs the t2i binary with shell-quoted arguments; stderr is merged into the output.
inline RunResult run_t2i(const std::vector<std::string>& args) {
    std::string cmd = std::string("'") + T2I_BINARY + "'";
    for (const auto& a : args) {
        std::string q;
        for (char c : a) q += (c == '\'') ? std::string("'\\''") : std::string(1, c);
        cmd += " '" + q + "'";
    }
    cmd += " 2>&1";
    std::FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) throw std::runtime_error("popen failed");
    std::string out;
    std::array<char, 4096> buf{};
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
    const int status = ::pclose(p);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

inline std::string fixtures_dir() { return T2I_FIXTURES_DIR; }
inline std::string fixture(const std::string& rel) { return fixtures_dir() + "/" + rel; }

// tiny-sd1's 1000-token CLIP tokenizer.
inline tokenizer::CLIPTokenizer tiny_tokenizer() {
    return tokenizer::CLIPTokenizer::from_pretrained(fixture("tiny-sd1/tokenizer"));
}

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

// A random RGB uint8 image [h, w, 3] from torch's global generator seeded with `seed`.
inline torch::Tensor random_image(int64_t h, int64_t w, int64_t seed) {
    torch::manual_seed(seed);
    return torch::randint(0, 256, {h, w, 3}, torch::kInt64).to(torch::kUInt8);
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
}

// Runs `fn`, expects an E whose message contains every string of `parts`.
template <typename E = std::runtime_error>
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
    try {
        fn();
        ADD_FAILURE() << "no exception";
    } catch (const E& e) {
        for (const auto& p : parts)
            EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
                << "'" << p << "' not in: " << e.what();
    }
}

// `t2i train` on tiny-sd1 at 64 px, batch 2, 2 threads, no LR warm-up, into dir/out: what the
// training tests share; each sets its steps, checkpoints and seed.
inline training::TrainConfig tiny_train_config(const TempDir& dir, const std::string& data) {
    training::TrainConfig c;
    c.pretrained_model_name_or_path = fixture("tiny-sd1");
    c.train_data_dir                = data;
    c.output_dir                    = dir.file("out");
    c.resolution                    = 64;
    c.train_batch_size              = 2;
    c.num_threads                   = 2;
    c.lr_warmup_steps               = 0;
    return c;
}

// `count` 80x72 images (shapes of random colours) with captions in dir/data, imagefolder layout
// (metadata.jsonl). Returns the folder.
inline std::string make_image_dataset(const TempDir& dir, int count) {
    const std::string data = dir.file("data");
    std::filesystem::create_directories(data);
    torch::manual_seed(3);
    std::string meta;
    for (int i = 0; i < count; ++i) {
        auto img = torch::randint(0, 256, {72, 80, 3}, torch::kUInt8);
        img.slice(0, 20, 50).slice(1, 20, 60).fill_(static_cast<uint8_t>(30 * i));
        const std::string name = "img" + std::to_string(i) + ".png";
        io::write_png(data + "/" + name, img);
        meta +=
            nlohmann::json{{"file_name", name}, {"text", "a photo of shape " + std::to_string(i)}}
                .dump() +
            "\n";
    }
    std::ofstream(data + "/metadata.jsonl") << meta;
    return data;
}

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
