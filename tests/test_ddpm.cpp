// Tests: schedulers/noise_schedule + schedulers/ddpm against diffusers v0.27.2
// (fixtures/golden/scheduler.safetensors for three beta schedules, the training-step tensors of
// golden/<cfg>/train_step.safetensors), zero terminal SNR, and error messages.
#include <gtest/gtest.h>

#include <cmath>

#include "io/json_config.h"
#include "io/safetensors.h"
#include "schedulers/ddpm.h"
#include "schedulers/noise_schedule.h"
#include "test_util.h"

namespace {
// Named so: torch::allclose would make an unqualified call ambiguous (ADL).
const auto& golden_close = t2i::testing::allclose;
}  // namespace
using t2i::testing::fixture;
using t2i::testing::forward_close;
using namespace t2i::schedulers;

namespace {

SchedulerConfig golden_config(const std::string& schedule) {
    auto all = t2i::io::read_json(fixture("golden/scheduler.json"));
    return SchedulerConfig::from_json(
        t2i::io::JsonConfig(all.json().at("configs").at(schedule), all.path() + ":" + schedule));
}

void check_schedule(const std::string& s) {
    SCOPED_TRACE(s);
    const auto golden = t2i::io::load_safetensors(fixture("golden/scheduler.safetensors"));
    auto g            = [&](const std::string& k) { return golden.at(s + "." + k); };
    DDPMScheduler scheduler(golden_config(s));
    EXPECT_EQ(scheduler.config().beta_schedule, s);

    EXPECT_EQ(scheduler.betas().scalar_type(), torch::kFloat32);
    EXPECT_TRUE(golden_close(scheduler.betas(), g("betas"), 1e-8, 0));
    // 1 - betas near 1: one float32 ulp is 6e-8, and torch 2.x's linspace rounds the last bit of
    // some betas differently from the fixtures' torch 1.13 (python torch 2.x gives the same as us).
    EXPECT_TRUE(golden_close(scheduler.alphas(), g("alphas"), 6e-8, 0));
    EXPECT_TRUE(golden_close(scheduler.alphas_cumprod(), g("alphas_cumprod"), 1e-6, 0));

    const auto& x0 = golden.at("inputs.original_samples");
    const auto& n  = golden.at("inputs.noise");
    const auto& t  = golden.at("inputs.timesteps");
    EXPECT_TRUE(forward_close(scheduler.add_noise(x0, n, t), g("add_noise")));
    EXPECT_TRUE(forward_close(scheduler.get_velocity(x0, n, t), g("get_velocity")));

    // SNR spans ~1e4 .. ~1e-5 (cosine: ~1e-8 at t = 999): relative tolerance.
    EXPECT_TRUE(golden_close(compute_snr(scheduler, torch::arange(1000)), g("snr_all"), 0, 1e-5));
    auto snr = compute_snr(scheduler, t);
    EXPECT_TRUE(golden_close(snr, g("snr_at_timesteps"), 0, 1e-5));
    for (int gamma : {5, 1}) {
        const std::string suffix = ".gamma" + std::to_string(gamma);
        EXPECT_TRUE(golden_close(min_snr_loss_weights(snr, gamma, "epsilon"),
                                 g("minsnr_weight_eps" + suffix), 1e-7, 1e-5));
        EXPECT_TRUE(golden_close(min_snr_loss_weights(snr, gamma, "v_prediction"),
                                 g("minsnr_weight_v" + suffix), 1e-7, 1e-5));
    }
}

}  // namespace

TEST(NoiseSchedule, Linear) { check_schedule("linear"); }
TEST(NoiseSchedule, ScaledLinear) { check_schedule("scaled_linear"); }
TEST(NoiseSchedule, SquaredcosCapV2) { check_schedule("squaredcos_cap_v2"); }

TEST(NoiseSchedule, UnknownScheduleNamesIt) {
    try {
        make_betas("cosine_typo", 0.0001, 0.02, 1000);
        FAIL() << "expected a throw";
    } catch (const std::runtime_error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("cosine_typo"), std::string::npos) << msg;
        EXPECT_NE(msg.find("scaled_linear"), std::string::npos) << msg;
    }
    SchedulerConfig c;
    c.beta_schedule = "quadratic";
    EXPECT_THROW(DDPMScheduler{c}, std::runtime_error);
}

TEST(NoiseSchedule, SigmoidAndTrainedBetas) {
    auto b = make_betas("sigmoid", 0.0001, 0.02, 10);
    EXPECT_TRUE(golden_close(
        b, torch::sigmoid(torch::linspace(-6, 6, 10)) * (0.02 - 0.0001) + 0.0001, 1e-9, 0));
    auto trained = make_betas("linear", 0, 0, 3, {0.1, 0.2, 0.3});
    EXPECT_TRUE(trained.equal(torch::tensor({0.1f, 0.2f, 0.3f})));
    EXPECT_THROW(make_betas("linear", 0, 0, 4, {0.1, 0.2, 0.3}), std::runtime_error);
}

TEST(NoiseSchedule, ZeroTerminalSnr) {
    for (const char* s : {"linear", "scaled_linear", "squaredcos_cap_v2"}) {
        SCOPED_TRACE(s);
        auto config                   = golden_config(s);
        config.rescale_betas_zero_snr = true;
        DDPMScheduler scheduler(config);
        const auto& ac = scheduler.alphas_cumprod();
        EXPECT_EQ(ac[-1].item<float>(), 0.0f);
        // The first alpha_bar is unchanged by the rescale (Lin et al. 2023, Algorithm 1).
        DDPMScheduler plain(golden_config(s));
        EXPECT_NEAR(ac[0].item<float>(), plain.alphas_cumprod()[0].item<float>(), 1e-6);
        EXPECT_TRUE(torch::all(ac.slice(0, 1) <= ac.slice(0, 0, -1)).item<bool>());

        auto t   = torch::tensor({0, 500, 998, 999}, torch::kLong);
        auto snr = compute_snr(scheduler, t);
        EXPECT_TRUE(torch::isfinite(snr).all().item<bool>());
        EXPECT_EQ(snr[3].item<float>(), 0.0f);
        for (const char* p : {"epsilon", "v_prediction", "sample"}) {
            auto w = min_snr_loss_weights(snr, 5.0, p);
            EXPECT_TRUE(torch::isfinite(w).all().item<bool>()) << p;
        }
        EXPECT_EQ(min_snr_loss_weights(snr, 5.0, "epsilon")[3].item<float>(), 1.0f);
        EXPECT_EQ(min_snr_loss_weights(snr, 5.0, "v_prediction")[3].item<float>(), 0.0f);
        // add_noise at the last step is pure noise.
        auto x0 = torch::randn({4, 2, 3, 3}), n = torch::randn({4, 2, 3, 3});
        EXPECT_TRUE(scheduler.add_noise(x0, n, t)[3].equal(n[3]));
    }
}

TEST(DDPMScheduler, MatchesTrainStepTensors) {
    // The tensors of one train_text_to_image.py step: noisy latents, v target, SNR weights.
    for (const std::string cfg : {"tiny-sd1", "tiny-sd2"}) {
        SCOPED_TRACE(cfg);
        DDPMScheduler scheduler(SchedulerConfig::from_json(
            t2i::io::read_json(fixture(cfg + "/scheduler/scheduler_config.json"))));
        EXPECT_EQ(scheduler.config().class_name, "DDPMScheduler");
        EXPECT_EQ(scheduler.config().beta_schedule, "scaled_linear");
        EXPECT_EQ(scheduler.config().steps_offset, 1);
        t2i::io::SafetensorsFile st(fixture("golden/" + cfg + "/train_step.safetensors"));
        auto latents = st.get("latents"), noise = st.get("inputs.noise");
        auto t = st.get("inputs.timesteps");
        EXPECT_TRUE(
            forward_close(scheduler.add_noise(latents, noise, t), st.get("main.noisy_latents")));

        const bool v            = scheduler.config().prediction_type == "v_prediction";
        const std::string other = v ? "pred_epsilon" : "pred_v_prediction";
        EXPECT_EQ(cfg == "tiny-sd2", v);
        auto velocity = scheduler.get_velocity(latents, noise, t);
        EXPECT_TRUE(forward_close(v ? velocity : noise, st.get("main.target")));
        EXPECT_TRUE(forward_close(v ? noise : velocity, st.get(other + ".target")));

        auto snr = compute_snr(scheduler, t);
        EXPECT_TRUE(golden_close(snr, st.get("snr5.snr"), 0, 1e-5));
        EXPECT_TRUE(golden_close(snr, st.get(other + "_snr5.snr"), 0, 1e-5));
        const auto& own_type  = scheduler.config().prediction_type;
        const auto other_type = v ? "epsilon" : "v_prediction";
        EXPECT_TRUE(golden_close(min_snr_loss_weights(snr, 5.0, own_type),
                                 st.get("snr5.mse_loss_weights"), 1e-7, 1e-5));
        EXPECT_TRUE(golden_close(min_snr_loss_weights(snr, 5.0, other_type),
                                 st.get(other + "_snr5.mse_loss_weights"), 1e-7, 1e-5));
    }
}

TEST(DDPMScheduler, BroadcastsTimesteps) {
    DDPMScheduler scheduler;  // diffusers' defaults: linear 0.0001..0.02, 1000 steps
    auto x0 = torch::randn({2, 3, 4, 4}), n = torch::randn({2, 3, 4, 4});
    // A 0-d timestep applies to the whole batch, as the pipelines pass it.
    auto scalar = scheduler.add_noise(x0, n, torch::tensor(500, torch::kLong));
    auto batch  = scheduler.add_noise(x0, n, torch::tensor({500, 500}, torch::kLong));
    EXPECT_TRUE(scalar.equal(batch));
    // fp64 samples are computed in fp64 from the fp32 alpha_bar.
    auto ac = scheduler.alphas_cumprod()[7].item<double>();
    auto y  = scheduler.add_noise(x0.to(torch::kDouble), n.to(torch::kDouble),
                                  torch::tensor({7, 7}, torch::kLong));
    EXPECT_EQ(y.scalar_type(), torch::kDouble);
    EXPECT_TRUE(golden_close(
        y, std::sqrt(ac) * x0.to(torch::kDouble) + std::sqrt(1 - ac) * n.to(torch::kDouble), 1e-12,
        1e-12));
    EXPECT_THROW(scheduler.add_noise(x0, n, torch::tensor({0, 1000}, torch::kLong)),
                 std::runtime_error);
    EXPECT_THROW(scheduler.add_noise(x0, n, torch::tensor({0.5, 1.0})), std::runtime_error);
    EXPECT_THROW(min_snr_loss_weights(torch::ones({2}), 5.0, "eps"), std::runtime_error);
    EXPECT_THROW(min_snr_loss_weights(torch::ones({2}), 0.0, "epsilon"), std::runtime_error);
}

TEST(SchedulerConfig, DefaultsAndErrors) {
    auto c = SchedulerConfig::from_json(t2i::io::JsonConfig(nlohmann::json::object(), "empty"));
    EXPECT_EQ(c.num_train_timesteps, 1000);
    EXPECT_EQ(c.beta_schedule, "linear");
    EXPECT_TRUE(c.clip_sample);
    EXPECT_TRUE(c.trained_betas.empty());
    EXPECT_EQ(c.timestep_spacing, "leading");
    EXPECT_THROW(SchedulerConfig::from_json(
                     t2i::io::JsonConfig(nlohmann::json{{"prediction_type", "x0"}}, "bad")),
                 std::runtime_error);
    EXPECT_THROW(SchedulerConfig::from_json(
                     t2i::io::JsonConfig(nlohmann::json{{"num_train_timesteps", "many"}}, "bad")),
                 std::runtime_error);
}
