// Implements: util/grad_scaler.h.
#include "util/grad_scaler.h"

#include <cmath>
#include <stdexcept>

namespace t2i {

GradScaler::GradScaler(const GradScalerOptions& options)
    : options_(options), scale_(static_cast<float>(options.init_scale)) {
    if (!(options.growth_factor > 1.0))
        throw std::invalid_argument("GradScaler: growth_factor must be > 1.0");
    if (!(options.backoff_factor < 1.0))
        throw std::invalid_argument("GradScaler: backoff_factor must be < 1.0");
    if (options.growth_interval <= 0)
        throw std::invalid_argument("GradScaler: growth_interval must be a positive integer");
}

torch::Tensor GradScaler::scale(const torch::Tensor& loss) const {
    if (!options_.enabled) return loss;
    return loss * torch::scalar_tensor(scale_, loss.options().dtype(torch::kFloat32));
}

void GradScaler::unscale_(const std::vector<torch::Tensor>& params) {
    if (!options_.enabled) return;
    if (unscaled_)
        throw std::logic_error(
            "GradScaler: unscale_() has already been called since the last update()");
    // grad_scaler.py: inv_scale = self._scale.double().reciprocal().float()
    const float inv_scale = static_cast<float>(1.0 / static_cast<double>(scale_));
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> grads;
    for (const auto& p : params) {
        const auto& g = p.grad();
        if (!g.defined()) continue;
        if (g.scalar_type() == torch::kHalf)
            throw std::invalid_argument(
                "GradScaler: attempting to unscale fp16 gradients; keep fp32 master weights "
                "(autocast) instead of casting the trained model to fp16");
        if (!grads.empty() && g.device() != grads[0].device())
            throw std::invalid_argument("GradScaler: gradients on several devices");
        grads.push_back(g);
    }
    const auto device = grads.empty() ? torch::Device(torch::kCPU) : grads[0].device();
    const auto f32    = torch::dtype(torch::kFloat32).device(device);
    found_inf_device_ = torch::zeros({1}, f32);
    // One kernel for all gradients: grad *= inv_scale, found_inf = 1 if any is inf / nan.
    if (!grads.empty())
        at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf_device_,
                                                       torch::full({1}, inv_scale, f32));
    found_inf_known_ = false;
    unscaled_        = true;
}

bool GradScaler::step(const std::function<void()>& optimizer_step,
                      const std::vector<torch::Tensor>& params) {
    if (!options_.enabled) {
        optimizer_step();
        return true;
    }
    if (!unscaled_) unscale_(params);
    if (found_inf()) return false;
    optimizer_step();
    return true;
}

void GradScaler::update() {
    if (!options_.enabled) return;
    if (!unscaled_)
        throw std::logic_error(
            "GradScaler: no inf checks were recorded prior to update(); call unscale_() or "
            "step() first");
    // _amp_update_scale_: back off on overflow; grow after growth_interval clean steps, unless
    // growing would overflow the float32 scale itself.
    if (found_inf()) {
        scale_          = static_cast<float>(scale_ * options_.backoff_factor);
        growth_tracker_ = 0;
    } else if (growth_tracker_ + 1 == options_.growth_interval) {
        const float grown = static_cast<float>(scale_ * options_.growth_factor);
        if (std::isfinite(grown)) scale_ = grown;
        growth_tracker_ = 0;
    } else {
        ++growth_tracker_;
    }
    unscaled_         = false;
    found_inf_        = false;
    found_inf_known_  = true;
    found_inf_device_ = torch::Tensor();
}

bool GradScaler::found_inf() {
    if (!found_inf_known_) {
        found_inf_       = found_inf_device_.item<float>() != 0;
        found_inf_known_ = true;
    }
    return found_inf_;
}

void GradScaler::set_found_inf(bool found) {
    found_inf_       = found;
    found_inf_known_ = true;
}

nlohmann::json GradScaler::state_dict() const {
    if (!options_.enabled) return nlohmann::json::object();
    return {{"scale", scale_},
            {"growth_factor", options_.growth_factor},
            {"backoff_factor", options_.backoff_factor},
            {"growth_interval", options_.growth_interval},
            {"_growth_tracker", growth_tracker_}};
}

void GradScaler::load_state_dict(const nlohmann::json& state) {
    if (!options_.enabled) return;
    if (state.empty())
        throw std::runtime_error(
            "GradScaler: the checkpoint has no grad scaler state (it was saved without fp16 "
            "loss scaling); resume with the same --mixed_precision");
    scale_                   = state.at("scale").get<float>();
    options_.growth_factor   = state.at("growth_factor").get<double>();
    options_.backoff_factor  = state.at("backoff_factor").get<double>();
    options_.growth_interval = state.at("growth_interval").get<int64_t>();
    growth_tracker_          = state.at("_growth_tracker").get<int64_t>();
}

}  // namespace t2i
