// Implements: AdamW and clip_grad_norm, mirroring torch 1.13 torch/optim/adamw.py
// (_single_tensor_adamw) and torch/nn/utils/clip_grad.py (clip_grad_norm_) op for op.
#include "training/optimizer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "training/adamw_8bit.h"

namespace t2i::training {

void detail::check_state_tensor(const TensorMap& state, const std::string& key,
                                const torch::Tensor& like) {
    auto it = state.find(key);
    if (it == state.end())
        throw std::runtime_error("optimizer state: missing tensor '" + key + "'");
    if (it->second.sizes() != like.sizes() || it->second.scalar_type() != like.scalar_type())
        throw std::runtime_error("optimizer state: tensor '" + key + "' has shape " +
                                 c10::str(it->second.sizes()) + " " +
                                 c10::toString(it->second.scalar_type()) + ", expected " +
                                 c10::str(like.sizes()) + " " + c10::toString(like.scalar_type()));
}

AdamW::AdamW(const NamedParameters& params, AdamWOptions options) : options_(options) {
    for (const auto& item : params)
        if (item.value().requires_grad()) params_.emplace_back(item.key(), item.value());
    steps_.assign(params_.size(), 0);
    exp_avg_.resize(params_.size());
    exp_avg_sq_.resize(params_.size());
}

void AdamW::step() {
    torch::NoGradGuard no_grad;
    if (options_.fused) return fused_step();
    for (size_t i = 0; i < params_.size(); ++i) {
        const auto& param = params_[i].second;
        const auto& grad  = param.grad();
        if (!grad.defined()) continue;
        update(i, param, grad, ++steps_[i]);
    }
}

// torch 1.13 _single_tensor_adamw, one parameter (maximize=False, amsgrad=False).
void AdamW::update(size_t i, const torch::Tensor& param, const torch::Tensor& grad, int64_t step) {
    if (!exp_avg_[i].defined()) {
        exp_avg_[i]    = torch::zeros_like(param, at::MemoryFormat::Preserve);
        exp_avg_sq_[i] = torch::zeros_like(param, at::MemoryFormat::Preserve);
    }
    const auto& o = options_;
    param.mul_(1.0 - o.lr * o.weight_decay);  // decoupled weight decay
    exp_avg_[i].mul_(o.beta1).add_(grad, 1.0 - o.beta1);
    exp_avg_sq_[i].mul_(o.beta2).addcmul_(grad, grad, 1.0 - o.beta2);
    const double bias_correction1      = 1.0 - std::pow(o.beta1, static_cast<double>(step));
    const double bias_correction2      = 1.0 - std::pow(o.beta2, static_cast<double>(step));
    const double step_size             = o.lr / bias_correction1;
    const double bias_correction2_sqrt = std::sqrt(bias_correction2);
    auto denom = (exp_avg_sq_[i].sqrt() / bias_correction2_sqrt).add_(o.eps);
    param.addcdiv_(exp_avg_[i], denom, -step_size);
}

// torch/optim/adamw.py `_fused_adamw` for one device and dtype: steps += 1 on the device, then
// one _fused_adamw_ over every parameter that has a gradient.
void AdamW::fused_step() {
    step_tensors_.resize(params_.size());
    std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
    for (size_t i = 0; i < params_.size(); ++i) {
        const auto& param = params_[i].second;
        const auto& grad  = param.grad();
        if (!grad.defined()) continue;
        if (!exp_avg_[i].defined()) {
            exp_avg_[i]    = torch::zeros_like(param, at::MemoryFormat::Preserve);
            exp_avg_sq_[i] = torch::zeros_like(param, at::MemoryFormat::Preserve);
        }
        if (!step_tensors_[i].defined())  // first step, or after load_state_dict
            step_tensors_[i] = torch::full({}, static_cast<double>(steps_[i]),
                                           torch::dtype(torch::kFloat32).device(param.device()));
        ++steps_[i];
        params.push_back(param);
        grads.push_back(grad);
        exp_avgs.push_back(exp_avg_[i]);
        exp_avg_sqs.push_back(exp_avg_sq_[i]);
        steps.push_back(step_tensors_[i]);
    }
    if (params.empty()) return;
    at::_foreach_add_(steps, 1);
    const auto& o = options_;
    at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, o.lr,
                      o.beta1, o.beta2, o.weight_decay, o.eps, /*amsgrad=*/false,
                      /*maximize=*/false);
}

void AdamW::zero_grad() {
    for (auto& [name, param] : params_) param.mutable_grad() = torch::Tensor();
}

int64_t AdamW::step_count() const {
    return steps_.empty() ? 0 : *std::max_element(steps_.begin(), steps_.end());
}

void AdamW::write_steps(TensorMap& out) const {
    const int64_t step = step_count();
    out["step"]        = torch::tensor(step, torch::kInt64);
    for (size_t i = 0; i < params_.size(); ++i)
        if (steps_[i] != step)
            out["step." + params_[i].first] = torch::tensor(steps_[i], torch::kInt64);
}

void AdamW::read_steps(const TensorMap& state) {
    auto it = state.find("step");
    if (it == state.end()) throw std::runtime_error("optimizer state: missing 'step'");
    const int64_t step = it->second.item<int64_t>();
    for (size_t i = 0; i < params_.size(); ++i) {
        auto own  = state.find("step." + params_[i].first);
        steps_[i] = own == state.end() ? step : own->second.item<int64_t>();
    }
}

TensorMap AdamW::state_dict() const {
    TensorMap out;
    write_steps(out);
    for (size_t i = 0; i < params_.size(); ++i) {
        const std::string& name = params_[i].first;
        if (!exp_avg_[i].defined()) continue;
        out["exp_avg." + name]    = exp_avg_[i].detach().to(torch::kCPU).clone();
        out["exp_avg_sq." + name] = exp_avg_sq_[i].detach().to(torch::kCPU).clone();
    }
    return out;
}

void AdamW::load_state_dict(const TensorMap& state) {
    read_steps(state);
    step_tensors_.clear();  // the fused path rebuilds them from steps_
    for (size_t i = 0; i < params_.size(); ++i) {
        const std::string& name = params_[i].first;
        const auto& param       = params_[i].second;
        if (steps_[i] == 0) {
            exp_avg_[i] = exp_avg_sq_[i] = torch::Tensor();
            continue;
        }
        const auto like = param.detach().to(torch::kCPU);
        detail::check_state_tensor(state, "exp_avg." + name, like);
        detail::check_state_tensor(state, "exp_avg_sq." + name, like);
        exp_avg_[i]    = state.at("exp_avg." + name).to(param.device()).clone();
        exp_avg_sq_[i] = state.at("exp_avg_sq." + name).to(param.device()).clone();
    }
}

int64_t AdamW::state_bytes() const {
    int64_t bytes = 0;
    for (size_t i = 0; i < params_.size(); ++i)
        if (exp_avg_[i].defined())
            bytes += (exp_avg_[i].numel() + exp_avg_sq_[i].numel()) * exp_avg_[i].element_size();
    return bytes;
}

std::unique_ptr<AdamW> make_adamw(const NamedParameters& params, const AdamWOptions& options,
                                  bool use_8bit) {
    if (use_8bit) return std::make_unique<AdamW8bit>(params, options);
    AdamWOptions o = options;
    c10::optional<torch::Device> device;
    bool one_device_fp32 = true;
    for (const auto& item : params) {
        const auto& p = item.value();
        if (!p.requires_grad()) continue;
        if (!device) device = p.device();
        one_device_fp32 =
            one_device_fp32 && p.device() == *device && p.scalar_type() == torch::kFloat32;
    }
    o.fused = o.fused || (one_device_fp32 && device.has_value());
    return std::make_unique<AdamW>(params, o);
}

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm,
                             double norm_type) {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> grads;
    for (const auto& p : params)
        if (p.grad().defined()) grads.push_back(p.grad().detach());
    if (grads.empty()) return torch::zeros({});
    const auto device = grads[0].device();
    torch::Tensor total_norm;
    std::vector<torch::Tensor> norms;
    if (device.is_cuda()) {  // torch's foreach path on CUDA: a few kernels for all gradients
        const auto per = at::_foreach_norm(grads, norm_type);
        total_norm     = std::isinf(norm_type) ? torch::stack(per).max()
                                               : torch::norm(torch::stack(per), norm_type);
        const auto clip_coef_clamped =
            torch::clamp_max((total_norm + 1e-6).reciprocal() * max_norm, 1.0);
        at::_foreach_mul_(grads, clip_coef_clamped);
        return total_norm;
    }
    if (std::isinf(norm_type)) {
        for (const auto& g : grads) norms.push_back(g.abs().max().to(device));
        total_norm = norms.size() == 1 ? norms[0] : torch::stack(norms).max();
    } else {
        for (const auto& g : grads) norms.push_back(torch::norm(g, norm_type).to(device));
        total_norm = torch::norm(torch::stack(norms), norm_type);
    }
    // max_norm / (total + 1e-6): Python's Tensor.__rtruediv__ is reciprocal() * other.
    const auto clip_coef         = (total_norm + 1e-6).reciprocal() * max_norm;
    const auto clip_coef_clamped = torch::clamp_max(clip_coef, 1.0);  // torch.clamp(max=1.0)
    for (auto& g : grads) g.mul_(clip_coef_clamped.to(g.device()));
    return total_norm;
}

torch::Tensor clip_grad_norm(const NamedParameters& params, double max_norm, double norm_type) {
    std::vector<torch::Tensor> list;
    for (const auto& item : params) list.push_back(item.value());
    return clip_grad_norm(list, max_norm, norm_type);
}

}  // namespace t2i::training
