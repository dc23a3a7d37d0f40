// Implements: models/embeddings.h.
#include "models/embeddings.h"

#include <cmath>

namespace t2i::models {

torch::Tensor get_timestep_embedding(const torch::Tensor& timesteps, int64_t embedding_dim,
                                     bool flip_sin_to_cos, double downscale_freq_shift,
                                     double scale, double max_period) {
    TORCH_CHECK(timesteps.dim() == 1, "timesteps should be a 1-d tensor, got shape ",
                timesteps.sizes());
    const int64_t half_dim = embedding_dim / 2;
    auto f32      = torch::TensorOptions().dtype(torch::kFloat32).device(timesteps.device());
    auto exponent = -std::log(max_period) * torch::arange(0, half_dim, f32);  // [half]
    exponent      = exponent / (half_dim - downscale_freq_shift);
    auto emb      = torch::exp(exponent);
    emb           = timesteps.unsqueeze(1).to(torch::kFloat32) * emb.unsqueeze(0);  // [N, half]
    emb           = scale * emb;
    emb           = torch::cat({torch::sin(emb), torch::cos(emb)}, -1);  // [N, 2*half]
    if (flip_sin_to_cos) emb = torch::cat({emb.slice(1, half_dim), emb.slice(1, 0, half_dim)}, -1);
    if (embedding_dim % 2 == 1) emb = torch::constant_pad_nd(emb, {0, 1, 0, 0});
    return emb;
}

TimestepsImpl::TimestepsImpl(int64_t num_channels, bool flip_sin_to_cos,
                             double downscale_freq_shift)
    : num_channels(num_channels),
      flip_sin_to_cos(flip_sin_to_cos),
      downscale_freq_shift(downscale_freq_shift) {}

torch::Tensor TimestepsImpl::forward(const torch::Tensor& timesteps) {
    return get_timestep_embedding(timesteps, num_channels, flip_sin_to_cos, downscale_freq_shift);
}

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim,
                                             Activation act)
    : act(act) {
    linear_1 = register_module("linear_1", torch::nn::Linear(in_channels, time_embed_dim));
    linear_2 = register_module("linear_2", torch::nn::Linear(time_embed_dim, time_embed_dim));
}

torch::Tensor TimestepEmbeddingImpl::forward(const torch::Tensor& sample) {
    return linear_2(apply_activation(act, linear_1(sample)));
}

}  // namespace t2i::models
