// Implements: the UNet's down, mid and up blocks and the VAE's encoder/decoder blocks.
// Mirrors: diffusers models/unets/unet_2d_blocks.py (v0.27): DownBlock2D, CrossAttnDownBlock2D,
// UNetMidBlock2DCrossAttn, UpBlock2D, CrossAttnUpBlock2D, DownEncoderBlock2D, UpDecoderBlock2D,
// UNetMidBlock2D.
// Letters: N batch, C channels, H/W spatial size, T temb channels, L context tokens.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "models/attention.h"
#include "models/resnet.h"

namespace t2i::models {

// Everything get_down_block / get_up_block pass to a block.
struct BlockOptions {
    int64_t num_layers;
    int64_t in_channels;
    int64_t out_channels;
    int64_t prev_output_channel         = 0;      // up blocks only
    int64_t temb_channels               = 0;      // 0 = none (VAE)
    bool add_sample                     = false;  // add_downsample / add_upsample
    double resnet_eps                   = 1e-5;
    Activation resnet_act_fn            = Activation::kSiLU;
    int64_t resnet_groups               = 32;
    std::string resnet_time_scale_shift = "default";
    bool resnet_skip_time_act           = false;
    double output_scale_factor          = 1.0;
    double dropout                      = 0.0;
    int64_t downsample_padding          = 1;
    // cross-attention blocks
    bool has_cross_attention             = false;
    int64_t transformer_layers_per_block = 1;
    int64_t num_attention_heads          = 1;
    int64_t cross_attention_dim          = 0;
    bool use_linear_projection           = false;
    bool only_cross_attention            = false;
    bool upcast_attention                = false;
    // VAE mid block
    int64_t attention_head_dim = 0;
    bool add_attention         = true;  // mid_block_add_attention (VAE)
};

// DownBlock2D / CrossAttnDownBlock2D (has_cross_attention) / DownEncoderBlock2D (temb 0).
struct DownBlockImpl : torch::nn::Module {
    explicit DownBlockImpl(const BlockOptions& options);
    // x [N, Cin, H, W] -> [N, C, H/2, W/2]; appends every intermediate output to `res_samples`.
    torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb,
                          const torch::Tensor& context, std::vector<torch::Tensor>* res_samples);

    bool gradient_checkpointing = false;  // see UNet2DConditionModel::enable_gradient_checkpointing
    torch::nn::ModuleList resnets{nullptr};
    torch::nn::ModuleList attentions{nullptr};    // Transformer2DModel per resnet
    torch::nn::ModuleList downsamplers{nullptr};  // one Downsample2D
};
TORCH_MODULE(DownBlock);

// UNetMidBlock2DCrossAttn (has_cross_attention) or the VAE's UNetMidBlock2D.
struct MidBlockImpl : torch::nn::Module {
    explicit MidBlockImpl(const BlockOptions& options);
    torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb,
                          const torch::Tensor& context);  // [N, C, H, W] -> same

    bool has_cross_attention;
    bool gradient_checkpointing = false;
    torch::nn::ModuleList resnets{nullptr};
    torch::nn::ModuleList attentions{nullptr};
};
TORCH_MODULE(MidBlock);

// UpBlock2D / CrossAttnUpBlock2D: each resnet first concatenates one skip connection.
struct UpBlockImpl : torch::nn::Module {
    explicit UpBlockImpl(const BlockOptions& options);
    // Pops its skip connections off the back of `res_samples`.
    torch::Tensor forward(const torch::Tensor& x, std::vector<torch::Tensor>* res_samples,
                          const torch::Tensor& temb, const torch::Tensor& context,
                          c10::optional<std::vector<int64_t>> upsample_size);

    bool gradient_checkpointing = false;
    torch::nn::ModuleList resnets{nullptr};
    torch::nn::ModuleList attentions{nullptr};
    torch::nn::ModuleList upsamplers{nullptr};
};
TORCH_MODULE(UpBlock);

// UpDecoderBlock2D: resnets without skip connections (VAE decoder).
struct UpDecoderBlockImpl : torch::nn::Module {
    explicit UpDecoderBlockImpl(const BlockOptions& options);
    torch::Tensor forward(const torch::Tensor& x);

    torch::nn::ModuleList resnets{nullptr};
    torch::nn::ModuleList upsamplers{nullptr};
};
TORCH_MODULE(UpDecoderBlock);

}  // namespace t2i::models
