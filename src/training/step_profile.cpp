// Implements: training/step_profile.h.
#include "training/step_profile.h"

#include "util/device.h"

namespace t2i::training {

const char* StepProfile::name(Stage stage) {
    static const char* const kNames[kCount] = {"data_s", "vae_s",   "text_s", "unet_fwd_s", "bwd_s",
                                               "sync_s", "optim_s", "ema_s",  "log_s"};
    return kNames[stage];
}

std::vector<std::pair<std::string, double>> StepProfile::report() const {
    std::vector<std::pair<std::string, double>> r;
    if (!enabled_) return r;
    for (int s = 0; s < kCount; ++s) r.emplace_back(name(Stage(s)), seconds_[s]);
    return r;
}

void StepProfile::start() {
    if (!enabled_) return;
    const double log = seconds_[kLog];  // the step before's, reported with this one
    seconds_.fill(0);
    seconds_[kLog] = log;
    synchronize_device(device_);
    last_ = std::chrono::steady_clock::now();
}

void StepProfile::mark(Stage stage) {
    if (!enabled_) return;
    synchronize_device(device_);
    const auto now = std::chrono::steady_clock::now();
    seconds_[stage] += std::chrono::duration<double>(now - last_).count();
    last_ = now;
}

}  // namespace t2i::training
