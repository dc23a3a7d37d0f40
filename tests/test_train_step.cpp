// Tests: one training step of train_text_to_image.py on tiny-sd1 / tiny-sd2 against the golden
// train_step fixture (fixtures README section 2): for every variant in info.json (main, snr5,
// noise_offset0.1, input_perturbation0.1, pred_<other>, pred_<other>_snr5), from the same initial
// UNet and the stored random draws: loss, target, noisy latents, prediction, pre-clip gradient
// norms (total and per tensor), stored gradients, and the parameters after clip + AdamW.
//
// Analytically zero gradients: in the tiny configs some GroupNorms have one channel per group
// (32 channels, 32 groups), which cancels any per-channel constant added before them: conv1.bias
// and time_emb_proj of those resnets, and the last up block's output biases before conv_norm_out.
// Their gradients are float rounding noise (~1e-9, vs a total norm ~1) in both implementations,
// and AdamW turns noise into +-lr moves of random sign. Such tensors ("noise tensors": reference
// gradient L2 below kNoiseFloor x total norm) are checked to be noise on our side too, and their
// updated values only to move by at most ~lr.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>

#include "train_golden.h"
#include "training/loss.h"
#include "training/optimizer.h"

namespace t2i {
namespace {

using testing::fixture;

constexpr double kNoiseFloor = 1e-6;

training::LossConfig loss_config(const nlohmann::json& kwargs) {
    training::LossConfig c;
    if (kwargs.contains("snr_gamma")) c.snr_gamma = kwargs["snr_gamma"].get<double>();
    if (kwargs.contains("noise_offset")) c.noise_offset = kwargs["noise_offset"].get<double>();
    if (kwargs.contains("input_perturbation"))
        c.input_perturbation = kwargs["input_perturbation"].get<double>();
    if (kwargs.contains("prediction_type"))
        c.prediction_type = kwargs["prediction_type"].get<std::string>();
    return c;
}

training::AdamWOptions adamw_options(const nlohmann::json& opt) {
    training::AdamWOptions o;
    o.lr           = opt["lr"].get<double>();
    o.beta1        = opt["betas"][0].get<double>();
    o.beta2        = opt["betas"][1].get<double>();
    o.weight_decay = opt["weight_decay"].get<double>();
    o.eps          = opt["eps"].get<double>();
    return o;
}

double rel_diff(double got, double ref) {
    return std::abs(got - ref) / std::max(std::abs(ref), 1e-30);
}

// What one variant's checks found, for the summary line.
struct VariantReport {
    double loss_rel = 0, grad_norm_rel = 0, worst_grad_l2_rel = 0, worst_grad_elem = 0;
    int64_t grads_checked = 0, noise_tensors = 0, mismatches = 0, elements = 0;
};

class TrainStepGolden : public ::testing::TestWithParam<std::string> {
  protected:
    void SetUp() override {
        cfg_    = GetParam();
        info_   = testing::read_golden_info(cfg_)["train_step"];
        golden_ = std::make_unique<io::SafetensorsFile>(
            fixture("golden/" + cfg_ + "/train_step.safetensors"));
        names_               = testing::string_list(info_["param_order"]);
        model_               = testing::load_tiny_model(cfg_);
        draws_.vae_eps       = get("inputs.vae_eps");
        draws_.noise         = get("inputs.noise");
        draws_.offset_noise  = get("inputs.offset_noise");
        draws_.perturb_noise = get("inputs.perturb_noise");
        draws_.timesteps     = get("inputs.timesteps");
    }
    torch::Tensor get(const std::string& key) const { return golden_->get(key); }
    bool has(const std::string& key) const { return golden_->contains(key); }

    void check_forward(const std::string& V, const training::StepOutputs& out, VariantReport& r);
    std::vector<bool> check_grads(const std::string& V, const std::vector<torch::Tensor>& params,
                                  VariantReport& r);
    void check_after_step(const std::string& V, const std::vector<torch::Tensor>& params,
                          const std::vector<torch::Tensor>& before, const std::vector<bool>& noise,
                          VariantReport& r);

    std::string cfg_;
    nlohmann::json info_;
    std::unique_ptr<io::SafetensorsFile> golden_;
    std::vector<std::string> names_;  // info.json param_order
    testing::TinyModel model_;
    training::StepDraws draws_;
};

void TrainStepGolden::check_forward(const std::string& V, const training::StepOutputs& out,
                                    VariantReport& r) {
    EXPECT_TRUE(testing::forward_close(out.latents, get("latents")));
    // noisy_latents is stored only where it differs from main's.
    const std::string noisy = has(V + "noisy_latents") ? V + "noisy_latents" : "main.noisy_latents";
    EXPECT_TRUE(testing::forward_close(out.noisy_latents, get(noisy)));
    EXPECT_TRUE(testing::forward_close(out.target, get(V + "target")));
    EXPECT_TRUE(testing::forward_close(out.model_pred, get(V + "model_pred")));
    if (has(V + "snr")) {
        EXPECT_TRUE(testing::allclose(out.snr, get(V + "snr"), 0, 1e-6));
        EXPECT_TRUE(testing::allclose(out.mse_loss_weights, get(V + "mse_loss_weights"), 0, 1e-6));
    }
    const double loss = out.loss.item<double>(), ref = get(V + "loss").item<double>();
    r.loss_rel = rel_diff(loss, ref);
    EXPECT_LE(r.loss_rel, 1e-6) << "loss " << loss << " vs " << ref;
}

// Per-tensor L2 of the pre-clip gradients, and the stored gradients element-wise. Returns which
// tensors are noise tensors (see the file comment).
std::vector<bool> TrainStepGolden::check_grads(const std::string& V,
                                               const std::vector<torch::Tensor>& params,
                                               VariantReport& r) {
    const auto l2_ref   = get(V + "grad_l2_per_param");
    const double floor_ = kNoiseFloor * get(V + "grad_norm").item<double>();
    std::vector<bool> noise(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
        const auto& g       = params[i].grad();
        const double l2     = g.norm().item<double>();
        const double ref    = l2_ref[i].item<double>();
        noise[i]            = ref < floor_;
        const auto gref_key = V + "grad/" + names_[i];
        if (noise[i]) {
            ++r.noise_tensors;
            EXPECT_LT(l2, floor_) << "gradient of " << names_[i] << " should be rounding noise";
            continue;
        }
        r.worst_grad_l2_rel = std::max(r.worst_grad_l2_rel, rel_diff(l2, ref));
        EXPECT_LE(rel_diff(l2, ref), 1e-4)
            << "grad L2 of " << names_[i] << ": " << l2 << " vs " << ref;
        if (!has(gref_key)) continue;
        ++r.grads_checked;
        const auto gref    = get(gref_key);
        const double scale = gref.abs().max().item<double>();
        r.worst_grad_elem =
            std::max(r.worst_grad_elem, (g - gref).abs().max().item<double>() / scale);
        EXPECT_TRUE(testing::allclose(g, gref, 1e-4 * scale, 1e-4)) << "grad of " << names_[i];
    }
    return noise;
}

void TrainStepGolden::check_after_step(const std::string& V,
                                       const std::vector<torch::Tensor>& params,
                                       const std::vector<torch::Tensor>& before,
                                       const std::vector<bool>& noise, VariantReport& r) {
    const double lr = info_["optimizer"]["lr"].get<double>();
    std::vector<torch::Tensor> after, delta;
    for (size_t i = 0; i < params.size(); ++i) {
        after.push_back(params[i].detach());
        delta.push_back(params[i].detach() - before[i]);
    }
    const auto stats = testing::param_stats(after), dstats = testing::param_stats(delta);
    const auto stats_ref = get(V + "param_after_stats"), dstats_ref = get(V + "delta_stats");
    for (size_t i = 0; i < params.size(); ++i) {
        const double n = static_cast<double>(params[i].numel());
        const auto s = stats[i], sr = stats_ref[i], d = dstats[i], dr = dstats_ref[i];
        if (noise[i]) {  // every element may move by up to lr either way
            const double sum_abs = before[i].abs().sum().item<double>();
            EXPECT_NEAR(s[0].item<double>(), sr[0].item<double>(), 2.1 * lr * n) << names_[i];
            EXPECT_NEAR(s[1].item<double>(), sr[1].item<double>(),
                        4.2 * lr * sum_abs + 5 * lr * lr * n)
                << names_[i];
            EXPECT_LE(d[2].item<double>(), 1.01 * lr + 2 * lr * 1e-2 * s[2].item<double>())
                << names_[i];
            continue;
        }
        // Elements with |g| ~ 1e-8 may still flip: each moves a sum by ~2 lr. Deltas are
        // differences of fp32 values, exact only to an ulp of the parameter (1.2e-7 near 1).
        const double ulp     = 1.2e-7 * std::max(1.0, sr[2].item<double>());
        const double sum_tol = 4 * lr + ulp * std::sqrt(n);
        EXPECT_TRUE(testing::allclose(s, sr, 4 * lr, 1e-6)) << "param_after_stats of " << names_[i];
        const auto expect_near = [&](int c, double tol, const char* what) {
            EXPECT_NEAR(d[c].item<double>(), dr[c].item<double>(), tol)
                << what << " of " << names_[i];
        };
        expect_near(0, sum_tol, "delta sum");
        expect_near(1, 1e-3 * dr[1].item<double>() + 8 * lr * lr, "delta sum of squares");
        expect_near(2, ulp, "delta max");
        expect_near(3, sum_tol / n, "delta mean");
    }
    for (size_t i = 0; i < params.size(); ++i) {
        const auto key = V + "param_after_adamw/" + names_[i];
        if (!has(key)) continue;
        const auto diff =
            (params[i].detach().to(torch::kFloat64) - get(key).to(torch::kFloat64)).abs();
        if (noise[i]) {
            EXPECT_LE(diff.max().item<double>(), 2.1 * lr) << names_[i];
            continue;
        }
        r.mismatches += (diff > 1e-7).sum().item<int64_t>();
        r.elements += diff.numel();
    }
    EXPECT_LE(r.mismatches, std::max<int64_t>(2, r.elements / 1000)) << "of " << r.elements;
}

TEST_P(TrainStepGolden, EveryVariantMatchesDiffusers) {
    const auto pixel_values = get("inputs.pixel_values");
    const auto input_ids    = get("inputs.input_ids");
    int variants            = 0;
    for (const auto& [variant, vinfo] : info_["variants"].items()) {
        SCOPED_TRACE(cfg_ + " variant " + variant);
        ++variants;
        const std::string V = variant + ".";
        VariantReport report;
        model_.unet = pipeline::load_unet(fixture(cfg_ + "/unet"), {});  // same start each time
        auto named  = model_.unet->named_parameters();
        ASSERT_EQ(named.size(), names_.size());
        std::vector<torch::Tensor> params, before;  // in param_order (libtorch's order may differ)
        for (const auto& name : names_) {
            ASSERT_TRUE(named.contains(name)) << name;
            params.push_back(named[name]);
            before.push_back(named[name].detach().clone());
        }
        auto out = training::compute_step(model_, pixel_values, input_ids, draws_,
                                          loss_config(vinfo["kwargs"]));
        check_forward(V, out, report);
        out.loss.backward();
        const auto noise = check_grads(V, params, report);
        const double grad_norm =
            training::clip_grad_norm(params, info_["max_grad_norm"].get<double>()).item<double>();
        report.grad_norm_rel = rel_diff(grad_norm, get(V + "grad_norm").item<double>());
        EXPECT_LE(report.grad_norm_rel, 1e-5);
        training::AdamW adamw(named, adamw_options(info_["optimizer"]));
        adamw.step();
        check_after_step(V, params, before, noise, report);
        std::cout << "[ " << cfg_ << " " << variant << " ] loss rel " << report.loss_rel
                  << ", grad_norm rel " << report.grad_norm_rel << ", worst grad L2 rel "
                  << report.worst_grad_l2_rel << ", noise tensors " << report.noise_tensors
                  << ", grads checked " << report.grads_checked << " (worst |diff|/max|g| "
                  << report.worst_grad_elem << "), AdamW mismatches " << report.mismatches << "/"
                  << report.elements << "\n";
    }
    EXPECT_GE(variants, 6);
}

// DREAM (compute_dream_and_update_latents): with delta = (noise - unet(noisy)) sqrt(1 - abar)^p,
// the UNet sees noisy + sqrt(1 - abar) delta and the target is noise + delta. Epsilon only.
TEST(TrainStep, DreamUpdatesInputAndTargetAndRejectsVPrediction) {
    auto model = testing::load_tiny_model("tiny-sd1");
    io::SafetensorsFile golden(fixture("golden/tiny-sd1/train_step.safetensors"));
    training::StepDraws draws;
    draws.vae_eps   = golden.get("inputs.vae_eps");
    draws.noise     = golden.get("inputs.noise");
    draws.timesteps = golden.get("inputs.timesteps");
    training::LossConfig c;
    c.dream_training            = true;
    c.dream_detail_preservation = 2.0;
    const auto px = golden.get("inputs.pixel_values"), ids = golden.get("inputs.input_ids");
    auto out = training::compute_step(model, px, ids, draws, c);
    torch::NoGradGuard no_grad;
    const auto noisy = golden.get("main.noisy_latents");
    const auto pred =
        model.unet->forward(noisy, draws.timesteps, golden.get("encoder_hidden_states"));
    const auto abar =
        model.noise_scheduler.alphas_cumprod().index({draws.timesteps}).view({-1, 1, 1, 1});
    const auto s     = (1 - abar).sqrt();
    const auto delta = (draws.noise - pred) * s.pow(2.0);
    EXPECT_TRUE(testing::forward_close(out.noisy_latents, noisy + s * delta));
    EXPECT_TRUE(testing::forward_close(out.target, draws.noise + delta));
    c.prediction_type = "v_prediction";
    EXPECT_THROW(training::compute_step(model, px, ids, draws, c), std::runtime_error);
}

// draw_step_randoms: documented order, optional draws only when their flag is set, seeded.
TEST(TrainStep, DrawStepRandomsOrderAndSeed) {
    training::LossConfig c;
    c.noise_offset       = 0.1;
    c.input_perturbation = 0.1;
    auto gen             = at::detail::createCPUGenerator(42);
    const auto d         = training::draw_step_randoms({2, 4, 8, 8}, 1000, gen, c);
    auto ref             = at::detail::createCPUGenerator(42);
    EXPECT_TRUE(torch::equal(d.vae_eps, at::randn({2, 4, 8, 8}, ref)));
    EXPECT_TRUE(torch::equal(d.noise, at::randn({2, 4, 8, 8}, ref)));
    EXPECT_TRUE(torch::equal(d.offset_noise, at::randn({2, 4, 1, 1}, ref)));
    EXPECT_TRUE(torch::equal(d.perturb_noise, at::randn({2, 4, 8, 8}, ref)));
    EXPECT_TRUE(torch::equal(d.timesteps, at::randint(0, 1000, {2}, ref)));
    EXPECT_EQ(d.timesteps.scalar_type(), torch::kInt64);
    auto plain   = at::detail::createCPUGenerator(42);
    const auto p = training::draw_step_randoms({2, 4, 8, 8}, 1000, plain, {});
    EXPECT_FALSE(p.offset_noise.defined());
    EXPECT_FALSE(p.perturb_noise.defined());
    EXPECT_TRUE(torch::equal(p.noise, d.noise));
    EXPECT_EQ(training::latent_shape(models::AutoencoderKLConfig::from_json(
                                         io::read_json(fixture("tiny-sd1/vae/config.json"))),
                                     {2, 3, 64, 64}),
              (std::vector<int64_t>{2, 4, 32, 32}));
}

INSTANTIATE_TEST_SUITE_P(Tiny, TrainStepGolden, ::testing::Values("tiny-sd1", "tiny-sd2"));

}  // namespace
}  // namespace t2i
