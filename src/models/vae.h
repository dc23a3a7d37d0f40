// Implements: AutoencoderKLConfig (from vae/config.json), Encoder, Decoder,
// DiagonalGaussianDistribution and AutoencoderKL.
// Mirrors: diffusers models/autoencoders/autoencoder_kl.py and vae.py (v0.27).
// Letters: N batch, H/W image size, f = 2^(blocks-1) downscale, Z latent channels.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "io/json_config.h"
#include "models/unet_blocks.h"

namespace t2i::models {

struct AutoencoderKLConfig {
    int64_t in_channels                       = 3;
    int64_t out_channels                      = 3;
    std::vector<std::string> down_block_types = {"DownEncoderBlock2D"};
    std::vector<std::string> up_block_types   = {"UpDecoderBlock2D"};
    std::vector<int64_t> block_out_channels   = {64};
    int64_t layers_per_block                  = 1;
    std::string act_fn                        = "silu";
    int64_t latent_channels                   = 4;
    int64_t norm_num_groups                   = 32;
    int64_t sample_size                       = 32;
    double scaling_factor                     = 0.18215;
    c10::optional<double> shift_factor;
    bool force_upcast            = true;
    bool use_quant_conv          = true;
    bool use_post_quant_conv     = true;
    bool mid_block_add_attention = true;
    nlohmann::json raw;

    static AutoencoderKLConfig from_json(const io::JsonConfig& config);
    // 2^(number of blocks - 1): pixels per latent along each side (8 for SD).
    int64_t vae_scale_factor() const { return int64_t{1} << (block_out_channels.size() - 1); }
};

// x [N, 3, H, W] -> [N, 2Z, H/f, W/f] (mean and logvar stacked).
struct EncoderImpl : torch::nn::Module {
    explicit EncoderImpl(const AutoencoderKLConfig& config);
    torch::Tensor forward(const torch::Tensor& x);

    Activation act;
    torch::nn::Conv2d conv_in{nullptr};
    torch::nn::ModuleList down_blocks{nullptr};
    MidBlock mid_block{nullptr};
    AutocastGroupNorm conv_norm_out{nullptr};
    torch::nn::Conv2d conv_out{nullptr};
};
TORCH_MODULE(Encoder);

// z [N, Z, h, w] -> [N, 3, h f, w f].
struct DecoderImpl : torch::nn::Module {
    explicit DecoderImpl(const AutoencoderKLConfig& config);
    torch::Tensor forward(const torch::Tensor& z);

    Activation act;
    torch::nn::Conv2d conv_in{nullptr};
    MidBlock mid_block{nullptr};
    torch::nn::ModuleList up_blocks{nullptr};
    AutocastGroupNorm conv_norm_out{nullptr};
    torch::nn::Conv2d conv_out{nullptr};
};
TORCH_MODULE(Decoder);

// The encoder's posterior N(mean, exp(logvar)), logvar clamped to [-30, 20].
struct DiagonalGaussianDistribution {
    explicit DiagonalGaussianDistribution(const torch::Tensor& moments);  // [N, 2Z, h, w]
    // mean + std * eps; eps drawn from `generator` (or the default one) when undefined.
    torch::Tensor sample(const torch::Tensor& eps               = {},
                         c10::optional<at::Generator> generator = c10::nullopt) const;
    torch::Tensor mode() const { return mean; }

    torch::Tensor mean, logvar, std, var;  // [N, Z, h, w]
};

struct AutoencoderKLImpl : torch::nn::Module {
    explicit AutoencoderKLImpl(const AutoencoderKLConfig& config);
    DiagonalGaussianDistribution encode(const torch::Tensor& x);  // x [N, 3, H, W] in [-1, 1]
    torch::Tensor decode(const torch::Tensor& z);                 // z unscaled latents

    AutoencoderKLConfig config;
    Encoder encoder{nullptr};
    Decoder decoder{nullptr};
    torch::nn::Conv2d quant_conv{nullptr};       // [2Z, 2Z, 1, 1]
    torch::nn::Conv2d post_quant_conv{nullptr};  // [Z, Z, 1, 1]
};
TORCH_MODULE(AutoencoderKL);

}  // namespace t2i::models
