// Tests: gradient checkpointing (util/activation_checkpoint.h, UNet2DConditionModel::
// enable_gradient_checkpointing), autocast mixed precision (util/autocast.h,
// models/normalization.h), whole-model bf16 VAE / text encoder, and GradScaler's update rule
// (util/grad_scaler.h, torch.cuda.amp.GradScaler semantics).
#include <gtest/gtest.h>

#include <cfloat>
#include <set>

#include "io/json_config.h"
#include "pipeline/model_dir.h"
#include "test_util.h"
#include "util/activation_checkpoint.h"
#include "util/autocast.h"
#include "util/grad_scaler.h"

namespace t2i {
namespace {

using testing::fixture;

// ---- helpers ------------------------------------------------------------------------------------

struct UNetInputs {
    torch::Tensor sample, timesteps, encoder_hidden_states;
};

UNetInputs golden_unet_inputs(const std::string& cfg) {
    io::SafetensorsFile golden(fixture("golden/" + cfg + "/unet.safetensors"));
    return {golden.get("sample"), golden.get("timesteps"), golden.get("encoder_hidden_states")};
}

// Runs loss = unet(...).float().pow(2).mean() and backward (outside autocast, as training does);
// returns every parameter's gradient by name plus the input gradients, and clears .grad.
std::map<std::string, torch::Tensor> unet_gradients(models::UNet2DConditionModel& unet,
                                                    const UNetInputs& in,
                                                    torch::ScalarType autocast_dtype) {
    auto sample = in.sample.clone().requires_grad_(true);
    auto ehs    = in.encoder_hidden_states.clone().requires_grad_(true);
    torch::Tensor out;
    {
        AutocastGuard autocast(torch::kCPU, autocast_dtype);
        out = unet->forward(sample, in.timesteps, ehs);
    }
    out.to(torch::kFloat32).pow(2).mean().backward();
    std::map<std::string, torch::Tensor> grads;
    for (auto& p : unet->named_parameters()) {
        grads[p.key()]           = p.value().grad().clone();
        p.value().mutable_grad() = torch::Tensor();
    }
    grads["<output>"]                = out.detach().to(torch::kFloat32);
    grads["<sample>"]                = sample.grad();
    grads["<encoder_hidden_states>"] = ehs.grad();
    return grads;
}

// Names of the autograd nodes reachable from `t`'s grad_fn, with multiplicity.
std::multiset<std::string> graph_node_names(const torch::Tensor& t) {
    std::multiset<std::string> names;
    std::set<torch::autograd::Node*> seen;
    std::vector<torch::autograd::Node*> todo{t.grad_fn().get()};
    while (!todo.empty()) {
        auto* node = todo.back();
        todo.pop_back();
        if (!node || !seen.insert(node).second) continue;
        names.insert(node->name());
        for (const auto& e : node->next_edges()) todo.push_back(e.function.get());
    }
    return names;
}

size_t count_containing(const std::multiset<std::string>& names, const std::string& part) {
    size_t n = 0;
    for (const auto& s : names) n += s.find(part) != std::string::npos;
    return n;
}

// Checkpointed vs plain gradients. The recomputation runs the same ops on the same values, but
// tensors feeding several consumers (skip connections, temb, encoder_hidden_states) receive
// their gradient contributions in another order, so sums round differently: measured worst
// |diff| / (max |grad| + model max / 10) = 4e-7 in fp32. Gradients that are analytically zero
// (GroupNorm groups of one channel make the preceding bias' gradient vanish) are pure rounding
// noise of ~1e-9, hence the floor relative to the largest gradient of the model.
void expect_gradients_match(const std::map<std::string, torch::Tensor>& actual,
                            const std::map<std::string, torch::Tensor>& expected, double rel) {
    ASSERT_EQ(actual.size(), expected.size());
    double model_max = 0;  // over parameter gradients
    for (const auto& [name, g] : expected)
        if (name[0] != '<') model_max = std::max(model_max, g.abs().max().item<double>());
    double worst = 0;
    std::string worst_name;
    for (const auto& [name, g] : expected) {
        ASSERT_TRUE(actual.at(name).defined()) << name;
        const double scale = g.abs().max().item<double>() + model_max / 10;
        const double err   = (actual.at(name) - g).abs().max().item<double>() / scale;
        EXPECT_LE(err, rel) << name;
        if (err > worst) worst = err, worst_name = name;
    }
    std::printf(
        "[ checkpointed vs plain ] worst |diff| / (max |grad| + model max / 10): %.2e (%s)\n",
        worst, worst_name.c_str());
}

// max |a - b| / max |b|: one number for "how far is the reduced-precision result".
double max_rel_error(const torch::Tensor& a, const torch::Tensor& b) {
    auto a64 = a.detach().to(torch::kFloat64), b64 = b.detach().to(torch::kFloat64);
    return ((a64 - b64).abs().max() / b64.abs().max()).item<double>();
}

// ---- gradient checkpointing -------------------------------------------------------------------

class CheckpointingGolden : public ::testing::TestWithParam<std::string> {};

// Checkpointing recomputes the same ops on the same values, so gradients agree to float
// rounding at most (they come out bit-identical on this CPU build).
TEST_P(CheckpointingGolden, UNetGradientsEqualPlainBackward) {
    const std::string cfg = GetParam();
    auto unet             = pipeline::load_unet(fixture(cfg + "/unet"), {});
    unet->train();
    const auto in = golden_unet_inputs(cfg);

    const auto plain = unet_gradients(unet, in, torch::kFloat32);
    EXPECT_FALSE(unet->is_gradient_checkpointing());
    unet->enable_gradient_checkpointing();
    EXPECT_TRUE(unet->is_gradient_checkpointing());
    const auto ckpt = unet_gradients(unet, in, torch::kFloat32);
    expect_gradients_match(ckpt, plain, 1e-5);
}

TEST_P(CheckpointingGolden, CheckpointsEveryResnetAndTransformerOnlyWhenTraining) {
    const std::string cfg = GetParam();
    auto unet             = pipeline::load_unet(fixture(cfg + "/unet"), {});
    const auto in         = golden_unet_inputs(cfg);
    size_t expected       = 0;  // all resnets and Transformer2DModels sit inside the blocks
    for (const auto& m : unet->modules(/*include_self=*/false))
        expected += m->as<models::ResnetBlock2D>() || m->as<models::Transformer2DModel>();
    ASSERT_GT(expected, 0u);
    auto count = [&] {
        auto out = unet->forward(in.sample, in.timesteps, in.encoder_hidden_states);
        return count_containing(graph_node_names(out), "CheckpointFunction");
    };
    unet->enable_gradient_checkpointing();
    unet->train();
    EXPECT_EQ(count(), expected);
    unet->eval();  // diffusers: `if self.training and self.gradient_checkpointing`
    EXPECT_EQ(count(), 0u);
    unet->train();
    unet->enable_gradient_checkpointing(false);
    EXPECT_EQ(count(), 0u);
    unet->enable_gradient_checkpointing(true);
    torch::NoGradGuard no_grad;  // no graph at all: the plain forward runs
    auto out = unet->forward(in.sample, in.timesteps, in.encoder_hidden_states);
    EXPECT_FALSE(out.requires_grad());
}

// Dropout inside a checkpointed UNet: the recomputation must draw the same masks.
TEST_P(CheckpointingGolden, UNetWithDropoutGradientsEqualPlainBackward) {
    const std::string cfg = GetParam();
    auto config =
        models::UNet2DConditionConfig::from_json(io::read_json(fixture(cfg + "/unet/config.json")));
    config.dropout = 0.3;
    torch::manual_seed(0);
    models::UNet2DConditionModel unet(config);
    unet->train();
    const auto in = golden_unet_inputs(cfg);

    torch::manual_seed(7);
    const auto plain     = unet_gradients(unet, in, torch::kFloat32);
    const auto rng_plain = torch::rand({4});  // where the global stream stands afterwards
    unet->enable_gradient_checkpointing();
    torch::manual_seed(7);
    const auto ckpt     = unet_gradients(unet, in, torch::kFloat32);
    const auto rng_ckpt = torch::rand({4});

    expect_gradients_match(ckpt, plain, 1e-5);
    // torch.random.fork_rng semantics: the recomputation does not advance the stream.
    EXPECT_TRUE(torch::equal(rng_plain, rng_ckpt));
    // And the masks were really random: another seed gives other gradients.
    torch::manual_seed(8);
    const auto other = unet_gradients(unet, in, torch::kFloat32);
    EXPECT_FALSE(torch::allclose(other.at("<output>"), plain.at("<output>")));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CheckpointingGolden, ::testing::Values("tiny-sd1", "tiny-sd2"));

// The RNG replay on its own: dropout between two linears, inputs and parameters both needing
// grad, one input undefined (passed through), and a parameter-free second use.
TEST(Checkpoint, ReplaysRngAndRoutesParameterGradients) {
    torch::manual_seed(0);
    torch::nn::Linear fc1(6, 16), fc2(16, 3);
    torch::nn::Dropout drop(0.5);
    auto fn = [&](const std::vector<torch::Tensor>& in) {
        EXPECT_FALSE(in[1].defined());
        return fc2(drop(torch::relu(fc1(in[0]))));
    };
    std::vector<torch::Tensor> params = fc1->parameters();
    for (const auto& p : fc2->parameters()) params.push_back(p);
    const auto x0 = torch::randn({5, 6});

    auto run = [&](bool ckpt) {
        auto x = x0.clone().requires_grad_(true);
        torch::manual_seed(123);
        auto y = ckpt ? checkpoint(fn, {x, torch::Tensor()}, params) : fn({x, torch::Tensor()});
        (y * y).sum().backward();
        std::vector<torch::Tensor> grads{y.detach(), x.grad(), torch::rand({3})};
        for (auto& p : params) {
            grads.push_back(p.grad().clone());
            p.mutable_grad() = torch::Tensor();
        }
        return grads;
    };
    const auto plain = run(false), ckpt = run(true);
    ASSERT_EQ(plain.size(), ckpt.size());
    for (size_t i = 0; i < plain.size(); ++i)
        EXPECT_TRUE(torch::equal(plain[i], ckpt[i])) << "entry " << i;
    // The dropout really fired (some activations zeroed), so a wrong mask would show.
    EXPECT_GT((plain[0] != fn({x0, torch::Tensor()}).detach()).sum().item<int64_t>(), 0);
}

// backward runs outside the autocast guard, as in training; the recomputation must still see
// the forward's autocast state.
TEST(Checkpoint, ReplaysAutocastState) {
    torch::nn::Linear fc(4, 4);
    std::vector<torch::ScalarType> seen;
    auto fn = [&](const std::vector<torch::Tensor>& in) {
        auto h = fc(in[0]);
        seen.push_back(h.scalar_type());
        return h.to(torch::kFloat32).sum(-1);
    };
    torch::Tensor y;
    {
        AutocastGuard autocast(torch::kCPU, torch::kBFloat16);
        y = checkpoint(fn, {torch::randn({2, 4})}, fc->parameters());
    }
    y.sum().backward();
    ASSERT_EQ(seen.size(), 2u);  // forward, recomputation
    EXPECT_EQ(seen[0], torch::kBFloat16);
    EXPECT_EQ(seen[1], torch::kBFloat16);
    EXPECT_FALSE(autocast_state().cpu_enabled);
    EXPECT_EQ(fc->weight.grad().scalar_type(), torch::kFloat32);
}

TEST(Checkpoint, GradientsAccumulateAcrossCalls) {
    torch::nn::Linear fc(4, 4);
    auto fn      = [&](const std::vector<torch::Tensor>& in) { return fc(in[0]).tanh(); };
    const auto x = torch::randn({2, 4});
    for (int i = 0; i < 2; ++i) checkpoint(fn, {x}, fc->parameters()).sum().backward();
    const auto accumulated    = fc->weight.grad().clone();
    fc->weight.mutable_grad() = torch::Tensor();
    fn({x}).sum().backward();
    EXPECT_TRUE(torch::allclose(accumulated, 2 * fc->weight.grad()));
}

// ---- autocast ---------------------------------------------------------------------------------

TEST(Autocast, GuardSetsAndRestoresState) {
    const auto before = autocast_state();
    ASSERT_FALSE(before.cpu_enabled);
    {
        AutocastGuard fp32(torch::kCPU, torch::kFloat32);  // --mixed_precision no: nothing
        EXPECT_FALSE(autocast_state().cpu_enabled);
    }
    {
        AutocastGuard outer(torch::kCPU, torch::kBFloat16);
        EXPECT_TRUE(autocast_state().cpu_enabled);
        EXPECT_EQ(autocast_state().cpu_dtype, torch::kBFloat16);
        EXPECT_FALSE(autocast_state().cuda_enabled);
        {
            AutocastGuard inner(autocast_state());
            EXPECT_TRUE(autocast_state().cpu_enabled);
        }
        EXPECT_TRUE(autocast_state().cpu_enabled);
        torch::nn::Linear fc(4, 4);
        EXPECT_EQ(fc(torch::randn({2, 4})).scalar_type(), torch::kBFloat16);
    }
    EXPECT_FALSE(autocast_state().cpu_enabled);
    EXPECT_EQ(autocast_state().cpu_dtype, before.cpu_dtype);
    EXPECT_THROW(AutocastGuard(torch::kCPU, torch::kHalf), std::runtime_error);
    EXPECT_THROW(AutocastGuard(torch::kCPU, torch::kFloat64), std::runtime_error);
}

TEST(Autocast, NormsRunInFp32OnReducedPrecisionInputs) {
    models::AutocastGroupNorm gn(torch::nn::GroupNormOptions(2, 8));
    models::AutocastLayerNorm ln(torch::nn::LayerNormOptions({8}));
    const auto x = torch::randn({2, 8, 3, 3});
    // fp32 input: the stock torch::nn forward, bit for bit.
    EXPECT_TRUE(torch::equal(gn(x), torch::nn::GroupNormImpl(gn->options).forward(x)));
    // bf16 input, fp32 weights (autocast): computed and returned in fp32, like CUDA autocast.
    const auto xb = x.to(torch::kBFloat16);
    auto y        = gn(xb);
    EXPECT_EQ(y.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::equal(y, gn(xb.to(torch::kFloat32))));
    auto z = ln(xb.permute({0, 2, 3, 1}));
    EXPECT_EQ(z.scalar_type(), torch::kFloat32);
    // Whole module in bf16: fp32 statistics, bf16 out.
    gn->to(torch::kBFloat16);
    auto w = gn(xb);
    EXPECT_EQ(w.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(torch::equal(w, y.to(torch::kBFloat16)));  // weights 1 / 0: exact in bf16
}

class MixedPrecisionGolden : public ::testing::TestWithParam<std::string> {};

// bf16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3 per op) and the errors compound
// over the UNet's ~40 matmuls / convs. Measured max |out_bf16 - out_fp32| / max |out_fp32|:
// tiny-sd1 1.1e-2, tiny-sd2 1.6e-2; bound 3e-2 (a norm or softmax run in bf16 statistics, or a
// missed cast, gives > 1e-1).
constexpr double kBf16UNetOutputTol = 3e-2;
// Gradients carry the forward's error through the backward as well: worst parameter measured
// 7.1e-2 (a small norm weight gradient), bound 2e-1; the cosine similarity per parameter
// (measured >= 0.9984) is the sharper check, which a dtype bug breaks completely.
constexpr double kBf16UNetGradTol = 2e-1;
constexpr double kBf16UNetGradCos = 0.995;

TEST_P(MixedPrecisionGolden, UNetBf16AutocastCloseToFp32WithFp32Gradients) {
    const std::string cfg = GetParam();
    auto unet             = pipeline::load_unet(fixture(cfg + "/unet"), {});
    unet->train();
    const auto in   = golden_unet_inputs(cfg);
    const auto fp32 = unet_gradients(unet, in, torch::kFloat32);
    const auto bf16 = unet_gradients(unet, in, torch::kBFloat16);

    const double out_err = max_rel_error(bf16.at("<output>"), fp32.at("<output>"));
    EXPECT_LT(out_err, kBf16UNetOutputTol);
    double worst_grad = 0, worst_cos = 1;
    std::string worst_name;
    for (auto& p : unet->named_parameters()) {
        const auto& g = bf16.at(p.key());
        ASSERT_TRUE(g.defined()) << p.key();
        EXPECT_EQ(g.scalar_type(), torch::kFloat32) << p.key();  // fp32 master gradients
        const auto& ref = fp32.at(p.key());
        if (ref.abs().max().item<double>() < 1e-6) continue;  // analytically ~zero gradients
        const double e   = max_rel_error(g, ref);
        const double cos = torch::cosine_similarity(g.flatten(), ref.flatten(), 0).item<double>();
        if (e > worst_grad) worst_grad = e, worst_name = p.key();
        worst_cos = std::min(worst_cos, cos);
    }
    std::printf(
        "[ %s ] bf16 autocast: output rel err %.2e, worst grad rel err %.2e (%s), "
        "min grad cosine %.5f\n",
        cfg.c_str(), out_err, worst_grad, worst_name.c_str(), worst_cos);
    EXPECT_LT(worst_grad, kBf16UNetGradTol) << worst_name;
    EXPECT_GT(worst_cos, kBf16UNetGradCos);
}

// Checkpointing replays the forward's autocast state in backward, so bf16 + checkpointing
// gives the gradients of bf16 alone, up to rounding: the reordered fp32 sums (see
// expect_gradients_match) now feed bf16 casts, and one fp32 ulp can flip a bf16 rounding
// (2^-9 = 2e-3 relative). Measured worst 3e-3; bound 1e-2. (A recompute in fp32 would still be
// close; ReplaysAutocastState below checks the dtype directly.)
TEST_P(MixedPrecisionGolden, CheckpointingUnderAutocastMatchesAutocast) {
    const std::string cfg = GetParam();
    auto unet             = pipeline::load_unet(fixture(cfg + "/unet"), {});
    unet->train();
    const auto in    = golden_unet_inputs(cfg);
    const auto plain = unet_gradients(unet, in, torch::kBFloat16);
    unet->enable_gradient_checkpointing();
    const auto ckpt = unet_gradients(unet, in, torch::kBFloat16);
    expect_gradients_match(ckpt, plain, 1e-2);
}

// A model cast entirely to bf16 (how train_text_to_image.py holds the frozen VAE and text
// encoder under --mixed_precision bf16). bf16 rounding of every weight and activation, norms
// in fp32 (with libtorch 1.13's native bf16 norm kernels the VAE was off by 13-18%): measured
// max rel error VAE 2.3e-2, text encoder 1.5e-2; bound 5e-2.
constexpr double kBf16ModelTol = 5e-2;

TEST_P(MixedPrecisionGolden, VaeInBf16CloseToFp32) {
    const std::string cfg = GetParam();
    io::SafetensorsFile golden(fixture("golden/" + cfg + "/vae.safetensors"));
    pipeline::LoadOptions bf16;
    bf16.dtype = torch::kBFloat16;
    auto vae   = pipeline::load_vae(fixture(cfg + "/vae"), bf16);
    torch::NoGradGuard no_grad;
    const auto x    = golden.get("pixel_values").to(torch::kBFloat16);
    const auto dist = vae->encode(x);
    EXPECT_EQ(dist.mean.scalar_type(), torch::kBFloat16);
    const double enc_err = max_rel_error(dist.mean, golden.get("latent_dist.mean"));
    const auto dec       = vae->decode(golden.get("decode_input").to(torch::kBFloat16));
    const double dec_err = max_rel_error(dec, golden.get("decode_output"));
    std::printf("[ %s ] bf16 VAE: encode mean rel err %.2e, decode rel err %.2e\n", cfg.c_str(),
                enc_err, dec_err);
    EXPECT_LT(enc_err, kBf16ModelTol);
    EXPECT_LT(dec_err, kBf16ModelTol);
}

TEST_P(MixedPrecisionGolden, TextEncoderInBf16CloseToFp32) {
    const std::string cfg = GetParam();
    io::SafetensorsFile golden(fixture("golden/" + cfg + "/text_encoder.safetensors"));
    pipeline::LoadOptions bf16;
    bf16.dtype        = torch::kBFloat16;
    auto text_encoder = pipeline::load_text_encoder(fixture(cfg + "/text_encoder"), bf16);
    torch::NoGradGuard no_grad;
    const auto out = text_encoder->forward(golden.get("input_ids"));
    EXPECT_EQ(out.last_hidden_state.scalar_type(), torch::kBFloat16);
    const double err = max_rel_error(out.last_hidden_state, golden.get("last_hidden_state"));
    std::printf("[ %s ] bf16 text encoder: last_hidden_state rel err %.2e\n", cfg.c_str(), err);
    EXPECT_LT(err, kBf16ModelTol);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MixedPrecisionGolden, ::testing::Values("tiny-sd1", "tiny-sd2"));

// ---- GradScaler -------------------------------------------------------------------------------

std::vector<torch::Tensor> params_with_grads(std::vector<std::vector<float>> grads) {
    std::vector<torch::Tensor> params;
    for (const auto& g : grads) {
        auto p           = torch::zeros({static_cast<int64_t>(g.size())}).requires_grad_(true);
        p.mutable_grad() = torch::tensor(g);
        params.push_back(p);
    }
    return params;
}

TEST(GradScaler, ScalesAndUnscalesWithTorchDefaults) {
    GradScaler scaler;
    EXPECT_EQ(scaler.get_scale(), 65536.0);
    const auto loss = torch::tensor(0.25f);
    EXPECT_EQ(scaler.scale(loss).item<float>(), 0.25f * 65536.0f);
    auto params = params_with_grads({{65536.0f, -131072.0f}, {32768.0f}});
    params.push_back(torch::zeros({2}).requires_grad_(true));  // no .grad: skipped
    scaler.unscale_(params);
    EXPECT_FALSE(scaler.found_inf());
    EXPECT_TRUE(torch::equal(params[0].grad(), torch::tensor({1.0f, -2.0f})));
    EXPECT_TRUE(torch::equal(params[1].grad(), torch::tensor({0.5f})));
    EXPECT_THROW(scaler.unscale_(params), std::logic_error);  // once per update()
    bool stepped = false;
    EXPECT_TRUE(scaler.step([&] { stepped = true; }));
    EXPECT_TRUE(stepped);
    scaler.update();
    EXPECT_EQ(scaler.get_scale(), 65536.0);
    EXPECT_EQ(scaler.growth_tracker(), 1);
}

// _amp_update_scale_: growth after growth_interval consecutive clean steps, backoff and a
// tracker reset on inf / nan, step skipped; growth never overflows the fp32 scale.
TEST(GradScaler, UpdateRuleMatchesTorch) {
    GradScalerOptions o;
    o.growth_interval = 3;
    GradScaler scaler(o);
    auto clean_step = [&] {
        auto p = params_with_grads({{1.0f}});
        EXPECT_TRUE(scaler.step([] {}, p));  // step() unscales when unscale_ was not called
        scaler.update();
    };
    auto bad_step = [&](float value) {
        auto p   = params_with_grads({{1.0f, value}});
        bool ran = false;
        scaler.unscale_(p);
        EXPECT_TRUE(scaler.found_inf());
        EXPECT_FALSE(scaler.step([&] { ran = true; }));
        EXPECT_FALSE(ran);
        scaler.update();
    };
    double expected = 65536.0;
    for (int i = 0; i < 2; ++i) clean_step();
    EXPECT_EQ(scaler.get_scale(), expected);
    EXPECT_EQ(scaler.growth_tracker(), 2);
    clean_step();  // third clean step: grow
    EXPECT_EQ(scaler.get_scale(), expected *= 2.0);
    EXPECT_EQ(scaler.growth_tracker(), 0);
    clean_step();
    clean_step();
    bad_step(std::numeric_limits<float>::infinity());
    EXPECT_EQ(scaler.get_scale(), expected *= 0.5);
    EXPECT_EQ(scaler.growth_tracker(), 0);
    bad_step(std::numeric_limits<float>::quiet_NaN());
    EXPECT_EQ(scaler.get_scale(), expected *= 0.5);
    for (int i = 0; i < 3; ++i) clean_step();
    EXPECT_EQ(scaler.get_scale(), expected *= 2.0);
    EXPECT_THROW(scaler.update(), std::logic_error);  // no inf check since the last update

    GradScalerOptions huge;
    huge.init_scale      = FLT_MAX;
    huge.growth_interval = 1;
    GradScaler capped(huge);
    capped.unscale_(params_with_grads({{1.0f}}));
    capped.update();
    EXPECT_EQ(capped.get_scale(), static_cast<double>(FLT_MAX));
    EXPECT_EQ(capped.growth_tracker(), 0);
}

TEST(GradScaler, StateDictRoundTripsAndDisabledIsNoOp) {
    GradScalerOptions o;
    o.growth_interval = 5;
    GradScaler a(o);
    for (int i = 0; i < 3; ++i) {
        a.unscale_(params_with_grads({{1.0f}}));
        a.update();
    }
    a.unscale_(params_with_grads({{INFINITY}}));
    a.update();
    a.unscale_(params_with_grads({{1.0f}}));
    a.update();
    const auto state = a.state_dict();
    EXPECT_EQ(state.at("scale").get<double>(), 32768.0);
    EXPECT_EQ(state.at("_growth_tracker").get<int64_t>(), 1);
    EXPECT_EQ(state.at("growth_interval").get<int64_t>(), 5);
    EXPECT_EQ(state.at("growth_factor").get<double>(), 2.0);
    EXPECT_EQ(state.at("backoff_factor").get<double>(), 0.5);
    GradScaler b;
    b.load_state_dict(nlohmann::json::parse(state.dump()));
    EXPECT_EQ(b.state_dict(), state);

    GradScalerOptions off;
    off.enabled = false;
    GradScaler disabled(off);
    const auto loss = torch::tensor(3.0f);
    EXPECT_TRUE(disabled.scale(loss).is_same(loss));
    auto p = params_with_grads({{INFINITY}});
    disabled.unscale_(p);
    EXPECT_TRUE(disabled.step([] {}));
    disabled.update();
    EXPECT_TRUE(disabled.state_dict().empty());
    // fp16 gradients cannot be unscaled safely (torch: "Attempting to unscale FP16 gradients").
    auto half           = torch::zeros({2}, torch::kHalf).requires_grad_(true);
    half.mutable_grad() = torch::ones({2}, torch::kHalf);
    GradScaler on;
    EXPECT_THROW(on.unscale_({half}), std::invalid_argument);
}

}  // namespace
}  // namespace t2i
