// Implements: --profile, where an optimizer step's time goes: data (loader wait and the step's
// random draws), VAE encode, text encode, UNet forward (with the loss), backward, gradient sync
// (the all-reduce left after backward, the loss all-reduce), optimizer (unscale, clip, AdamW, LR),
// EMA and logging. Seconds per stage, summed over the step's micro-batches, go to
// metrics.jsonl as "profile". On a GPU each mark waits for the device first (the figures are
// then true, and the step slower); off, marks cost one branch.
#pragma once

#include <torch/torch.h>

#include <array>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace t2i::training {

class StepProfile {
  public:
    enum Stage {
        kData,
        kVae,
        kText,
        kUnetForward,
        kBackward,
        kSync,
        kOptimizer,
        kEma,
        kLog,
        kCount
    };
    static const char* name(Stage stage);  // "data_s", "vae_s", ...

    StepProfile(bool enabled, torch::Device device) : enabled_(enabled), device_(device) {}
    bool enabled() const { return enabled_; }
    // Starts a step: the stage sums back to zero, the clock at now.
    void start();
    // Adds the time since the last mark (or start) to `stage`.
    void mark(Stage stage);
    double seconds(Stage stage) const { return seconds_[stage]; }
    // (name, seconds) of every stage; empty when disabled. log_s is the step before's logging.
    std::vector<std::pair<std::string, double>> report() const;

  private:
    bool enabled_;
    torch::Device device_;
    std::array<double, kCount> seconds_{};
    std::chrono::steady_clock::time_point last_;
};

// A mark on a profile that may be null (compute_step without --profile).
inline void mark(StepProfile* profile, StepProfile::Stage stage) {
    if (profile && profile->enabled()) profile->mark(stage);
}

}  // namespace t2i::training
