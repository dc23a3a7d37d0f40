// Tests: the LR schedules against diffusers optimization.py's formulas (written out again here,
// as the Python reads) at every step of a run including the warmup boundaries, a few hand-checked
// values, LambdaLR stepping, the state round trip and the error messages.
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"
#include "training/lr_schedule.h"

namespace t2i {
namespace {

using training::lr_multiplier;

constexpr double kPi = 3.14159265358979323846;

// optimization.py, lambda by lambda (W warmup, T total, lr0 initial lr).
double reference(const std::string& name, int64_t s, int64_t W, int64_t T, double lr0) {
    const double warm = double(s) / double(std::max<int64_t>(1, W));
    if (name == "constant") return 1.0;
    if (s < W) return warm;
    const double p = double(s - W) / double(std::max<int64_t>(1, T - W));
    if (name == "constant_with_warmup") return 1.0;
    if (name == "linear") return std::max(0.0, double(T - s) / double(std::max<int64_t>(1, T - W)));
    if (name == "cosine") return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * 0.5 * 2.0 * p)));
    if (name == "cosine_with_restarts") {
        if (p >= 1.0) return 0.0;
        return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * std::fmod(1.0 * p, 1.0))));
    }
    // polynomial, lr_end 1e-7, power 1
    if (s > T) return 1e-7 / lr0;
    return ((lr0 - 1e-7) * std::pow(1.0 - double(s - W) / double(T - W), 1.0) + 1e-7) / lr0;
}

TEST(LRSchedule, EveryScheduleMatchesItsFormulaAtEveryStep) {
    const double lr0 = 1e-4;
    for (const std::string name : {"constant", "constant_with_warmup", "linear", "cosine",
                                   "cosine_with_restarts", "polynomial"}) {
        for (const auto& [W, T] :
             std::vector<std::pair<int64_t, int64_t>>{{0, 50}, {1, 20}, {10, 100}, {500, 1500}}) {
            for (int64_t s = 0; s <= T + 10; ++s)
                ASSERT_NEAR(lr_multiplier(name, s, W, T, lr0), reference(name, s, W, T, lr0), 1e-15)
                    << name << " W=" << W << " T=" << T << " step " << s;
        }
    }
}

TEST(LRSchedule, HandCheckedValues) {
    // Warmup boundaries: 0 at step 0 (the first update uses lr = 0), 1 at step W.
    EXPECT_EQ(lr_multiplier("constant_with_warmup", 0, 10, 100), 0.0);
    EXPECT_DOUBLE_EQ(lr_multiplier("constant_with_warmup", 5, 10, 100), 0.5);
    EXPECT_EQ(lr_multiplier("constant_with_warmup", 10, 10, 100), 1.0);
    EXPECT_EQ(lr_multiplier("constant", 0, 500, 100), 1.0);  // warmup ignored
    EXPECT_EQ(lr_multiplier("linear", 10, 10, 100), 1.0);
    EXPECT_DOUBLE_EQ(lr_multiplier("linear", 55, 10, 100), 0.5);
    EXPECT_EQ(lr_multiplier("linear", 100, 10, 100), 0.0);
    EXPECT_EQ(lr_multiplier("linear", 150, 10, 100), 0.0);
    EXPECT_NEAR(lr_multiplier("cosine", 55, 10, 100), 0.5, 1e-15);
    EXPECT_NEAR(lr_multiplier("cosine", 100, 10, 100), 0.0, 1e-15);
    // The script passes no num_cycles: cosine_with_restarts is cosine.
    for (int64_t s = 0; s < 100; ++s)
        EXPECT_NEAR(lr_multiplier("cosine_with_restarts", s, 10, 100),
                    lr_multiplier("cosine", s, 10, 100), 1e-12);
    training::LRScheduleConfig restarts{"cosine_with_restarts", 0, 100, 2.0};
    EXPECT_NEAR(lr_multiplier(restarts, 50, 1e-4), 1.0, 1e-12);  // second cycle starts
    EXPECT_NEAR(lr_multiplier(restarts, 25, 1e-4), 0.5, 1e-12);
    EXPECT_NEAR(lr_multiplier("polynomial", 100, 10, 100, 1e-4), 1e-3, 1e-15);  // lr_end / lr0
    EXPECT_NEAR(lr_multiplier("polynomial", 101, 10, 100, 1e-4), 1e-3, 1e-15);
}

TEST(LRSchedule, PiecewiseConstant) {
    training::LRScheduleConfig c;
    c.name       = "piecewise_constant";
    c.step_rules = "1:10,0.1:20,0.01:30,0.005";
    EXPECT_EQ(lr_multiplier(c, 0, 1.0), 1.0);
    EXPECT_EQ(lr_multiplier(c, 9, 1.0), 1.0);
    EXPECT_EQ(lr_multiplier(c, 10, 1.0), 0.1);
    EXPECT_EQ(lr_multiplier(c, 29, 1.0), 0.01);
    EXPECT_EQ(lr_multiplier(c, 30, 1.0), 0.005);
    c.step_rules = "1:x,0.5";
    EXPECT_THROW(lr_multiplier(c, 0, 1.0), std::runtime_error);
}

TEST(LRSchedule, StepsLikeLambdaLRAndRoundTripsState) {
    training::LRSchedule sched({"linear", 2, 6}, 1e-3);
    std::vector<double> lrs;
    for (int i = 0; i < 8; ++i, sched.step()) lrs.push_back(sched.get_lr());
    const std::vector<double> expected = {0, 5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4, 0, 0};
    for (size_t i = 0; i < lrs.size(); ++i) EXPECT_NEAR(lrs[i], expected[i], 1e-18) << i;
    training::LRSchedule resumed({"linear", 2, 6}, 1e-3);
    resumed.load_state(sched.state());
    EXPECT_EQ(resumed.step_count(), 8);
    EXPECT_EQ(resumed.get_lr(), sched.get_lr());
    training::LRSchedule other({"cosine", 2, 6}, 1e-3);
    EXPECT_THROW(other.load_state(sched.state()), std::runtime_error);
}

TEST(LRSchedule, ErrorsNameTheProblem) {
    try {
        lr_multiplier("cosine_annealing", 0, 0, 10);
        FAIL() << "no error";
    } catch (const std::runtime_error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("cosine_annealing"), std::string::npos) << msg;
        EXPECT_NE(msg.find("constant_with_warmup"), std::string::npos) << msg;
    }
    EXPECT_THROW(training::LRSchedule({"polynomial", 0, 10}, 1e-7), std::runtime_error);
    EXPECT_THROW(training::LRSchedule({"polynomial", 10, 10}, 1e-4), std::runtime_error);
    EXPECT_NO_THROW(training::LRSchedule({"polynomial", 0, 10}, 1e-4));
}

}  // namespace
}  // namespace t2i
