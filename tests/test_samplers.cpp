// Tests: the inference samplers (schedulers/{scheduler,ddim,euler,dpm_solver,pndm,ddpm_sampling})
// against diffusers v0.27.2: golden/<cfg>/sampling.safetensors (DDIM, Euler, DPM-Solver++ 2M runs
// of StableDiffusionPipeline, 4 steps, guidance 7.5) checked step by step WITHOUT the UNet (the
// golden UNet outputs are fed to step()), make_scheduler's from_config default rule, seeded
// determinism of the stochastic samplers and PNDM's schedule.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "io/json_config.h"
#include "io/safetensors.h"
#include "schedulers/ddim.h"
#include "schedulers/ddpm_sampling.h"
#include "schedulers/dpm_solver.h"
#include "schedulers/euler.h"
#include "schedulers/pndm.h"
#include "schedulers/scheduler.h"
#include "test_util.h"
#include "train_golden.h"

using t2i::testing::fixture;
using namespace t2i::schedulers;

namespace {

// The README's sampler tolerance: |diff| <= 5e-6 x (1 + |ref|). Prints the max diff.
::testing::AssertionResult sampler_close(const torch::Tensor& a, const torch::Tensor& e) {
    auto r = t2i::testing::allclose(a, e, 5e-6, 5e-6);
    std::printf("    %s\n", r.message());
    return r;
}

at::Generator cpu_generator(uint64_t seed) {
    return at::make_generator<at::CPUGeneratorImpl>(seed);
}

t2i::io::JsonConfig json_config(nlohmann::json j) {
    return t2i::io::JsonConfig(std::move(j), "<test>");
}

void check_golden_run(const std::string& cfg, const std::string& sampler) {
    SCOPED_TRACE(cfg + " " + sampler);
    const auto info = t2i::testing::read_golden_info(cfg).at("sampling").at("samplers").at(sampler);
    const auto g    = t2i::io::load_safetensors(fixture("golden/" + cfg + "/sampling.safetensors"));
    auto G          = [&](const std::string& k) { return g.at(sampler + "." + k); };
    // The exact config diffusers ran (its _class_name picks the class).
    auto s = make_scheduler("", json_config(info.at("config")));
    s->set_timesteps(4);

    // 1. timesteps exact (same dtype), sigmas, init_noise_sigma.
    ASSERT_EQ(s->timesteps().scalar_type(), G("timesteps").scalar_type());
    EXPECT_TRUE(torch::equal(s->timesteps(), G("timesteps"))) << s->timesteps();
    if (auto* e = dynamic_cast<EulerDiscreteScheduler*>(s.get()))
        EXPECT_TRUE(t2i::testing::allclose(e->sigmas(), G("sigmas"), 1e-9, 1e-6));
    if (auto* d = dynamic_cast<DPMSolverMultistepScheduler*>(s.get()))
        EXPECT_TRUE(t2i::testing::allclose(d->sigmas(), G("sigmas"), 1e-9, 1e-6));
    // A float32 value: the fixtures' torch 1.13 and libtorch 2.x may round it a bit apart.
    EXPECT_FLOAT_EQ(s->init_noise_sigma(), info.at("init_noise_sigma").get<double>());

    // 2. the pipeline's scaled UNet input at step 0 (both CFG halves are the same latents).
    const auto latents0 = g.at("init_latents") * s->init_noise_sigma();  // [1, 4, h, w]
    const auto t0       = s->timesteps()[0];
    auto unet_in        = s->scale_model_input(torch::cat({latents0, latents0}), t0);
    std::printf("  %s %s unet_input_step0:", cfg.c_str(), sampler.c_str());
    EXPECT_TRUE(sampler_close(unet_in, G("unet_input_step0")));

    // 3. per step, from the golden latents before the step and the golden UNet outputs.
    const auto outs = G("unet_outputs");      // [4, 2, 4, h, w]
    const auto ref  = G("latents_per_step");  // [4, 1, 4, h, w]
    for (int64_t k = 0; k < 4; ++k) {
        SCOPED_TRACE("step " + std::to_string(k));
        auto in     = k == 0 ? latents0 : ref[k - 1];
        auto uncond = outs[k].slice(0, 0, 1), cond = outs[k].slice(0, 1, 2);
        auto noise = uncond + 7.5 * (cond - uncond);
        auto out   = s->step(noise, s->timesteps()[k], in);
        std::printf("  %s %s step %lld:", cfg.c_str(), sampler.c_str(), static_cast<long long>(k));
        EXPECT_TRUE(sampler_close(out, ref[k]));
        EXPECT_GT((ref[k] - in).abs().max().item<double>(), 1e-3);  // the step moved the latents
    }

    // 4. the whole chain from init_latents, as the pipeline runs it.
    s->set_timesteps(4);
    auto x = g.at("init_latents") * s->init_noise_sigma();
    for (int64_t k = 0; k < 4; ++k) {
        const auto t = s->timesteps()[k];
        s->scale_model_input(x, t);
        auto uncond = outs[k].slice(0, 0, 1), cond = outs[k].slice(0, 1, 2);
        x = s->step(uncond + 7.5 * (cond - uncond), t, x);
    }
    std::printf("  %s %s chained final:", cfg.c_str(), sampler.c_str());
    EXPECT_TRUE(sampler_close(x, G("final_latents")));
}

}  // namespace

TEST(Samplers, GoldenRunsTinySd1) {
    for (const auto* s : {"ddim", "euler", "dpmsolver_multistep"}) check_golden_run("tiny-sd1", s);
}

TEST(Samplers, GoldenRunsTinySd2VPrediction) {
    for (const auto* s : {"ddim", "euler", "dpmsolver_multistep"}) check_golden_run("tiny-sd2", s);
}

// The model's own DDPM config through from_config gives the configs the golden runs used.
TEST(Samplers, FromDdpmConfigMatchesGoldenConfigs) {
    const auto json = t2i::io::read_json(fixture("tiny-sd1/scheduler/scheduler_config.json"));
    const auto info = t2i::testing::read_golden_info("tiny-sd1").at("sampling").at("samplers");
    // DDIMScheduler.from_config(ddpm_config, set_alpha_to_one=False)
    auto ddim_cfg             = DDIMConfig::from_json(json);
    ddim_cfg.set_alpha_to_one = false;
    DDIMScheduler ddim(ddim_cfg);
    ddim.set_timesteps(4);
    const auto g = t2i::io::load_safetensors(fixture("golden/tiny-sd1/sampling.safetensors"));
    EXPECT_TRUE(torch::equal(ddim.timesteps(), g.at("ddim.timesteps")));
    auto euler = make_scheduler("euler", json);
    euler->set_timesteps(4);
    EXPECT_TRUE(torch::equal(euler->timesteps(), g.at("euler.timesteps")));
    EXPECT_FLOAT_EQ(euler->init_noise_sigma(),
                    info.at("euler").at("init_noise_sigma").get<double>());
    auto dpm = make_scheduler("dpm++2m", json);
    dpm->set_timesteps(4);
    EXPECT_TRUE(torch::equal(dpm->timesteps(), g.at("dpmsolver_multistep.timesteps")));
}

TEST(Samplers, MakeSchedulerNamesAndClasses) {
    const auto json = t2i::io::read_json(fixture("tiny-sd1/scheduler/scheduler_config.json"));
    EXPECT_EQ(make_scheduler("", json)->name(), "ddpm");  // _class_name DDPMScheduler
    EXPECT_NE(dynamic_cast<DDPMSamplingScheduler*>(make_scheduler("", json).get()), nullptr);
    EXPECT_NE(dynamic_cast<DDIMScheduler*>(make_scheduler("ddim", json).get()), nullptr);
    EXPECT_NE(dynamic_cast<PNDMScheduler*>(make_scheduler("pndm", json).get()), nullptr);
    EXPECT_NE(dynamic_cast<EulerDiscreteScheduler*>(make_scheduler("euler", json).get()), nullptr);
    EXPECT_NE(dynamic_cast<EulerAncestralDiscreteScheduler*>(
                  make_scheduler("euler_ancestral", json).get()),
              nullptr);
    for (const auto& n : kSchedulerNames) EXPECT_EQ(make_scheduler(n, json)->name(), n);
    auto karras = make_scheduler("dpm++2m_karras", json);
    EXPECT_TRUE(
        dynamic_cast<DPMSolverMultistepScheduler*>(karras.get())->config().use_karras_sigmas);
    try {
        make_scheduler("heun", json);
        FAIL() << "expected an error";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("dpm++2m_karras"), std::string::npos) << e.what();
    }
    EXPECT_THROW(make_scheduler("", json_config({{"_class_name", "LMSDiscreteScheduler"}})),
                 std::runtime_error);
}

// diffusers' from_config: a key absent from the file takes the TARGET class's default.
TEST(Samplers, FromConfigDefaultRule) {
    const auto bare = json_config({{"_class_name", "DDPMScheduler"}, {"steps_offset", 1}});
    EXPECT_EQ(EulerConfig::from_json(bare).timestep_spacing, "linspace");  // Euler's default
    EXPECT_EQ(DPMSolverConfig::from_json(bare).timestep_spacing, "linspace");
    EXPECT_EQ(DDIMConfig::from_json(bare).timestep_spacing, "leading");
    EXPECT_EQ(PNDMConfig::from_json(bare).timestep_spacing, "leading");
    EXPECT_TRUE(DDIMConfig::from_json(bare).set_alpha_to_one);   // DDIM's default: True
    EXPECT_FALSE(PNDMConfig::from_json(bare).set_alpha_to_one);  // PNDM's default: False
    EXPECT_EQ(DDIMConfig::from_json(bare).steps_offset, 1);      // present keys win
    // The tiny-sd1 DDPM file has timestep_spacing but no Euler-only keys.
    const auto json = t2i::io::read_json(fixture("tiny-sd1/scheduler/scheduler_config.json"));
    const auto e    = EulerConfig::from_json(json);
    EXPECT_EQ(e.timestep_spacing, "leading");
    EXPECT_EQ(e.interpolation_type, "linear");
    EXPECT_FALSE(e.use_karras_sigmas);
    EXPECT_FALSE(e.sigma_min.has_value());
    EXPECT_EQ(e.beta_schedule, "scaled_linear");
    const auto d = DPMSolverConfig::from_json(json);
    EXPECT_EQ(d.algorithm_type, "dpmsolver++");
    EXPECT_EQ(d.solver_order, 2);
    EXPECT_TRUE(d.lower_order_final);
    EXPECT_EQ(d.final_sigmas_type, "zero");
    EXPECT_FALSE(PNDMConfig::from_json(json).skip_prk_steps);
    EXPECT_FALSE(DDIMConfig::from_json(json).clip_sample);  // the file says false
    EXPECT_TRUE(DDIMConfig::from_json(bare).clip_sample);   // DDIM's default
    // Linspace spacing (Euler's default) at 4 steps: linspace(0, 999, 4)[::-1].
    EulerDiscreteScheduler euler(EulerConfig::from_json(bare));
    euler.set_timesteps(4);
    EXPECT_TRUE(torch::equal(euler.timesteps(), torch::tensor({999.f, 666.f, 333.f, 0.f})));
    EXPECT_FLOAT_EQ(euler.init_noise_sigma(), euler.sigmas()[0].item<float>());  // no sqrt(s^2+1)
}

// Few steps, as diffusers' slicing gives them: skip_prk_steps with one step is [t0] (with
// leading spacing and steps_offset 1 as SD 1.5: t0 = 1); PRK needs 4 steps (diffusers fails in
// np.tile below that), an error naming the flag instead of a read out of bounds.
TEST(Samplers, PndmWithFewStepsFollowsNumpySlicing) {
    PNDMConfig c;
    c.skip_prk_steps = true;
    c.steps_offset   = 1;
    PNDMScheduler one(c);
    one.set_timesteps(1);
    EXPECT_TRUE(torch::equal(one.timesteps(), torch::tensor({int64_t(1)})));
    one.set_timesteps(2);  // _t = [1, 501]: [1] + [1] + [501], reversed
    EXPECT_TRUE(
        torch::equal(one.timesteps(), torch::tensor({int64_t(501), int64_t(1), int64_t(1)})));
    c.skip_prk_steps = false;
    PNDMScheduler prk(c);
    t2i::testing::expect_error([&] { prk.set_timesteps(3); },
                               {"at least 4", "--num_inference_steps"});
}

namespace {

// One step of a stochastic sampler from fixed inputs with a seeded CPU generator.
torch::Tensor one_step(Scheduler& s, at::Generator* gen) {
    s.set_timesteps(4);
    auto t      = s.timesteps()[1];
    auto sample = torch::linspace(-1, 1, 2 * 4 * 8 * 8).reshape({2, 4, 8, 8});
    auto eps    = torch::cos(sample * 3);
    s.scale_model_input(sample, t);
    return s.step(eps, t, sample, gen);
}

void check_seeded(const std::string& name) {
    SCOPED_TRACE(name);
    const auto json = t2i::io::read_json(fixture("tiny-sd1/scheduler/scheduler_config.json"));
    auto s          = make_scheduler(name, json);
    auto g1 = cpu_generator(42), g2 = cpu_generator(42), g3 = cpu_generator(43);
    auto a = one_step(*s, &g1), b = one_step(*s, &g2), c = one_step(*s, &g3);
    EXPECT_TRUE(torch::equal(a, b));
    EXPECT_GT((a - c).abs().max().item<double>(), 1e-3);
    // The noise came from the generator: it advanced by exactly one [2, 4, 8, 8] draw.
    auto g4 = cpu_generator(42);
    torch::randn({2, 4, 8, 8}, g4);
    EXPECT_TRUE(torch::equal(torch::randn({3}, g1), torch::randn({3}, g4)));
}

}  // namespace

TEST(Samplers, SeededStochasticSamplersAreDeterministic) {
    check_seeded("euler_ancestral");
    check_seeded("ddpm");
}

// Euler ancestral = the deterministic step to sigma_down plus sigma_up x randn(generator).
TEST(Samplers, EulerAncestralNoiseIsTheGeneratorsRandn) {
    const auto json = t2i::io::read_json(fixture("tiny-sd1/scheduler/scheduler_config.json"));
    EulerAncestralDiscreteScheduler s(EulerAncestralConfig::from_json(json));
    auto gen      = cpu_generator(7);
    auto out      = one_step(s, &gen);
    auto ref      = cpu_generator(7);
    auto z        = torch::randn({2, 4, 8, 8}, ref);
    const auto sf = s.sigmas()[1].item<double>(), st = s.sigmas()[2].item<double>();
    const double up   = std::sqrt(st * st * (sf * sf - st * st) / (sf * sf));
    const double down = std::sqrt(st * st - up * up);
    auto sample       = torch::linspace(-1, 1, 2 * 4 * 8 * 8).reshape({2, 4, 8, 8});
    auto eps          = torch::cos(sample * 3);
    auto expect = sample + eps * (down - sf) + z * up;  // derivative = eps for epsilon prediction
    EXPECT_TRUE(t2i::testing::allclose(out, expect, 1e-5, 1e-5));
}

TEST(Samplers, DdimEtaUsesGenerator) {
    const auto json = t2i::io::read_json(fixture("tiny-sd1/scheduler/scheduler_config.json"));
    DDIMScheduler s(DDIMConfig::from_json(json), /*eta=*/1.0);
    auto g1 = cpu_generator(1), g2 = cpu_generator(1), g3 = cpu_generator(2);
    auto a = one_step(s, &g1), b = one_step(s, &g2), c = one_step(s, &g3);
    EXPECT_TRUE(torch::equal(a, b));
    EXPECT_GT((a - c).abs().max().item<double>(), 1e-3);
    DDIMScheduler s0(DDIMConfig::from_json(json));  // eta 0: deterministic, generator unused
    auto g4 = cpu_generator(1);
    EXPECT_TRUE(torch::equal(one_step(s0, &g4), one_step(s0, nullptr)));
}

// SD 1.5's scheduler_config.json (PNDMScheduler, skip_prk_steps true, steps_offset 1) at 50 steps.
// Derivation from scheduling_pndm.py set_timesteps, "leading" spacing:
//   step_ratio = 1000 // 50 = 20; _timesteps = arange(0, 50) * 20 + 1 = [1, 21, ..., 961, 981]
//   skip_prk_steps: plms = concat(_t[:-1], _t[-2:-1], _t[-1:])[::-1]
//                        = [981, 961, 961, 941, 921, ..., 41, 21, 1]   (51 entries: 961 twice)
// diffusers' known list for SD 1.5 at 50 steps starts 981, 961, 961, 941 and ends 41, 21, 1.
TEST(Samplers, PndmTimestepsSd15) {
    auto json = json_config({{"_class_name", "PNDMScheduler"},
                             {"beta_start", 0.00085},
                             {"beta_end", 0.012},
                             {"beta_schedule", "scaled_linear"},
                             {"num_train_timesteps", 1000},
                             {"set_alpha_to_one", false},
                             {"skip_prk_steps", true},
                             {"steps_offset", 1},
                             {"trained_betas", nullptr},
                             {"clip_sample", false}});
    auto s    = make_scheduler("", json);
    EXPECT_EQ(s->name(), "pndm");
    s->set_timesteps(50);
    std::vector<int64_t> expect = {981, 961};
    for (int64_t t = 961; t >= 1; t -= 20) expect.push_back(t);
    ASSERT_EQ(expect.size(), 51u);
    EXPECT_TRUE(torch::equal(s->timesteps(), torch::tensor(expect, torch::kInt64)))
        << s->timesteps();

    // Without skip_prk_steps: 12 PRK entries from the last 4 base timesteps (+ T//S//2 = 10),
    //   x = [921, 931, 941, 951, 961, 971, 981, 991]; prk = x[:-1].repeat(2)[1:-1][::-1]
    //     = [981, 971, 971, 961, 961, 951, 951, 941, 941, 931, 931, 921],
    // then PLMS on _t[:-3][::-1] = [921, 901, ..., 1] (47 entries).
    PNDMConfig prk     = PNDMConfig::from_json(json);
    prk.skip_prk_steps = false;
    PNDMScheduler p(prk);
    p.set_timesteps(50);
    std::vector<int64_t> e2 = {981, 971, 971, 961, 961, 951, 951, 941, 941, 931, 931, 921};
    for (int64_t t = 921; t >= 1; t -= 20) e2.push_back(t);
    EXPECT_TRUE(torch::equal(p.timesteps(), torch::tensor(e2, torch::kInt64))) << p.timesteps();
}

// PNDM and DDPM on a clean x_0 with the exact epsilon: each step must land on the forward
// process at the previous timestep (PNDM: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps).
TEST(Samplers, PndmExactEpsilonStaysOnTheForwardProcess) {
    const auto json = t2i::io::read_json(fixture("tiny-sd1/scheduler/scheduler_config.json"));
    for (bool skip : {true, false}) {
        auto c           = PNDMConfig::from_json(json);
        c.skip_prk_steps = skip;
        PNDMScheduler s(c);
        s.set_timesteps(10);
        auto x0  = torch::linspace(-1, 1, 64).reshape({1, 1, 8, 8});
        auto eps = torch::sin(x0 * 5);
        DDIMScheduler ref(DDIMConfig::from_json(json));
        const auto& ac = ref.alphas_cumprod();
        auto t0        = s.timesteps()[0].item<int64_t>();
        auto x         = ac[t0].sqrt() * x0 + (1 - ac[t0]).sqrt() * eps;
        for (int64_t k = 0; k < s.timesteps().size(0); ++k) x = s.step(eps, s.timesteps()[k], x);
        // The last step goes to alpha_bar_0 (set_alpha_to_one false).
        auto expect = ac[0].sqrt() * x0 + (1 - ac[0]).sqrt() * eps;
        EXPECT_TRUE(t2i::testing::allclose(x, expect, 1e-4, 1e-4)) << "skip_prk_steps " << skip;
    }
}

// Karras sigmas (use_karras_sigmas) on tiny-sd1's config at 4 steps. Expected values computed
// by a transcription of diffusers v0.27.2's _convert_to_karras / _sigma_to_t into plain Python
// on the golden scaled_linear alphas_cumprod (float32 sigmas and log sigmas, float64 ramps):
//   Euler: range [sigma(t=1), sigma(t=751)] (its interpolated ends), timesteps not rounded;
//   DPM:   range [sigma(0), sigma(999)] (the whole training range), timesteps rounded.
TEST(Samplers, KarrasSigmas) {
    const auto json      = t2i::io::read_json(fixture("tiny-sd1/scheduler/scheduler_config.json"));
    auto ec              = EulerConfig::from_json(json);
    ec.use_karras_sigmas = true;
    EulerDiscreteScheduler euler(ec);
    euler.set_timesteps(4);
    EXPECT_TRUE(
        t2i::testing::allclose(euler.sigmas(),
                               torch::tensor({4.116697788238525f, 1.208777666091919f,
                                              0.27338719367980957f, 0.04131447896361351f, 0.f}),
                               1e-9, 1e-6));
    EXPECT_TRUE(t2i::testing::allclose(
        euler.timesteps(), torch::tensor({751.0f, 411.4153747558594f, 69.40315246582031f, 1.0f}), 0,
        1e-6));
    auto dpm = make_scheduler("dpm++2m_karras", json);
    dpm->set_timesteps(4);
    EXPECT_TRUE(torch::equal(dpm->timesteps(), torch::tensor({999, 687, 146, 0}, torch::kInt64)))
        << dpm->timesteps();
    EXPECT_TRUE(
        t2i::testing::allclose(dynamic_cast<DPMSolverMultistepScheduler*>(dpm.get())->sigmas(),
                               torch::tensor({14.614645004272461f, 3.1686108112335205f,
                                              0.44692087173461914f, 0.029167532920837402f, 0.f}),
                               1e-9, 1e-6));
    // A full 4-step run stays finite (sigma 0 at the end: lambda = +inf is handled).
    auto x = torch::ones({1, 4, 4, 4}) * dpm->init_noise_sigma();
    for (int64_t k = 0; k < 4; ++k) x = dpm->step(x * 0.1, dpm->timesteps()[k], x);
    EXPECT_TRUE(torch::isfinite(x).all().item<bool>());
}

// DDPM posterior step (eq. 7) on the forward process with the exact epsilon: at the last step
// (t = 1 -> alpha_bar_prev = 1) the variance clamps to 1e-20 and the result is x_0 itself; DDIM
// (eta 0) lands exactly on the forward process at every step.
TEST(Samplers, DdpmAndDdimWithExactEpsilon) {
    const auto json = t2i::io::read_json(fixture("tiny-sd1/scheduler/scheduler_config.json"));
    DDPMSamplingScheduler ddpm(SchedulerConfig::from_json(json));
    ddpm.set_timesteps(4);
    EXPECT_TRUE(torch::equal(ddpm.timesteps(), torch::tensor({751, 501, 251, 1}, torch::kInt64)));
    const auto& ac = ddpm.ddpm().alphas_cumprod();
    auto x0        = torch::linspace(-1, 1, 64).reshape({1, 1, 8, 8});
    auto eps       = torch::sin(x0 * 5);
    auto noisy     = [&](int64_t t) { return ac[t].sqrt() * x0 + (1 - ac[t]).sqrt() * eps; };
    auto gen       = cpu_generator(3);
    auto out       = ddpm.step(eps, ddpm.timesteps()[3], noisy(1), &gen);
    EXPECT_TRUE(t2i::testing::allclose(out, x0, 1e-5, 1e-5));
    DDIMScheduler ddim(DDIMConfig::from_json(json));  // set_alpha_to_one: DDIM default true
    ddim.set_timesteps(4);
    for (int64_t k = 0; k < 3; ++k) {
        const int64_t t = ddim.timesteps()[k].item<int64_t>();
        auto prev       = ddim.step(eps, ddim.timesteps()[k], noisy(t));
        EXPECT_TRUE(t2i::testing::allclose(prev, noisy(t - 250), 1e-5, 1e-5)) << "t " << t;
    }
    EXPECT_TRUE(t2i::testing::allclose(ddim.step(eps, ddim.timesteps()[3], noisy(1)), x0, 1e-5,
                                       1e-5));  // final alpha_bar = 1
}

// Dynamic thresholding: s = clamp(quantile(|x|, 0.995), 1, max); |x| sorted [0.1, 0.5, 2, 3]
// gives quantile 2 + 0.985 x (3 - 2) = 2.985 -> s = 1.5; x = clamp(x, -s, s) / s.
TEST(Samplers, ThresholdSample) {
    auto x = torch::tensor({0.5f, -3.f, 2.f, 0.1f}).reshape({1, 1, 2, 2});
    auto y = threshold_sample(x, 0.995, 1.5);
    EXPECT_TRUE(t2i::testing::allclose(
        y, torch::tensor({0.5f / 1.5f, -1.f, 1.f, 0.1f / 1.5f}).reshape({1, 1, 2, 2}), 1e-7, 1e-6));
    // s is clamped to at least 1: small samples are left alone.
    auto small = torch::tensor({0.5f, -0.2f}).reshape({1, 2});
    EXPECT_TRUE(torch::equal(threshold_sample(small, 0.995, 1.5), small));
}
