// Implements: AutocastGroupNorm and AutocastLayerNorm: torch::nn::GroupNorm / LayerNorm (same
// options, same `weight` / `bias` parameters, so checkpoint keys do not change) that compute in
// fp32 whenever the input is bf16 / fp16.
// Mirrors: autocast's fp32 cast policy for group_norm / layer_norm
// (aten/src/ATen/autocast_mode.cpp, CUDA op list), and diffusers' FP32LayerNorm / the original LDM
// code's GroupNorm32
// (`super().forward(x.float()).type(x.dtype)`). Two cases:
//   - autocast: reduced-precision input, fp32 weights. Computed and returned in fp32, as CUDA
//     autocast does; the next matmul / conv casts back down. libtorch 1.13's CPU autocast lists
//     neither op, and its kernels throw on a bf16 input with fp32 weights.
//   - a model cast entirely to bf16 / fp16 (frozen VAE, text encoder): computed in fp32 and cast
//     back to the input dtype. libtorch 1.13's native bf16 CPU kernels lose the statistics when
//     the mean is large (measured 16% error at mean 50 vs 0.2% after one bf16 rounding).
// fp32 inputs take the stock forward, untouched: the reference path.
#pragma once

#include <torch/torch.h>

namespace t2i::models {

struct AutocastGroupNormImpl : torch::nn::GroupNormImpl {
    using torch::nn::GroupNormImpl::GroupNormImpl;
    torch::Tensor forward(const torch::Tensor& input);  // [N, C, *] -> same shape
};
TORCH_MODULE(AutocastGroupNorm);

struct AutocastLayerNormImpl : torch::nn::LayerNormImpl {
    using torch::nn::LayerNormImpl::LayerNormImpl;
    torch::Tensor forward(const torch::Tensor& input);  // [*, normalized_shape] -> same shape
};
TORCH_MODULE(AutocastLayerNorm);

}  // namespace t2i::models
