// Implements: models/normalization.h.
#include "models/normalization.h"

namespace t2i::models {

namespace {

bool is_reduced_precision(const torch::Tensor& t) {
    return t.scalar_type() == torch::kBFloat16 || t.scalar_type() == torch::kHalf;
}

torch::Tensor to_fp32(const torch::Tensor& t) { return t.defined() ? t.to(torch::kFloat32) : t; }

// fp32 weights (autocast): keep the fp32 result. Reduced-precision weights: back to the input's
// dtype, so a model cast to bf16 stays bf16 throughout.
torch::Tensor result_dtype(const torch::Tensor& out, const torch::Tensor& input,
                           const torch::Tensor& weight) {
    if (weight.defined() && weight.scalar_type() == torch::kFloat32) return out;
    return out.to(input.scalar_type());
}

}  // namespace

torch::Tensor AutocastGroupNormImpl::forward(const torch::Tensor& input) {
    if (!is_reduced_precision(input)) return torch::nn::GroupNormImpl::forward(input);
    auto out = torch::group_norm(to_fp32(input), options.num_groups(), to_fp32(weight),
                                 to_fp32(bias), options.eps());
    return result_dtype(out, input, weight);
}

torch::Tensor AutocastLayerNormImpl::forward(const torch::Tensor& input) {
    if (!is_reduced_precision(input)) return torch::nn::LayerNormImpl::forward(input);
    auto out = torch::layer_norm(to_fp32(input), options.normalized_shape(), to_fp32(weight),
                                 to_fp32(bias), options.eps());
    return result_dtype(out, input, weight);
}

}  // namespace t2i::models
