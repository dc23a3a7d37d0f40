// Implements: sinusoidal timestep features and the timestep MLP.
// Mirrors: diffusers models/embeddings.py (get_timestep_embedding, Timesteps, TimestepEmbedding).
#pragma once

#include <torch/torch.h>

#include "models/activations.h"

namespace t2i::models {

// timesteps [N] (any numeric dtype) -> [N, embedding_dim] float32.
// "Attention Is All You Need" section 3.5 with diffusers' shift and sin/cos order options.
torch::Tensor get_timestep_embedding(const torch::Tensor& timesteps, int64_t embedding_dim,
                                     bool flip_sin_to_cos, double downscale_freq_shift,
                                     double scale = 1.0, double max_period = 10000.0);

// Parameter-free module: the `time_proj` of UNet2DConditionModel.
struct TimestepsImpl : torch::nn::Module {
    TimestepsImpl(int64_t num_channels, bool flip_sin_to_cos, double downscale_freq_shift);
    torch::Tensor forward(const torch::Tensor& timesteps);  // [N] -> [N, num_channels]

    int64_t num_channels;
    bool flip_sin_to_cos;
    double downscale_freq_shift;
};
TORCH_MODULE(Timesteps);

// linear_1 -> act -> linear_2: [N, in_channels] -> [N, time_embed_dim].
struct TimestepEmbeddingImpl : torch::nn::Module {
    TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim, Activation act);
    torch::Tensor forward(const torch::Tensor& sample);

    torch::nn::Linear linear_1{nullptr};  // [time_embed_dim, in_channels]
    torch::nn::Linear linear_2{nullptr};  // [time_embed_dim, time_embed_dim]
    Activation act;
};
TORCH_MODULE(TimestepEmbedding);

}  // namespace t2i::models
