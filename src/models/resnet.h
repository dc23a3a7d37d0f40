// Implements: ResnetBlock2D, Downsample2D, Upsample2D.
// Mirrors: diffusers models/resnet.py, models/downsampling.py, models/upsampling.py (v0.27).
// Letters: N batch, C channels, H/W spatial size, T temb channels.
#pragma once

#include <torch/torch.h>

#include "models/activations.h"
#include "models/normalization.h"

namespace t2i::models {

struct ResnetBlock2DOptions {
    int64_t in_channels;
    int64_t out_channels;
    int64_t temb_channels           = 512;  // 0 = no time embedding (the VAE)
    int64_t groups                  = 32;
    double eps                      = 1e-6;
    double dropout                  = 0.0;
    Activation non_linearity        = Activation::kSiLU;
    std::string time_embedding_norm = "default";  // or "scale_shift"
    bool skip_time_act              = false;
    double output_scale_factor      = 1.0;
};

// norm1 -> act -> conv1 (+ temb) -> norm2 -> act -> dropout -> conv2, plus the (1x1) shortcut.
struct ResnetBlock2DImpl : torch::nn::Module {
    explicit ResnetBlock2DImpl(const ResnetBlock2DOptions& options);
    // x [N, Cin, H, W], temb [N, T] or undefined -> [N, Cout, H, W]
    torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb = {});

    ResnetBlock2DOptions options;
    AutocastGroupNorm norm1{nullptr};          // [Cin]
    torch::nn::Conv2d conv1{nullptr};          // [Cout, Cin, 3, 3]
    torch::nn::Linear time_emb_proj{nullptr};  // [Cout or 2 Cout, T]
    AutocastGroupNorm norm2{nullptr};          // [Cout]
    torch::nn::Dropout dropout{nullptr};
    torch::nn::Conv2d conv2{nullptr};          // [Cout, Cout, 3, 3]
    torch::nn::Conv2d conv_shortcut{nullptr};  // [Cout, Cin, 1, 1] when Cin != Cout
};
TORCH_MODULE(ResnetBlock2D);

// Strided 3x3 conv halving H and W. padding 0 means "pad right/bottom by one first", as the
// original VAE (downsample_padding 0) does.
struct Downsample2DImpl : torch::nn::Module {
    Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding);
    torch::Tensor forward(const torch::Tensor& x);  // [N, C, H, W] -> [N, Cout, H/2, W/2]

    int64_t padding;
    torch::nn::Conv2d conv{nullptr};  // [Cout, C, 3, 3], stride 2
};
TORCH_MODULE(Downsample2D);

// Nearest-neighbour x2 (or to `output_size`) then a 3x3 conv.
struct Upsample2DImpl : torch::nn::Module {
    Upsample2DImpl(int64_t channels, int64_t out_channels);
    // [N, C, H, W] -> [N, Cout, 2H, 2W] (or output_size)
    torch::Tensor forward(const torch::Tensor& x,
                          c10::optional<std::vector<int64_t>> output_size = c10::nullopt);

    torch::nn::Conv2d conv{nullptr};  // [Cout, C, 3, 3]
};
TORCH_MODULE(Upsample2D);

}  // namespace t2i::models
