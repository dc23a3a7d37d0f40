// Tests: three consecutive training steps with two EMAModels (default and use_ema_warmup) on
// tiny-sd1 / tiny-sd2 against the golden train_multistep_ema fixture (fixtures README section
// 2): per step the loss, pre-clip grad norm, every parameter's statistics and the subset's values
// after clip + AdamW, the EMA decays, and both EMAs' statistics and subset values. Also EMAModel
// on its own: get_decay formulas, foreach vs loop, offload, copy_to / store / restore, state.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>

#include "train_golden.h"
#include "training/ema.h"
#include "training/loss.h"
#include "training/optimizer.h"

namespace t2i {
namespace {

using testing::fixture;

// Statistics of tensors listed by name, in `names` order.
torch::Tensor stats_by_name(const std::map<std::string, torch::Tensor>& tensors,
                            const std::vector<std::string>& names) {
    std::vector<torch::Tensor> list;
    for (const auto& n : names) list.push_back(tensors.at(n));
    return testing::param_stats(list);
}

std::map<std::string, torch::Tensor> to_map(
    const torch::OrderedDict<std::string, torch::Tensor>& d) {
    std::map<std::string, torch::Tensor> out;
    for (const auto& item : d) out[item.key()] = item.value();
    return out;
}

// Tensors whose gradient is analytically zero (see test_train_step.cpp): structural, so taken
// from the single-step fixture's per-tensor gradient norms.
std::vector<bool> noise_tensors(io::SafetensorsFile& train_step) {
    const auto l2       = train_step.get("main.grad_l2_per_param");
    const double floor_ = 1e-6 * train_step.get("main.grad_norm").item<double>();
    std::vector<bool> out;
    for (int64_t i = 0; i < l2.numel(); ++i) out.push_back(l2[i].item<double>() < floor_);
    return out;
}

// Statistics after k + 1 steps. Ordinary tensors: a few sign flips of near-zero gradient
// elements (each ~2 lr) plus fp32 rounding. Noise tensors: every element may differ by up to
// ~2 lr per step; compared with bounds on that.
void expect_stats_close(const torch::Tensor& got, const torch::Tensor& ref,
                        const std::vector<std::string>& names, const std::vector<bool>& noise,
                        double lr, int k, const std::string& what) {
    int bad = 0;
    for (int64_t i = 0; i < got.size(0); ++i) {
        const auto g = got[i], r = ref[i];
        const bool ok =
            noise[i] ? std::abs(g[2].item<double>() - r[2].item<double>()) <= 2.1 * lr * (k + 1)
                     : testing::allclose(g, r, 4 * lr * (k + 1), 1e-5);
        if (!ok && ++bad <= 5)
            ADD_FAILURE() << what << " stats of " << names[i] << ": " << g << " vs " << r;
    }
    EXPECT_EQ(bad, 0) << what;
}

class MultistepGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(MultistepGolden, ThreeStepsAndBothEMAsMatchDiffusers) {
    const std::string cfg = GetParam();
    const auto info       = testing::read_golden_info(cfg)["train_step"];
    const auto steps_info = info["multistep_ema"]["steps"];
    io::SafetensorsFile golden(fixture("golden/" + cfg + "/train_multistep_ema.safetensors"));
    io::SafetensorsFile batch(fixture("golden/" + cfg + "/train_step.safetensors"));
    const auto names = testing::string_list(info["param_order"]);
    const double lr  = info["optimizer"]["lr"].get<double>();
    const auto noise = noise_tensors(batch);

    auto model  = testing::load_tiny_model(cfg);
    auto params = model.unet->named_parameters();
    training::AdamWOptions o;  // the script's defaults = the fixture's optimizer
    o.lr = lr;
    training::AdamW adamw(params, o);
    training::EMAModel ema(params, {});
    training::EMAConfig warm_cfg;
    warm_cfg.use_ema_warmup = true;
    training::EMAModel ema_warmup(params, warm_cfg);

    for (int k = 0; k < 3; ++k) {
        SCOPED_TRACE(cfg + " step " + std::to_string(k));
        const std::string S = "step" + std::to_string(k) + ".";
        training::StepDraws draws;
        draws.vae_eps   = golden.get(S + "inputs.vae_eps");
        draws.noise     = golden.get(S + "inputs.noise");
        draws.timesteps = golden.get(S + "inputs.timesteps");
        auto out        = training::compute_step(model, batch.get("inputs.pixel_values"),
                                                 batch.get("inputs.input_ids"), draws, {});
        out.loss.backward();
        const double grad_norm = training::clip_grad_norm(params, 1.0).item<double>();
        adamw.step();
        adamw.zero_grad();
        ema.step(params);
        ema_warmup.step(params);

        EXPECT_NEAR(out.loss.item<double>(), golden.get(S + "loss").item<double>(),
                    1e-6 * golden.get(S + "loss").item<double>());
        EXPECT_NEAR(grad_norm, golden.get(S + "grad_norm").item<double>(), 1e-5 * grad_norm);
        EXPECT_DOUBLE_EQ(ema.cur_decay_value(), steps_info[k]["ema_decay"].get<double>());
        EXPECT_DOUBLE_EQ(ema_warmup.cur_decay_value(),
                         steps_info[k]["ema_warmup_decay"].get<double>());
        EXPECT_EQ(ema.optimization_step(), steps_info[k]["ema_optimization_step"].get<int64_t>());

        const auto params_map = to_map(params);
        const auto shadow = ema.shadow_map(), shadow_w = ema_warmup.shadow_map();
        expect_stats_close(stats_by_name(params_map, names), golden.get(S + "unet_param_stats"),
                           names, noise, lr, k, "unet");
        expect_stats_close(stats_by_name(shadow, names), golden.get(S + "ema_param_stats"), names,
                           noise, lr, k, "ema");
        expect_stats_close(stats_by_name(shadow_w, names), golden.get(S + "ema_warmup_param_stats"),
                           names, noise, lr, k, "ema_warmup");
        for (size_t i = 0; i < names.size(); ++i) {
            // Element-wise: ordinary tensors within 1e-6 except a few flips (<= 0.2%); every
            // element within the 2 lr per step that a flip can cost.
            const auto check = [&](const std::string& key, const torch::Tensor& got) {
                if (!golden.contains(key)) return;
                const auto diff = (got.detach() - golden.get(key)).abs();
                if (!noise[i])
                    EXPECT_LE((diff > 1e-6).sum().item<int64_t>(),
                              std::max<int64_t>(2, diff.numel() / 500))
                        << key;
                EXPECT_LE(diff.max().item<double>(), 2.1 * lr * (k + 1)) << key;
            };
            check(S + "unet/" + names[i], params_map.at(names[i]));
            check(S + "ema/" + names[i], shadow.at(names[i]));
            check(S + "ema_warmup/" + names[i], shadow_w.at(names[i]));
        }
        std::cout << "[ " << cfg << " step " << k << " ] loss " << out.loss.item<double>()
                  << " (ref " << golden.get(S + "loss").item<double>() << "), grad_norm "
                  << grad_norm << " (ref " << golden.get(S + "grad_norm").item<double>() << ")\n";
    }
}

INSTANTIATE_TEST_SUITE_P(Tiny, MultistepGolden, ::testing::Values("tiny-sd1", "tiny-sd2"));

// --- EMAModel on its own -----------------------------------------------------------------

torch::OrderedDict<std::string, torch::Tensor> toy_params() {
    torch::OrderedDict<std::string, torch::Tensor> p;
    p.insert("w", torch::randn({4, 3}).set_requires_grad(true));
    p.insert("b", torch::randn({3}).set_requires_grad(true));
    p.insert("frozen", torch::randn({2}));  // requires_grad false: copied, not averaged
    return p;
}

TEST(EMAModel, DecayFormulasMatchDiffusers) {
    training::EMAModel ema(toy_params(), {});
    EXPECT_EQ(ema.get_decay(1), 0.0);
    EXPECT_DOUBLE_EQ(ema.get_decay(2), 2.0 / 11.0);
    EXPECT_DOUBLE_EQ(ema.get_decay(101), 101.0 / 110.0);
    EXPECT_DOUBLE_EQ(ema.get_decay(1000000), 0.9999);  // capped
    training::EMAConfig c;
    c.use_ema_warmup    = true;
    c.inv_gamma         = 2.0;
    c.power             = 0.75;
    c.update_after_step = 5;
    c.min_decay         = 0.1;
    training::EMAModel warm(toy_params(), c);
    EXPECT_EQ(warm.get_decay(6), 0.0);  // k = 0
    EXPECT_DOUBLE_EQ(warm.get_decay(7), std::max(0.1, 1 - std::pow(1 + 1 / 2.0, -0.75)));
    EXPECT_DOUBLE_EQ(warm.get_decay(20), 1 - std::pow(1 + 14 / 2.0, -0.75));
}

TEST(EMAModel, StepForeachOffloadAndSwap) {
    torch::manual_seed(0);
    auto p = toy_params();
    training::EMAConfig loop_cfg, foreach_cfg;
    foreach_cfg.foreach = true;
    foreach_cfg.offload = true;
    training::EMAModel a(p, loop_cfg), b(p, foreach_cfg);
    const auto initial = p["w"].detach().clone();
    for (int step = 0; step < 3; ++step) {
        {
            torch::NoGradGuard g;
            for (auto& item : p) item.value().add_(0.5);
        }
        a.step(p);
        b.step(p);
    }
    // Decays 0, 2/11, 0.25 and p_k = p0 + 0.5 k: s_k = p_k - decay_k (p_k - s_(k-1)), s_1 = p_1.
    const double s2 = 1.0 - (2.0 / 11.0) * 0.5, s3 = 1.5 - 0.25 * (1.5 - s2);
    EXPECT_TRUE(t2i::testing::allclose(a.shadow_map().at("w"), initial + s3, 1e-6, 0));
    EXPECT_TRUE(t2i::testing::allclose(b.shadow_map().at("w"), a.shadow_map().at("w"), 1e-6, 0));
    EXPECT_TRUE(torch::equal(a.shadow_map().at("frozen"), p["frozen"]));
    EXPECT_TRUE(b.shadow_map().at("w").device().is_cpu());

    // store -> copy_to -> restore leaves the live parameters untouched.
    const auto live = p["w"].detach().clone();
    a.store(p);
    a.copy_to(p);
    EXPECT_TRUE(torch::equal(p["w"], a.shadow_map().at("w")));
    a.restore(p);
    EXPECT_TRUE(torch::equal(p["w"], live));
    EXPECT_THROW(a.restore(p), std::runtime_error);

    // State round trip: config.json keys and shadow tensors.
    const auto j = a.config_json();
    for (const char* key : {"decay", "min_decay", "optimization_step", "update_after_step",
                            "use_ema_warmup", "inv_gamma", "power"})
        EXPECT_TRUE(j.contains(key)) << key;
    EXPECT_EQ(j["optimization_step"].get<int64_t>(), 3);
    training::EMAModel c(toy_params(), {});
    c.load_config_json(j);
    c.load_shadow(a.shadow_map());
    EXPECT_EQ(c.optimization_step(), 3);
    EXPECT_DOUBLE_EQ(c.get_decay(4), a.get_decay(4));
    EXPECT_TRUE(torch::equal(c.shadow_map().at("b"), a.shadow_map().at("b")));
}

}  // namespace
}  // namespace t2i
