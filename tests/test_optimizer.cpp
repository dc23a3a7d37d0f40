// Tests: AdamW against the torch 1.13 update written out by hand, clip_grad_norm against its
// formula, the 8-bit AdamW (memory, block-wise quantization error, a regression problem's loss
// curve next to fp32 AdamW) and the state_dict round trip of both.
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"
#include "training/adamw_8bit.h"
#include "training/optimizer.h"

namespace t2i {
namespace {

torch::OrderedDict<std::string, torch::Tensor> named(std::vector<torch::Tensor> tensors) {
    torch::OrderedDict<std::string, torch::Tensor> out;
    for (size_t i = 0; i < tensors.size(); ++i)
        out.insert("p" + std::to_string(i), tensors[i].set_requires_grad(true));
    return out;
}

TEST(AdamW, MatchesHandComputedUpdate) {
    const std::vector<double> p0 = {0.5, -1.0, 2.0, 1e-3}, g1 = {0.1, -0.2, 3.0, 0.0},
                              g2 = {-0.3, 0.05, 1.0, 1e-6};
    auto p                       = named({torch::tensor(p0, torch::kFloat64)});
    training::AdamWOptions o{1e-2, 0.9, 0.999, 0.1, 1e-8};
    training::AdamW adamw(p, o);
    std::vector<double> x = p0, m(4, 0), v(4, 0);
    for (int t = 1; t <= 2; ++t) {
        const auto& g          = t == 1 ? g1 : g2;
        p["p0"].mutable_grad() = torch::tensor(g, torch::kFloat64);
        adamw.step();
        for (int i = 0; i < 4; ++i) {  // fixtures README: torch 1.13 single-tensor AdamW
            x[i] *= 1 - o.lr * o.weight_decay;
            m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
            v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
            x[i] -= o.lr / (1 - std::pow(o.beta1, t)) * m[i] /
                    (std::sqrt(v[i]) / std::sqrt(1 - std::pow(o.beta2, t)) + o.eps);
        }
        EXPECT_TRUE(
            t2i::testing::allclose(p["p0"], torch::tensor(x, torch::kFloat64), 1e-15, 1e-13));
    }
    EXPECT_EQ(adamw.step_count(), 2);
    // A parameter without a grad is skipped and keeps its own step count.
    auto q = named({torch::ones({2}), torch::ones({3})});
    training::AdamW two(q, o);
    q["p0"].mutable_grad() = torch::ones({2});
    two.step();
    EXPECT_TRUE(torch::equal(q["p1"], torch::ones({3})));
    const auto state = two.state_dict();
    EXPECT_EQ(state.at("step").item<int64_t>(), 1);
    EXPECT_EQ(state.at("step.p1").item<int64_t>(), 0);
    two.zero_grad();
    EXPECT_FALSE(q["p0"].grad().defined());
}

TEST(ClipGradNorm, MatchesTorchFormula) {
    auto a           = torch::tensor({3.0f, 0.0f}).set_requires_grad(true);
    auto b           = torch::tensor({4.0f}).set_requires_grad(true);
    auto c           = torch::tensor({1.0f}).set_requires_grad(true);  // no grad: skipped
    a.mutable_grad() = torch::tensor({3.0f, 0.0f});
    b.mutable_grad() = torch::tensor({4.0f});
    const auto total = training::clip_grad_norm({a, b, c}, 1.0);
    EXPECT_FLOAT_EQ(total.item<float>(), 5.0f);  // ||(||a||, ||b||)|| = ||(3, 4)||
    const float coef = 1.0f / (5.0f + 1e-6f);
    EXPECT_FLOAT_EQ(a.grad()[0].item<float>(), 3.0f * coef);
    EXPECT_FLOAT_EQ(b.grad()[0].item<float>(), 4.0f * coef);
    // Below max_norm: clip_coef clamps to 1, grads unchanged bit for bit.
    const auto before = a.grad().clone();
    EXPECT_NEAR(training::clip_grad_norm({a, b}, 10.0).item<float>(), 5.0f * coef, 1e-6);
    EXPECT_TRUE(torch::equal(a.grad(), before));
    // Infinity norm: the largest |g|.
    b.mutable_grad() = torch::tensor({-7.0f});
    EXPECT_FLOAT_EQ(training::clip_grad_norm({a, b}, 100.0, INFINITY).item<float>(), 7.0f);
    EXPECT_EQ(training::clip_grad_norm({c}, 1.0).item<float>(), 0.0f);
}

TEST(AdamW8bit, QuantizationMapsAndError) {
    const auto s = training::dynamic_quant_map(true), u = training::dynamic_quant_map(false);
    ASSERT_EQ(s.numel(), 256);
    EXPECT_EQ(s.max().item<float>(), 1.0f);  // bitsandbytes' signed map has 1 but not -1
    EXPECT_GT(s.min().item<float>(), -1.0f);
    EXPECT_EQ(u.min().item<float>(), 0.0f);
    EXPECT_EQ(u.max().item<float>(), 1.0f);
    torch::manual_seed(0);
    const auto x = torch::randn({10000}) * torch::rand({10000}).pow(4);  // wide dynamic range
    const auto q = training::quantize_blockwise(x, s);
    EXPECT_EQ(q.codes.scalar_type(), torch::kUInt8);
    EXPECT_EQ(q.absmax.numel(), (10000 + 255) / 256);
    const auto y = training::dequantize_blockwise(q, s, x.sizes());
    // Dynamic map: relative error of a few % near the block maximum, finer near zero.
    const auto scale = std::get<0>(x.abs().view({-1}).max(0)).item<float>();
    EXPECT_LT((y - x).abs().max().item<float>(), 0.02f * scale);
    EXPECT_TRUE(torch::equal(training::dequantize_blockwise(
                                 training::quantize_blockwise(torch::zeros({300}), s), s, {300}),
                             torch::zeros({300})));
}

TEST(AdamW8bit, StateIsAboutTwoBytesPerParameter) {
    auto p   = named({torch::randn({1 << 20}), torch::randn({100})});
    auto opt = training::make_adamw(p, {}, /*use_8bit=*/true);
    for (auto& item : p) item.value().mutable_grad() = torch::randn_like(item.value());
    opt->step();
    const int64_t large_bytes = opt->state_bytes() - 2 * 100 * 4;  // the small tensor stays fp32
    EXPECT_LE(double(large_bytes) / (1 << 20), 2.1);
    EXPECT_EQ(opt->state_dict().at("exp_avg.p1").scalar_type(), torch::kFloat32);
    EXPECT_EQ(opt->state_dict().at("exp_avg.p0").scalar_type(), torch::kUInt8);
}

// Least squares on a random linear problem with a 128x64 weight (quantized: >= 4096 elements).
std::vector<double> regression_curve(bool use_8bit, int steps) {
    torch::manual_seed(1);
    const auto X = torch::randn({512, 128}), W_true = torch::randn({128, 64}) / 10;
    const auto Y = X.mm(W_true) + 0.01 * torch::randn({512, 64});
    auto p       = named({torch::zeros({128, 64}), torch::zeros({64})});
    auto opt     = training::make_adamw(p, {1e-3, 0.9, 0.999, 1e-2, 1e-8}, use_8bit);
    std::vector<double> losses;
    for (int s = 0; s < steps; ++s) {
        auto loss = (X.mm(p["p0"]) + p["p1"] - Y).pow(2).mean();
        losses.push_back(loss.item<double>());
        opt->zero_grad();
        loss.backward();
        opt->step();
    }
    return losses;
}

TEST(AdamW8bit, LossCurveFollowsFp32AdamW) {
    const auto fp32 = regression_curve(false, 200), q8 = regression_curve(true, 200);
    EXPECT_LT(fp32.back(), 0.5 * fp32.front());  // the problem is actually being solved
    double worst = 0;
    for (size_t s = 0; s < fp32.size(); ++s)
        worst = std::max(worst, std::abs(q8[s] - fp32[s]) / fp32[s]);
    EXPECT_LT(worst, 0.05) << "final fp32 " << fp32.back() << " 8-bit " << q8.back();
    std::cout << "[ 8-bit vs fp32 AdamW ] final loss " << q8.back() << " vs " << fp32.back()
              << ", worst relative gap over 200 steps " << worst << "\n";
}

// Train 5 steps, save, load into a fresh optimizer over a copy of the parameters, and continue
// both for 5 steps: bit-identical.
void expect_round_trip(bool use_8bit) {
    torch::manual_seed(2);
    auto p     = named({torch::randn({80, 64}), torch::randn({7})});
    auto a     = training::make_adamw(p, {}, use_8bit);
    auto grads = [](int s, const torch::Tensor& t) { return torch::sin(t * 3 + s); };
    for (int s = 0; s < 5; ++s) {
        for (auto& item : p) item.value().mutable_grad() = grads(s, item.value().detach());
        a->step();
    }
    auto q = named({p["p0"].detach().clone(), p["p1"].detach().clone()});
    auto b = training::make_adamw(q, {}, use_8bit);
    b->load_state_dict(a->state_dict());
    EXPECT_EQ(b->step_count(), 5);
    for (int s = 5; s < 10; ++s) {
        for (auto* set : {&p, &q})
            for (auto& item : *set) item.value().mutable_grad() = grads(s, item.value().detach());
        a->step();
        b->step();
    }
    EXPECT_TRUE(torch::equal(p["p0"], q["p0"]));
    EXPECT_TRUE(torch::equal(p["p1"], q["p1"]));
    auto bad = a->state_dict();
    bad.erase("exp_avg_sq.p1");
    EXPECT_THROW(b->load_state_dict(bad), std::runtime_error);
}

TEST(AdamW, StateDictRoundTripContinuesIdentically) { expect_round_trip(false); }

// The fused kernel (CUDA's default; libtorch has it on the CPU too, which is where this runs)
// gives the hand-written update's result, with a parameter that skips a step (its own count)
// and a state_dict round trip in the middle (the device step counts rebuilt from it).
TEST(AdamW, FusedKernelGivesTheSameUpdate) {
    torch::manual_seed(4);
    auto ref = named({torch::randn({33, 17}), torch::randn({5}), torch::randn({3, 3})});
    auto fused =
        named({ref["p0"].detach().clone(), ref["p1"].detach().clone(), ref["p2"].detach().clone()});
    const auto start = ref["p0"].detach().clone();
    training::AdamWOptions o{1e-2, 0.9, 0.99, 0.1, 1e-8};
    training::AdamW a(ref, o);
    o.fused = true;
    auto b  = std::make_unique<training::AdamW>(fused, o);
    for (int s = 0; s < 6; ++s) {
        for (auto* set : {&ref, &fused})
            for (auto& item : *set) {
                auto& grad = item.value().mutable_grad();
                grad       = item.key() == "p1" && s % 2 ? torch::Tensor()  // p1: every other step
                                                         : torch::cos(item.value().detach() * 2 + s);
            }
        a.step();
        b->step();
        if (s == 2) {  // resume the fused optimizer from its state dict
            auto resumed = std::make_unique<training::AdamW>(fused, o);
            resumed->load_state_dict(b->state_dict());
            b = std::move(resumed);
        }
        for (const char* k : {"p0", "p1", "p2"})
            EXPECT_TRUE(t2i::testing::allclose(fused[k], ref[k], 1e-6, 1e-5)) << k << " step " << s;
    }
    EXPECT_EQ(b->state_dict().at("step.p1").item<int64_t>(), 3);
    EXPECT_FALSE(t2i::testing::allclose(fused["p0"], start, 1e-3, 0));  // the weights did move
}
TEST(AdamW8bit, StateDictRoundTripContinuesIdentically) { expect_round_trip(true); }

}  // namespace
}  // namespace t2i
