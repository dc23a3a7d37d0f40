// Implements: models/vae.h.
#include "models/vae.h"

#include <cmath>
#include <stdexcept>

#include "models/config_limits.h"

namespace t2i::models {

namespace {

BlockOptions vae_block(const AutoencoderKLConfig& c, Activation act) {
    BlockOptions b{};
    b.temb_channels = 0;  // the VAE has no time embedding
    b.resnet_eps    = 1e-6;
    b.resnet_act_fn = act;
    b.resnet_groups = c.norm_num_groups;
    return b;
}

MidBlock vae_mid_block(const AutoencoderKLConfig& c, Activation act) {
    BlockOptions b  = vae_block(c, act);
    b.num_layers    = 1;
    b.add_attention = c.mid_block_add_attention;
    b.in_channels = b.out_channels = c.block_out_channels.back();
    b.attention_head_dim           = c.block_out_channels.back();
    return MidBlock(b);
}

torch::nn::Conv2d conv3x3(int64_t in, int64_t out) {
    return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1));
}

// The architecture's real constraints (config_limits.h), checked before anything is allocated.
void check_limits(const io::JsonConfig& c, const AutoencoderKLConfig& cfg) {
    const auto& ch = cfg.block_out_channels;
    c.check_range("block_out_channels", static_cast<double>(ch.size()), 1, kMaxBlocks,
                  "the number of blocks");
    check_each(c, "block_out_channels", ch, 1, kMaxChannels);
    c.check_range("in_channels", static_cast<double>(cfg.in_channels), 1, kMaxChannels);
    c.check_range("out_channels", static_cast<double>(cfg.out_channels), 1, kMaxChannels);
    c.check_range("latent_channels", static_cast<double>(cfg.latent_channels), 1, kMaxChannels);
    c.check_range("layers_per_block", static_cast<double>(cfg.layers_per_block), 1, kMaxLayers);
    c.check_range("sample_size", static_cast<double>(cfg.sample_size), 1, kMaxSampleSize);
    c.check_range("norm_num_groups", static_cast<double>(cfg.norm_num_groups), 1, kMaxChannels,
                  "GroupNorm groups");
    for (size_t i = 0; i < ch.size(); ++i)
        if (ch[i] % cfg.norm_num_groups != 0)
            c.fail("block_out_channels[" + std::to_string(i) + "]",
                   "= " + std::to_string(ch[i]) + " is not divisible by norm_num_groups = " +
                       std::to_string(cfg.norm_num_groups) +
                       " (GroupNorm splits the channels into that many groups)");
    // Latents are multiplied by it (and divided by it before decoding).
    c.check_range("scaling_factor", std::abs(cfg.scaling_factor), 1e-6, 1e6,
                  "a non-zero latent scale");
    if (cfg.shift_factor) c.check_range("shift_factor", *cfg.shift_factor, -1e6, 1e6);
    // Encoder and decoder resnets (two 3x3 convolutions each), the decoder has one more per block.
    double params = 0;
    for (const auto c_i : ch)
        params += (4.0 * static_cast<double>(cfg.layers_per_block) + 2) * 18.0 *
                  static_cast<double>(c_i) * static_cast<double>(c_i);
    check_parameter_budget(c, params);
}

}  // namespace

AutoencoderKLConfig AutoencoderKLConfig::from_json(const io::JsonConfig& c) {
    AutoencoderKLConfig cfg;
    cfg.raw                = c.json();
    cfg.in_channels        = c.get<int64_t>("in_channels", 3);
    cfg.out_channels       = c.get<int64_t>("out_channels", 3);
    cfg.down_block_types   = c.get("down_block_types", cfg.down_block_types);
    cfg.up_block_types     = c.get("up_block_types", cfg.up_block_types);
    cfg.block_out_channels = c.get("block_out_channels", cfg.block_out_channels);
    cfg.layers_per_block   = c.get<int64_t>("layers_per_block", 1);
    cfg.act_fn             = c.get<std::string>("act_fn", "silu");
    cfg.latent_channels    = c.get<int64_t>("latent_channels", 4);
    cfg.norm_num_groups    = c.get<int64_t>("norm_num_groups", 32);
    // 0.27 also accepts a list here; the first entry is what pipelines read.
    cfg.sample_size    = c.has("sample_size") && c.json().at("sample_size").is_array()
                             ? c.get<std::vector<int64_t>>("sample_size").at(0)
                             : c.get<int64_t>("sample_size", 32);
    cfg.scaling_factor = c.get<double>("scaling_factor", 0.18215);
    if (c.has("shift_factor")) cfg.shift_factor = c.get<double>("shift_factor");
    cfg.force_upcast            = c.get<bool>("force_upcast", true);
    cfg.use_quant_conv          = c.get<bool>("use_quant_conv", true);
    cfg.use_post_quant_conv     = c.get<bool>("use_post_quant_conv", true);
    cfg.mid_block_add_attention = c.get<bool>("mid_block_add_attention", true);
    const size_t n              = cfg.block_out_channels.size();
    if (cfg.down_block_types.size() != n || cfg.up_block_types.size() != n)
        throw std::runtime_error("config '" + c.path() +
                                 "': block_out_channels, down_block_types "
                                 "and up_block_types must have the same length");
    for (const auto& t : cfg.down_block_types)
        if (t != "DownEncoderBlock2D")
            throw std::runtime_error("config '" + c.path() + "': down block type '" + t +
                                     "' is not supported (expected DownEncoderBlock2D)");
    for (const auto& t : cfg.up_block_types)
        if (t != "UpDecoderBlock2D")
            throw std::runtime_error("config '" + c.path() + "': up block type '" + t +
                                     "' is not supported (expected UpDecoderBlock2D)");
    check_limits(c, cfg);
    return cfg;
}

EncoderImpl::EncoderImpl(const AutoencoderKLConfig& c)
    : act(parse_activation(c.act_fn, "vae config act_fn")) {
    const auto& ch         = c.block_out_channels;
    conv_in                = register_module("conv_in", conv3x3(c.in_channels, ch[0]));
    down_blocks            = register_module("down_blocks", torch::nn::ModuleList());
    int64_t output_channel = ch[0];
    for (size_t i = 0; i < ch.size(); ++i) {
        BlockOptions b = vae_block(c, act);
        b.num_layers   = c.layers_per_block;
        b.in_channels  = output_channel;
        b.out_channels = output_channel = ch[i];
        b.add_sample                    = i + 1 < ch.size();
        b.downsample_padding            = 0;
        down_blocks->push_back(DownBlock(b));
    }
    mid_block     = register_module("mid_block", vae_mid_block(c, act));
    conv_norm_out = register_module(
        "conv_norm_out",
        AutocastGroupNorm(torch::nn::GroupNormOptions(c.norm_num_groups, ch.back()).eps(1e-6)));
    conv_out = register_module("conv_out", conv3x3(ch.back(), 2 * c.latent_channels));  // double_z
}

torch::Tensor EncoderImpl::forward(const torch::Tensor& x) {
    auto h = conv_in(x);  // [N, C0, H, W]
    for (const auto& block : *down_blocks) h = block->as<DownBlock>()->forward(h, {}, {}, nullptr);
    h = mid_block->forward(h, torch::Tensor(), torch::Tensor());  // [N, Clast, H/f, W/f]
    return conv_out(
        torch::silu(conv_norm_out(h)));  // conv_act is always nn.SiLU()     // [N, 2Z, H/f, W/f]
}

DecoderImpl::DecoderImpl(const AutoencoderKLConfig& c)
    : act(parse_activation(c.act_fn, "vae config act_fn")) {
    const auto& ch         = c.block_out_channels;
    conv_in                = register_module("conv_in", conv3x3(c.latent_channels, ch.back()));
    mid_block              = register_module("mid_block", vae_mid_block(c, act));
    up_blocks              = register_module("up_blocks", torch::nn::ModuleList());
    int64_t output_channel = ch.back();
    for (size_t i = 0; i < ch.size(); ++i) {
        BlockOptions b = vae_block(c, act);
        b.num_layers   = c.layers_per_block + 1;
        b.in_channels  = output_channel;
        b.out_channels = output_channel = ch[ch.size() - 1 - i];
        b.add_sample                    = i + 1 < ch.size();
        up_blocks->push_back(UpDecoderBlock(b));
    }
    conv_norm_out = register_module(
        "conv_norm_out",
        AutocastGroupNorm(torch::nn::GroupNormOptions(c.norm_num_groups, ch[0]).eps(1e-6)));
    conv_out = register_module("conv_out", conv3x3(ch[0], c.out_channels));
}

torch::Tensor DecoderImpl::forward(const torch::Tensor& z) {
    auto h = conv_in(z);  // [N, Clast, h, w]
    h      = mid_block->forward(h, torch::Tensor(), torch::Tensor());
    for (const auto& block : *up_blocks) h = block->as<UpDecoderBlock>()->forward(h);
    return conv_out(
        torch::silu(conv_norm_out(h)));  // conv_act is always nn.SiLU()  // [N, 3, h f, w f]
}

DiagonalGaussianDistribution::DiagonalGaussianDistribution(const torch::Tensor& moments) {
    auto chunks = moments.chunk(2, 1);
    mean        = chunks[0];
    logvar      = torch::clamp(chunks[1], -30.0, 20.0);
    std         = torch::exp(0.5 * logvar);
    var         = torch::exp(logvar);
}

torch::Tensor DiagonalGaussianDistribution::sample(const torch::Tensor& eps,
                                                   c10::optional<at::Generator> generator) const {
    if (eps.defined()) return mean + std * eps;
    // Drawn where the generator lives, then moved (diffusers' randn_tensor).
    const auto where = generator && generator->defined() ? generator->device() : mean.device();
    return mean +
           std * at::randn(mean.sizes(), generator, mean.options().device(where)).to(mean.device());
}

AutoencoderKLImpl::AutoencoderKLImpl(const AutoencoderKLConfig& c) : config(c) {
    const int64_t z = c.latent_channels;
    encoder         = register_module("encoder", Encoder(c));
    decoder         = register_module("decoder", Decoder(c));
    if (c.use_quant_conv)
        quant_conv = register_module("quant_conv",
                                     torch::nn::Conv2d(torch::nn::Conv2dOptions(2 * z, 2 * z, 1)));
    if (c.use_post_quant_conv)
        post_quant_conv = register_module("post_quant_conv",
                                          torch::nn::Conv2d(torch::nn::Conv2dOptions(z, z, 1)));
}

DiagonalGaussianDistribution AutoencoderKLImpl::encode(const torch::Tensor& x) {
    auto h = encoder(x);
    return DiagonalGaussianDistribution(quant_conv ? quant_conv(h) : h);
}

torch::Tensor AutoencoderKLImpl::decode(const torch::Tensor& z) {
    return decoder(post_quant_conv ? post_quant_conv(z) : z);
}

}  // namespace t2i::models
