// Implements: block-wise 8-bit AdamW (see adamw_8bit.h): bitsandbytes' dynamic quantization map,
// block-wise absmax quantization, and the AdamW update on dequantized moments.
#include "training/adamw_8bit.h"

#include <cmath>
#include <stdexcept>

namespace t2i::training {

// bitsandbytes functional.create_dynamic_map: for each exponent i (7 of them) the midpoints of
// linspace(0.1, 1, n_i + 1) scaled by 10^(i - 6); the sign bit doubles them for the signed map,
// the unsigned map instead spends it on twice the fraction items. Plus 0 and 1.
torch::Tensor dynamic_quant_map(bool is_signed) {
    constexpr int kMaxExponentBits = 7, kNonSignBits = 7;
    std::vector<float> data;
    for (int i = 0; i < kMaxExponentBits; ++i) {
        const int64_t fraction_items =
            is_signed ? (int64_t{1} << (i + kNonSignBits - kMaxExponentBits)) + 1
                      : (int64_t{1} << (i + kNonSignBits - kMaxExponentBits + 1)) + 1;
        const auto boundaries = torch::linspace(0.1, 1.0, fraction_items);  // f32
        const auto means      = (boundaries.slice(0, 0, -1) + boundaries.slice(0, 1)) / 2.0;
        const auto scaled     = (means * std::pow(10.0, -(kMaxExponentBits - 1) + i)).contiguous();
        const float* v        = scaled.data_ptr<float>();
        for (int64_t k = 0; k < scaled.numel(); ++k) {
            data.push_back(v[k]);
            if (is_signed) data.push_back(-v[k]);
        }
    }
    data.push_back(0.0f);
    data.push_back(1.0f);
    TORCH_CHECK(data.size() == 256, "dynamic map has ", data.size(), " entries, expected 256");
    return std::get<0>(torch::tensor(data).sort());
}

QuantizedTensor quantize_blockwise(const torch::Tensor& x, const torch::Tensor& map,
                                   int64_t block_size) {
    const int64_t n       = x.numel();
    const int64_t nblocks = (n + block_size - 1) / block_size;
    auto flat             = x.detach().reshape({-1}).to(torch::kFloat32);
    if (nblocks * block_size != n)
        flat = torch::constant_pad_nd(flat, {0, nblocks * block_size - n});
    auto blocks = flat.view({nblocks, block_size});      // [nb, B]
    auto absmax = blocks.abs().amax(1);                  // [nb]
    auto scale  = absmax.clamp_min(1e-30).unsqueeze(1);  // all-zero blocks stay 0
    auto normed = (blocks / scale).clamp(-1.0, 1.0);     // [nb, B] in the map's range
    // Nearest map entry: bucketize against the 255 midpoints between consecutive entries.
    auto midpoints = (map.slice(0, 0, -1) + map.slice(0, 1)) / 2.0;  // [255]
    auto codes     = torch::bucketize(normed, midpoints).to(torch::kUInt8).reshape({-1});
    return {codes.slice(0, 0, n).contiguous(), absmax};
}

torch::Tensor dequantize_blockwise(const QuantizedTensor& q, const torch::Tensor& map,
                                   at::IntArrayRef shape, int64_t block_size) {
    const int64_t n       = q.codes.numel();
    const int64_t nblocks = q.absmax.numel();
    auto values           = map.index_select(0, q.codes.to(torch::kLong));  // [numel]
    if (nblocks * block_size != n)
        values = torch::constant_pad_nd(values, {0, nblocks * block_size - n});
    values = values.view({nblocks, block_size}) * q.absmax.unsqueeze(1);
    return values.reshape({-1}).slice(0, 0, n).reshape(shape);
}

AdamW8bit::AdamW8bit(const NamedParameters& params, AdamWOptions options)
    : AdamW(params, options),
      signed_map_(dynamic_quant_map(true)),
      unsigned_map_(dynamic_quant_map(false)) {
    exp_avg_q_.resize(params_.size());
    exp_avg_sq_q_.resize(params_.size());
    exp_avg_.resize(params_.size());
    exp_avg_sq_.resize(params_.size());
}

bool AdamW8bit::quantized(size_t i) const { return params_[i].second.numel() >= kMin8bitSize; }

void AdamW8bit::update(size_t i, const torch::Tensor& param, const torch::Tensor& grad,
                       int64_t step) {
    if (signed_map_.device() != param.device()) {
        signed_map_   = signed_map_.to(param.device());
        unsigned_map_ = unsigned_map_.to(param.device());
    }
    const auto& o = options_;
    torch::Tensor m, v;   // fp32 moments, [param shape]
    if (!quantized(i)) {  // small tensor: fp32 state, updated in place
        if (!exp_avg_[i].defined()) {
            exp_avg_[i]    = torch::zeros_like(param, torch::kFloat32);
            exp_avg_sq_[i] = torch::zeros_like(param, torch::kFloat32);
        }
        m = exp_avg_[i];
        v = exp_avg_sq_[i];
    } else if (!exp_avg_q_[i].codes.defined()) {  // first step
        m = torch::zeros_like(param, torch::kFloat32);
        v = torch::zeros_like(param, torch::kFloat32);
    } else {
        m = dequantize_blockwise(exp_avg_q_[i], signed_map_, param.sizes());
        v = dequantize_blockwise(exp_avg_sq_q_[i], unsigned_map_, param.sizes());
    }
    const auto g = grad.to(torch::kFloat32);
    param.mul_(1.0 - o.lr * o.weight_decay);
    m.mul_(o.beta1).add_(g, 1.0 - o.beta1);
    v.mul_(o.beta2).addcmul_(g, g, 1.0 - o.beta2);
    const double bias_correction1 = 1.0 - std::pow(o.beta1, static_cast<double>(step));
    const double bias_correction2 = 1.0 - std::pow(o.beta2, static_cast<double>(step));
    auto denom                    = (v.sqrt() / std::sqrt(bias_correction2)).add_(o.eps);
    param.addcdiv_(m.to(param.scalar_type()), denom.to(param.scalar_type()),
                   -o.lr / bias_correction1);
    if (quantized(i)) {
        exp_avg_q_[i]    = quantize_blockwise(m, signed_map_);
        exp_avg_sq_q_[i] = quantize_blockwise(v, unsigned_map_);
    }
}

TensorMap AdamW8bit::state_dict() const {
    TensorMap out;
    write_steps(out);
    auto cpu = [](const torch::Tensor& t) { return t.detach().to(torch::kCPU).clone(); };
    for (size_t i = 0; i < params_.size(); ++i) {
        const std::string& name = params_[i].first;
        if (quantized(i) && exp_avg_q_[i].codes.defined()) {
            out["exp_avg." + name]           = cpu(exp_avg_q_[i].codes);
            out["exp_avg_absmax." + name]    = cpu(exp_avg_q_[i].absmax);
            out["exp_avg_sq." + name]        = cpu(exp_avg_sq_q_[i].codes);
            out["exp_avg_sq_absmax." + name] = cpu(exp_avg_sq_q_[i].absmax);
        } else if (!quantized(i) && exp_avg_[i].defined()) {
            out["exp_avg." + name]    = cpu(exp_avg_[i]);
            out["exp_avg_sq." + name] = cpu(exp_avg_sq_[i]);
        }
    }
    return out;
}

void AdamW8bit::load_state_dict(const TensorMap& state) {
    read_steps(state);
    for (size_t i = 0; i < params_.size(); ++i) {
        const std::string& name = params_[i].first;
        const auto& param       = params_[i].second;
        exp_avg_q_[i] = exp_avg_sq_q_[i] = {};
        exp_avg_[i] = exp_avg_sq_[i] = torch::Tensor();
        if (steps_[i] == 0) continue;
        auto load = [&](const std::string& key, const torch::Tensor& like) {
            detail::check_state_tensor(state, key, like);
            return state.at(key).to(param.device()).clone();
        };
        if (!quantized(i)) {
            const auto like = param.detach().to(torch::kCPU);
            exp_avg_[i]     = load("exp_avg." + name, like);
            exp_avg_sq_[i]  = load("exp_avg_sq." + name, like);
            continue;
        }
        const int64_t nblocks = (param.numel() + kQuantBlockSize - 1) / kQuantBlockSize;
        const auto codes      = torch::empty({param.numel()}, torch::kUInt8);
        const auto scales     = torch::empty({nblocks}, torch::kFloat32);
        exp_avg_q_[i]    = {load("exp_avg." + name, codes), load("exp_avg_absmax." + name, scales)};
        exp_avg_sq_q_[i] = {load("exp_avg_sq." + name, codes),
                            load("exp_avg_sq_absmax." + name, scales)};
    }
}

int64_t AdamW8bit::state_bytes() const {
    int64_t bytes = 0;
    for (size_t i = 0; i < params_.size(); ++i) {
        for (const auto* q : {&exp_avg_q_[i], &exp_avg_sq_q_[i]})
            if (q->codes.defined())
                bytes += q->codes.numel() * q->codes.element_size() +
                         q->absmax.numel() * q->absmax.element_size();
        for (const auto* t : {&exp_avg_[i], &exp_avg_sq_[i]})
            if (t->defined()) bytes += t->numel() * t->element_size();
    }
    return bytes;
}

}  // namespace t2i::training
