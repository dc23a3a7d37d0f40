// Implements: UNet2DConditionConfig (from unet/config.json) and UNet2DConditionModel.
// Mirrors: diffusers models/unets/unet_2d_condition.py (v0.27), for the options SD 1.x / 2.x use.
// Letters: N batch, C channels, H/W latent size, L context tokens, Dc context width.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "io/json_config.h"
#include "models/embeddings.h"
#include "models/unet_blocks.h"

namespace t2i::models {

struct UNet2DConditionConfig {
    int64_t sample_size                       = 64;  // latent size the model was trained at
    int64_t in_channels                       = 4;
    int64_t out_channels                      = 4;
    bool center_input_sample                  = false;
    bool flip_sin_to_cos                      = true;
    int64_t freq_shift                        = 0;
    std::vector<std::string> down_block_types = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                 "CrossAttnDownBlock2D", "DownBlock2D"};
    std::string mid_block_type                = "UNetMidBlock2DCrossAttn";  // "" = none
    std::vector<std::string> up_block_types   = {"UpBlock2D", "CrossAttnUpBlock2D",
                                                 "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
    std::vector<bool> only_cross_attention;  // per down block
    std::vector<int64_t> block_out_channels = {320, 640, 1280, 1280};
    std::vector<int64_t> layers_per_block;  // per down block (2)
    int64_t downsample_padding    = 1;
    double mid_block_scale_factor = 1.0;
    double dropout                = 0.0;
    std::string act_fn            = "silu";
    int64_t norm_num_groups       = 32;
    double norm_eps               = 1e-5;
    std::vector<int64_t> cross_attention_dim;           // per down block (768)
    std::vector<int64_t> transformer_layers_per_block;  // per down block (1)
    // Heads per down block. diffusers' config calls this `attention_head_dim` for SD 1.x / 2.x
    // (a naming mistake kept for compatibility): `num_attention_heads or attention_head_dim`.
    std::vector<int64_t> num_attention_heads;
    bool use_linear_projection          = false;
    bool upcast_attention               = false;
    std::string resnet_time_scale_shift = "default";
    bool resnet_skip_time_act           = false;
    double resnet_out_scale_factor      = 1.0;
    std::string time_embedding_type     = "positional";
    int64_t conv_in_kernel              = 3;
    int64_t conv_out_kernel             = 3;
    nlohmann::json raw;  // the file as read, written back on save

    static UNet2DConditionConfig from_json(const io::JsonConfig& config);
};

// Intermediate activations, recorded when a map is passed to forward (tests, debugging).
using ActivationMap = std::map<std::string, torch::Tensor>;

struct UNet2DConditionModelImpl : torch::nn::Module {
    explicit UNet2DConditionModelImpl(const UNet2DConditionConfig& config);

    // sample [N, Cin, H, W]; timestep 0-d (broadcast) or [N]; encoder_hidden_states [N, L, Dc]
    // -> [N, Cout, H, W].
    torch::Tensor forward(const torch::Tensor& sample, const torch::Tensor& timestep,
                          const torch::Tensor& encoder_hidden_states,
                          ActivationMap* activations = nullptr);

    // diffusers' enable_gradient_checkpointing() / disable_gradient_checkpointing(): while the
    // model is in training mode and grad is enabled, every resnet and Transformer2DModel call in
    // the down / mid / up blocks keeps only its inputs and is recomputed in backward (the same
    // gradients for about one extra forward pass, with far fewer stored activations).
    void enable_gradient_checkpointing(bool enable = true);
    bool is_gradient_checkpointing() const;

    UNet2DConditionConfig config;
    bool gradient_checkpointing = false;  // mirrored into the blocks; not part of the config
    Activation act;
    int64_t num_upsamplers = 0;
    Timesteps time_proj{nullptr};
    TimestepEmbedding time_embedding{nullptr};  // [4 C0]
    torch::nn::Conv2d conv_in{nullptr};         // [C0, Cin, k, k]
    torch::nn::ModuleList down_blocks{nullptr};
    MidBlock mid_block{nullptr};
    torch::nn::ModuleList up_blocks{nullptr};
    AutocastGroupNorm conv_norm_out{nullptr};  // [C0]
    torch::nn::Conv2d conv_out{nullptr};       // [Cout, C0, k, k]
};
TORCH_MODULE(UNet2DConditionModel);

}  // namespace t2i::models
