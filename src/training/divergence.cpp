// Implements: training/divergence.h.
#include "training/divergence.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "training/checkpoint.h"
#include "util/log.h"

namespace t2i::training {

DivergenceGuard::DivergenceGuard(const TrainConfig& config, io::OutputFolder* out)
    : config_(config), out_(out) {}

bool DivergenceGuard::finite(double loss, double grad_norm, bool loss_scaling) {
    return std::isfinite(loss) && (loss_scaling || std::isfinite(grad_norm));
}

std::string DivergenceGuard::likely_causes() const {
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "likely causes: a learning rate too high for this model (--learning_rate "
                  "%g%s), extreme --noise_offset (%g) or --input_perturbation (%g), fp16 "
                  "overflow (try --mixed_precision bf16), or NaN weights in the base model",
                  config_.learning_rate, config_.scale_lr ? " with --scale_lr" : "",
                  config_.noise_offset, config_.input_perturbation);
    return buf;
}

void DivergenceGuard::settle(bool sound) {
    if (!pending_ || !out_) return;
    if (sound && config_.checkpoints_total_limit)
        prune_checkpoints(*out_, *config_.checkpoints_total_limit);
    if (!sound)
        log_warn("the loss after checkpoint-%lld was not finite: set aside as %s",
                 (long long)*pending_, quarantine_checkpoint(*out_, *pending_).c_str());
    pending_.reset();
}

void DivergenceGuard::after_step(int64_t step, bool finite, double loss, double grad_norm) {
    settle(finite);
    streak_ = finite ? 0 : streak_ + 1;
    if (finite) return;
    const std::string what = strformat("step %lld: the loss is %g and the gradient norm %g",
                                       (long long)step, loss, grad_norm);
    if (streak_ >= kMaxSteps)
        throw std::runtime_error(what + ", not finite for " + std::to_string(kMaxSteps) +
                                 " steps in a row: training stopped and nothing more was saved "
                                 "(the checkpoints written before are intact); " +
                                 likely_causes());
    if (out_)  // rank 0 speaks for all
        log_warn("%s: the update was skipped (weights unchanged); %s", what.c_str(),
                 likely_causes().c_str());
}

bool DivergenceGuard::may_checkpoint(int64_t step) const {
    if (streak_ == 0) return true;
    if (out_)
        log_warn("step %lld: no checkpoint written, the last step's loss was not finite",
                 (long long)step);
    return false;
}

void DivergenceGuard::finish(bool stopping) {
    if (streak_ > 0 && !stopping)
        throw std::runtime_error("the last " + std::to_string(streak_) +
                                 " step(s) had a loss that was not finite, so the weights have "
                                 "diverged: the trained model was not saved (the checkpoints "
                                 "written before are intact); " +
                                 likely_causes());
    if (streak_ == 0) settle(true);
}

}  // namespace t2i::training
