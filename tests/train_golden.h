// Implements: helpers shared by the golden training tests (test_train_step.cpp,
// test_train_multistep.cpp): loading a tiny model folder, the per-parameter statistics the
// fixtures store (fixtures README section 2: sum, sum of squares, max |x|, mean in float64), and
// the fixture's name lists from info.json.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "io/file_util.h"
#include "io/json_config.h"
#include "pipeline/model_dir.h"
#include "schedulers/ddpm.h"
#include "test_util.h"
#include "training/loss.h"

namespace t2i::testing {

using TinyModel = training::StepModels;

// The frozen components (eval, no grad) and a fresh trainable UNet of fixtures/<cfg>/.
inline TinyModel load_tiny_model(const std::string& cfg) {
    TinyModel m;
    m.unet         = pipeline::load_unet(fixture(cfg + "/unet"), {});
    m.vae          = pipeline::load_vae(fixture(cfg + "/vae"), {});
    m.text_encoder = pipeline::load_text_encoder(fixture(cfg + "/text_encoder"), {});
    for (auto& p : m.vae->parameters()) p.set_requires_grad(false);
    for (auto& p : m.text_encoder->parameters()) p.set_requires_grad(false);
    m.vae->eval();
    m.text_encoder->eval();
    m.unet->train();
    m.noise_scheduler = schedulers::DDPMScheduler(schedulers::SchedulerConfig::from_json(
        io::read_json(fixture(cfg + "/scheduler/scheduler_config.json"))));
    return m;
}

// [n, 4] float64: (sum, sum of squares, max |x|, mean) of each tensor.
inline torch::Tensor param_stats(const std::vector<torch::Tensor>& tensors) {
    std::vector<torch::Tensor> rows;
    for (const auto& t : tensors) {
        const auto x = t.detach().to(torch::kFloat64);
        rows.push_back(torch::stack({x.sum(), (x * x).sum(), x.abs().max(), x.mean()}));
    }
    return torch::stack(rows);
}

// golden/<cfg>/info.json, parsed leniently: Python's json writes -Infinity / NaN (sampler
// configs), which strict JSON rejects; they become null.
inline nlohmann::json read_golden_info(const std::string& cfg) {
    std::string text = io::read_text_file(fixture("golden/" + cfg + "/info.json"));
    for (const std::string token : {"-Infinity", "Infinity", "NaN"})
        for (size_t pos = text.find(token); pos != std::string::npos; pos = text.find(token, pos))
            text.replace(pos, token.size(), "null");
    return nlohmann::json::parse(text);
}

inline std::vector<std::string> string_list(const nlohmann::json& j) {
    return j.get<std::vector<std::string>>();
}

// Compares per-tensor statistics [n, 4] column by column: |diff| <= atol[c] + rtol * |ref|.
// Returns the number of tensors that fail, printing the first few.
inline int compare_stats(const torch::Tensor& got, const torch::Tensor& ref,
                         const std::vector<std::string>& names, const std::vector<double>& atol,
                         double rtol, const std::string& what) {
    int failures = 0;
    auto g       = got.accessor<double, 2>();
    auto r       = ref.accessor<double, 2>();
    for (int64_t i = 0; i < got.size(0); ++i)
        for (int64_t c = 0; c < 4; ++c) {
            const double diff = std::abs(g[i][c] - r[i][c]);
            if (diff <= atol[c] + rtol * std::abs(r[i][c])) continue;
            if (++failures <= 5)
                ADD_FAILURE() << what << " " << names[i] << " column " << c << ": got " << g[i][c]
                              << " expected " << r[i][c] << " (diff " << diff << ")";
            break;
        }
    return failures;
}

}  // namespace t2i::testing
