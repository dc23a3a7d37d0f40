// Implements: EMAModel (see ema.h), op for op as diffusers v0.27 training_utils.EMAModel.
#include "training/ema.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "io/json_config.h"

namespace t2i::training {

using NamedTensors = torch::OrderedDict<std::string, torch::Tensor>;

EMAModel::EMAModel(const NamedTensors& params, EMAConfig config) : config_(config) {
    torch::NoGradGuard no_grad;
    const bool pin = config_.offload && torch::cuda::is_available();
    for (const auto& item : params) {
        auto shadow = item.value().detach().clone();
        if (config_.offload) shadow = shadow.to(torch::kCPU);
        if (pin) shadow = shadow.pin_memory();
        shadow_.emplace_back(item.key(), shadow);
    }
}

double EMAModel::get_decay(int64_t optimization_step) const {
    const int64_t step = std::max<int64_t>(0, optimization_step - config_.update_after_step - 1);
    if (step <= 0) return 0.0;
    const double k = static_cast<double>(step);
    double value   = config_.use_ema_warmup
                         ? 1.0 - std::pow(1.0 + k / config_.inv_gamma, -config_.power)
                         : (1.0 + k) / (10.0 + k);
    value          = std::min(value, config_.decay);
    return std::max(value, config_.min_decay);
}

void EMAModel::check_same_params(const NamedTensors& params, const char* what) const {
    if (params.size() != shadow_.size())
        throw std::runtime_error(std::string("EMAModel::") + what + ": got " +
                                 std::to_string(params.size()) + " parameters, the EMA holds " +
                                 std::to_string(shadow_.size()));
    for (size_t i = 0; i < shadow_.size(); ++i)
        if (params[i].key() != shadow_[i].first)
            throw std::runtime_error(std::string("EMAModel::") + what + ": parameter " +
                                     std::to_string(i) + " is '" + params[i].key() +
                                     "', the EMA expects '" + shadow_[i].first + "'");
}

void EMAModel::step(const NamedTensors& params) {
    check_same_params(params, "step");
    torch::NoGradGuard no_grad;
    optimization_step_ += 1;
    const double decay           = get_decay(optimization_step_);
    cur_decay_value_             = decay;
    const double one_minus_decay = 1.0 - decay;

    // --offload_ema: the update runs on the parameters' device with a temporary copy of the
    // shadow (the script's ema_unet.to(cuda, non_blocking) ... .to(cpu)); the result is copied
    // back without blocking into the (pinned) CPU tensors, then one device synchronize, so the
    // CPU shadow is never read early.
    const auto device = params.is_empty() ? torch::Device(torch::kCPU) : params[0].value().device();
    const bool offload = config_.offload && !device.is_cpu();
    std::vector<torch::Tensor> host;
    if (offload)
        for (auto& item : shadow_) {
            host.push_back(item.second);
            item.second = item.second.to(device, /*non_blocking=*/true);
        }
    std::vector<torch::Tensor> list;
    for (const auto& item : params) list.push_back(item.value());
    if (config_.foreach)  // --foreach_ema: a few launches instead of three per parameter
        step_foreach(list, one_minus_decay);
    else
        step_loop(list, one_minus_decay);
    if (offload) {
        for (size_t i = 0; i < shadow_.size(); ++i) {
            host[i].copy_(shadow_[i].second, /*non_blocking=*/true);  // into pinned memory
            shadow_[i].second = host[i];
        }
        torch::cuda::synchronize(device.index());  // once, before anything reads the shadow
    }
}

namespace {

// s -= w * (s - p) in one pass over memory for contiguous fp32 CPU tensors: the same three
// float roundings as the three tensor ops below (x86-64 without -mfma cannot contract them into
// an FMA), a third of the memory traffic. Returns false when the tensors do not qualify.
bool ema_update_fused(torch::Tensor& s, const torch::Tensor& p, double one_minus_decay) {
    if (!s.device().is_cpu() || !p.device().is_cpu() || s.scalar_type() != torch::kFloat32 ||
        p.scalar_type() != torch::kFloat32 || !s.is_contiguous() || !p.is_contiguous())
        return false;
    float* sp       = s.data_ptr<float>();
    const float* pp = p.data_ptr<float>();
    const float w   = static_cast<float>(one_minus_decay);
    at::parallel_for(0, s.numel(), 32768, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const float d = sp[i] - pp[i];
            const float t = w * d;
            sp[i]         = sp[i] - t;
        }
    });
    return true;
}

}  // namespace

void EMAModel::step_loop(const std::vector<torch::Tensor>& params, double one_minus_decay) {
    for (size_t i = 0; i < params.size(); ++i) {
        auto& s = shadow_[i].second;
        if (!params[i].requires_grad())
            s.copy_(params[i]);
        else if (!ema_update_fused(s, params[i], one_minus_decay))
            s.sub_(one_minus_decay * (s - params[i]));  // diffusers: s_param.sub_(...)
    }
}

// torch._foreach_sub_(s, torch._foreach_sub(s, p), alpha=1 - decay): one fused s - alpha (s - p)
// (rounds differently from the loop's separate multiply, as in diffusers).
void EMAModel::step_foreach(const std::vector<torch::Tensor>& params, double one_minus_decay) {
    std::vector<torch::Tensor> s_grad, p_grad;
    for (size_t i = 0; i < params.size(); ++i) {
        if (params[i].requires_grad()) {
            s_grad.push_back(shadow_[i].second);
            p_grad.push_back(params[i]);
        } else {
            shadow_[i].second.copy_(params[i], /*non_blocking=*/true);  // _foreach_copy_
        }
    }
    if (s_grad.empty()) return;
    torch::_foreach_sub_(s_grad, torch::_foreach_sub(s_grad, p_grad), one_minus_decay);
}

void EMAModel::copy_to(const NamedTensors& params) const {
    check_same_params(params, "copy_to");
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < shadow_.size(); ++i) params[i].value().copy_(shadow_[i].second);
}

void EMAModel::store(const NamedTensors& params) {
    stored_.clear();
    for (const auto& item : params)
        stored_.push_back(item.value().detach().to(torch::kCPU).clone());
}

void EMAModel::restore(const NamedTensors& params) {
    if (stored_.empty())
        throw std::runtime_error("EMAModel::restore: no stored parameters; call store() first");
    if (stored_.size() != params.size())
        throw std::runtime_error("EMAModel::restore: stored " + std::to_string(stored_.size()) +
                                 " parameters, got " + std::to_string(params.size()));
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < stored_.size(); ++i) params[i].value().copy_(stored_[i]);
    stored_.clear();  // diffusers: "Better memory-wise."
}

std::map<std::string, torch::Tensor> EMAModel::shadow_map() const {
    return {shadow_.begin(), shadow_.end()};
}

nlohmann::json EMAModel::config_json() const {
    return {{"decay", config_.decay},
            {"min_decay", config_.min_decay},
            {"optimization_step", optimization_step_},
            {"update_after_step", config_.update_after_step},
            {"use_ema_warmup", config_.use_ema_warmup},
            {"inv_gamma", config_.inv_gamma},
            {"power", config_.power}};
}

void EMAModel::load_config_json(const nlohmann::json& j, const std::string& where) {
    const io::JsonConfig c(j, where);  // typed getters: a float is never cast to an int
    auto number = [&](const char* key, auto& field, double lo, double hi) {
        field = c.get(key, field);
        c.check_range(key, static_cast<double>(field), lo, hi);
    };
    number("decay", config_.decay, 0, 1);
    number("min_decay", config_.min_decay, 0, 1);
    number("optimization_step", optimization_step_, 0, 1e15);
    number("update_after_step", config_.update_after_step, 0, 1e15);
    config_.use_ema_warmup = c.get("use_ema_warmup", config_.use_ema_warmup);
    number("inv_gamma", config_.inv_gamma, 1e-12, 1e12);
    number("power", config_.power, 1e-12, 1e12);
}

void EMAModel::load_shadow(const std::map<std::string, torch::Tensor>& tensors) {
    torch::NoGradGuard no_grad;
    for (auto& [name, s] : shadow_) {
        auto it = tensors.find(name);
        if (it == tensors.end())
            throw std::runtime_error("EMA weights: missing tensor '" + name + "'");
        if (it->second.sizes() != s.sizes())
            throw std::runtime_error("EMA weights: tensor '" + name + "' has shape " +
                                     c10::str(it->second.sizes()) + ", expected " +
                                     c10::str(s.sizes()));
        s.copy_(it->second);
    }
}

}  // namespace t2i::training
