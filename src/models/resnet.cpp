// Implements: models/resnet.h.
#include "models/resnet.h"

#include <stdexcept>

namespace t2i::models {

namespace F = torch::nn::functional;

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& o) : options(o) {
    using torch::nn::Conv2dOptions;
    using torch::nn::GroupNormOptions;
    norm1 = register_module(
        "norm1", AutocastGroupNorm(GroupNormOptions(o.groups, o.in_channels).eps(o.eps)));
    conv1 = register_module(
        "conv1", torch::nn::Conv2d(Conv2dOptions(o.in_channels, o.out_channels, 3).padding(1)));
    if (o.temb_channels > 0) {
        int64_t proj_out = o.out_channels;
        if (o.time_embedding_norm == "scale_shift")
            proj_out = 2 * o.out_channels;
        else if (o.time_embedding_norm != "default")
            throw std::runtime_error("ResnetBlock2D: unknown resnet_time_scale_shift '" +
                                     o.time_embedding_norm + "' (expected default or scale_shift)");
        time_emb_proj =
            register_module("time_emb_proj", torch::nn::Linear(o.temb_channels, proj_out));
    }
    norm2 = register_module(
        "norm2", AutocastGroupNorm(GroupNormOptions(o.groups, o.out_channels).eps(o.eps)));
    dropout = register_module("dropout", torch::nn::Dropout(o.dropout));
    conv2   = register_module(
          "conv2", torch::nn::Conv2d(Conv2dOptions(o.out_channels, o.out_channels, 3).padding(1)));
    if (o.in_channels != o.out_channels)
        conv_shortcut = register_module(
            "conv_shortcut", torch::nn::Conv2d(Conv2dOptions(o.in_channels, o.out_channels, 1)));
}

torch::Tensor ResnetBlock2DImpl::forward(const torch::Tensor& x, const torch::Tensor& temb) {
    auto h = conv1(apply_activation(options.non_linearity, norm1(x)));  // [N, Cout, H, W]
    torch::Tensor t;
    if (time_emb_proj && temb.defined()) {
        t = options.skip_time_act ? temb : apply_activation(options.non_linearity, temb);
        t = time_emb_proj(t).unsqueeze(-1).unsqueeze(-1);  // [N, Cout(x2), 1, 1]
    }
    if (options.time_embedding_norm == "scale_shift" && t.defined()) {
        auto chunks = t.chunk(2, 1);
        h           = norm2(h) * (1 + chunks[0]) + chunks[1];
    } else {
        if (t.defined()) h = h + t;
        h = norm2(h);
    }
    h             = conv2(dropout(apply_activation(options.non_linearity, h)));
    auto shortcut = conv_shortcut ? conv_shortcut(x) : x;
    auto out      = shortcut + h;
    if (options.output_scale_factor != 1.0) out = out / options.output_scale_factor;
    return out;
}

Downsample2DImpl::Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding)
    : padding(padding) {
    conv = register_module(
        "conv",
        torch::nn::Conv2d(
            torch::nn::Conv2dOptions(channels, out_channels, 3).stride(2).padding(padding)));
}

torch::Tensor Downsample2DImpl::forward(const torch::Tensor& x) {
    if (padding == 0) return conv(torch::constant_pad_nd(x, {0, 1, 0, 1}, 0));
    return conv(x);
}

Upsample2DImpl::Upsample2DImpl(int64_t channels, int64_t out_channels) {
    conv = register_module(
        "conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, out_channels, 3).padding(1)));
}

torch::Tensor Upsample2DImpl::forward(const torch::Tensor& x,
                                      c10::optional<std::vector<int64_t>> output_size) {
    // Nearest upsampling has no bf16 CPU kernel in older torch; diffusers upcasts the same way.
    auto h    = x.scalar_type() == torch::kBFloat16 ? x.to(torch::kFloat32) : x;
    auto opts = F::InterpolateFuncOptions().mode(torch::kNearest);
    if (output_size)
        opts.size(*output_size);
    else
        opts.scale_factor(std::vector<double>{2.0, 2.0});
    h = F::interpolate(h.contiguous(), opts);  // [N, C, 2H, 2W]
    if (x.scalar_type() == torch::kBFloat16) h = h.to(torch::kBFloat16);
    return conv(h);
}

}  // namespace t2i::models
