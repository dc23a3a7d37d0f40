// Implements: models/unet.h.
#include "models/unet.h"

#include <stdexcept>

#include "models/config_limits.h"

namespace t2i::models {

namespace {

// Per-block values: an int broadcast to every block, or a list with one entry per block.
template <typename T>
std::vector<T> per_block(const io::JsonConfig& c, const std::string& key, size_t n, T fallback) {
    if (!c.has(key)) return std::vector<T>(n, fallback);
    const auto& v = c.json().at(key);
    if (!v.is_array()) return std::vector<T>(n, c.get<T>(key));
    auto out = c.get<std::vector<T>>(key);
    if (out.size() != n)
        throw std::runtime_error("config '" + c.path() + "': '" + key + "' has " +
                                 std::to_string(out.size()) + " entries but there are " +
                                 std::to_string(n) + " down blocks");
    return out;
}

void reject_if_set(const io::JsonConfig& c, const std::string& key) {
    if (c.has(key))
        throw std::runtime_error("config '" + c.path() + "': '" + key +
                                 "' = " + c.json().at(key).dump() +
                                 " is not supported by t2i (it is not used by SD 1.x / 2.x); "
                                 "set it to null or use a Stable Diffusion 1.x / 2.x UNet");
}

// The architecture's real constraints (config_limits.h), checked before anything is allocated.
void check_limits(const io::JsonConfig& c, const UNet2DConditionConfig& cfg,
                  const std::string& heads_key) {
    const auto& ch  = cfg.block_out_channels;
    const double nb = static_cast<double>(ch.size());
    c.check_range("block_out_channels", nb, 1, kMaxBlocks, "the number of blocks");
    check_each(c, "block_out_channels", ch, 1, kMaxChannels);
    c.check_range("in_channels", static_cast<double>(cfg.in_channels), 1, kMaxChannels);
    c.check_range("out_channels", static_cast<double>(cfg.out_channels), 1, kMaxChannels);
    c.check_range("sample_size", static_cast<double>(cfg.sample_size), 1, kMaxSampleSize);
    c.check_range("norm_num_groups", static_cast<double>(cfg.norm_num_groups), 1, kMaxChannels,
                  "GroupNorm groups");
    for (size_t i = 0; i < ch.size(); ++i)
        if (ch[i] % cfg.norm_num_groups != 0)
            c.fail("block_out_channels[" + std::to_string(i) + "]",
                   "= " + std::to_string(ch[i]) + " is not divisible by norm_num_groups = " +
                       std::to_string(cfg.norm_num_groups) +
                       " (GroupNorm splits the channels into that many groups)");
    c.check_range("norm_eps", cfg.norm_eps, 1e-30, 1, "a positive epsilon");
    check_each(c, "layers_per_block", cfg.layers_per_block, 1, kMaxLayers);
    check_each(c, "transformer_layers_per_block", cfg.transformer_layers_per_block, 1, kMaxLayers);
    check_each(c, "cross_attention_dim", cfg.cross_attention_dim, 1, kMaxChannels);
    check_each(c, heads_key, cfg.num_attention_heads, 1, kMaxHeads, "attention heads per block");
    // Cross-attention blocks (and the mid block, with the last block's heads) split their
    // channels into heads: diffusers' head dim is channels // heads.
    for (size_t i = 0; i < ch.size(); ++i) {
        const bool attends = cfg.down_block_types[i] == "CrossAttnDownBlock2D" ||
                             cfg.up_block_types[ch.size() - 1 - i] == "CrossAttnUpBlock2D" ||
                             (i + 1 == ch.size() && !cfg.mid_block_type.empty());
        if (attends && ch[i] % cfg.num_attention_heads[i] != 0)
            c.fail(heads_key, "gives " + std::to_string(cfg.num_attention_heads[i]) +
                                  " heads for block " + std::to_string(i) + ", which does not " +
                                  "divide its " + std::to_string(ch[i]) + " channels");
    }
    for (const auto& [key, k] :
         {std::pair<const char*, int64_t>{"conv_in_kernel", cfg.conv_in_kernel},
          {"conv_out_kernel", cfg.conv_out_kernel}}) {
        c.check_range(key, static_cast<double>(k), 1, kMaxKernel);
        if (k % 2 == 0)
            c.fail(key, "must be odd (the padding keeps the size), got " + std::to_string(k));
    }
    c.check_range("downsample_padding", static_cast<double>(cfg.downsample_padding), 0, 1);
    c.check_range("freq_shift", static_cast<double>(cfg.freq_shift), -1e6, 1e6);
    c.check_range("dropout", cfg.dropout, 0, 0.999);
    c.check_range("mid_block_scale_factor", cfg.mid_block_scale_factor, 1e-6, 1e6);
    c.check_range("resnet_out_scale_factor", cfg.resnet_out_scale_factor, 1e-6, 1e6);
    // Parameters, from the shapes: resnets (two 3x3 convs + time projection) and transformers
    // (q, k, v, out of self and cross attention, the GEGLU feed-forward, the projections).
    double params     = 0;
    const double temb = 4.0 * static_cast<double>(ch[0]);
    for (size_t i = 0; i < ch.size(); ++i) {
        const double c_i     = static_cast<double>(ch[i]);
        const double resnets = 2.0 * static_cast<double>(cfg.layers_per_block[i]) + 1;
        params += resnets * (18 * c_i * c_i + temb * c_i);
        params += 2.0 * static_cast<double>(cfg.transformer_layers_per_block[i]) *
                  (16 * c_i * c_i + 2 * c_i * static_cast<double>(cfg.cross_attention_dim[i]));
    }
    check_parameter_budget(c, params);
}

}  // namespace

UNet2DConditionConfig UNet2DConditionConfig::from_json(const io::JsonConfig& c) {
    UNet2DConditionConfig cfg;
    cfg.raw                 = c.json();
    cfg.sample_size         = c.get<int64_t>("sample_size", cfg.sample_size);
    cfg.in_channels         = c.get<int64_t>("in_channels", cfg.in_channels);
    cfg.out_channels        = c.get<int64_t>("out_channels", cfg.out_channels);
    cfg.center_input_sample = c.get<bool>("center_input_sample", false);
    cfg.flip_sin_to_cos     = c.get<bool>("flip_sin_to_cos", true);
    cfg.freq_shift          = c.get<int64_t>("freq_shift", 0);
    cfg.down_block_types    = c.get("down_block_types", cfg.down_block_types);
    cfg.mid_block_type      = c.get<std::string>("mid_block_type", "");
    if (!c.json().contains("mid_block_type")) cfg.mid_block_type = "UNetMidBlock2DCrossAttn";
    cfg.up_block_types     = c.get("up_block_types", cfg.up_block_types);
    cfg.block_out_channels = c.get("block_out_channels", cfg.block_out_channels);
    const size_t n         = cfg.down_block_types.size();
    if (cfg.block_out_channels.size() != n || cfg.up_block_types.size() != n)
        throw std::runtime_error("config '" + c.path() +
                                 "': block_out_channels, down_block_types "
                                 "and up_block_types must have the same length");
    cfg.only_cross_attention         = per_block<bool>(c, "only_cross_attention", n, false);
    cfg.layers_per_block             = per_block<int64_t>(c, "layers_per_block", n, 2);
    cfg.downsample_padding           = c.get<int64_t>("downsample_padding", 1);
    cfg.mid_block_scale_factor       = c.get<double>("mid_block_scale_factor", 1.0);
    cfg.dropout                      = c.get<double>("dropout", 0.0);
    cfg.act_fn                       = c.get<std::string>("act_fn", "silu");
    cfg.norm_num_groups              = c.get<int64_t>("norm_num_groups", 32);
    cfg.norm_eps                     = c.get<double>("norm_eps", 1e-5);
    cfg.cross_attention_dim          = per_block<int64_t>(c, "cross_attention_dim", n, 1280);
    cfg.transformer_layers_per_block = per_block<int64_t>(c, "transformer_layers_per_block", n, 1);
    // `num_attention_heads or attention_head_dim` (unet_2d_condition.py __init__).
    const std::string heads_key =
        c.has("num_attention_heads") ? "num_attention_heads" : "attention_head_dim";
    cfg.num_attention_heads     = per_block<int64_t>(c, heads_key, n, 8);
    cfg.use_linear_projection   = c.get<bool>("use_linear_projection", false);
    cfg.upcast_attention        = c.get<bool>("upcast_attention", false);
    cfg.resnet_time_scale_shift = c.get<std::string>("resnet_time_scale_shift", "default");
    cfg.resnet_skip_time_act    = c.get<bool>("resnet_skip_time_act", false);
    cfg.resnet_out_scale_factor = c.get<double>("resnet_out_scale_factor", 1.0);
    cfg.time_embedding_type     = c.get<std::string>("time_embedding_type", "positional");
    cfg.conv_in_kernel          = c.get<int64_t>("conv_in_kernel", 3);
    cfg.conv_out_kernel         = c.get<int64_t>("conv_out_kernel", 3);
    if (cfg.time_embedding_type != "positional")
        throw std::runtime_error("config '" + c.path() + "': time_embedding_type '" +
                                 cfg.time_embedding_type +
                                 "' is not supported (expected positional)");
    for (const char* key : {"encoder_hid_dim", "class_embed_type", "num_class_embeds",
                            "addition_embed_type", "time_cond_proj_dim", "timestep_post_act",
                            "time_embedding_dim", "time_embedding_act_fn", "cross_attention_norm"})
        reject_if_set(c, key);
    if (c.get<bool>("dual_cross_attention", false)) reject_if_set(c, "dual_cross_attention");
    if (c.get<std::string>("attention_type", "default") != "default")
        reject_if_set(c, "attention_type");
    if (c.has("reverse_transformer_layers_per_block"))
        reject_if_set(c, "reverse_transformer_layers_per_block");
    for (const auto& t : cfg.down_block_types)
        if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D")
            throw std::runtime_error(
                "config '" + c.path() + "': down block type '" + t +
                "' is not supported (expected CrossAttnDownBlock2D or DownBlock2D)");
    for (const auto& t : cfg.up_block_types)
        if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D")
            throw std::runtime_error(
                "config '" + c.path() + "': up block type '" + t +
                "' is not supported (expected CrossAttnUpBlock2D or UpBlock2D)");
    if (!cfg.mid_block_type.empty() && cfg.mid_block_type != "UNetMidBlock2DCrossAttn")
        throw std::runtime_error("config '" + c.path() + "': mid_block_type '" +
                                 cfg.mid_block_type +
                                 "' is not supported (expected UNetMidBlock2DCrossAttn or null)");
    check_limits(c, cfg, heads_key);
    return cfg;
}

UNet2DConditionModelImpl::UNet2DConditionModelImpl(const UNet2DConditionConfig& cfg) : config(cfg) {
    act                          = parse_activation(cfg.act_fn, "unet config act_fn");
    const auto& ch               = cfg.block_out_channels;
    const size_t n               = ch.size();
    const int64_t time_embed_dim = ch[0] * 4;
    // 1. time
    conv_in = register_module(
        "conv_in",
        torch::nn::Conv2d(torch::nn::Conv2dOptions(cfg.in_channels, ch[0], cfg.conv_in_kernel)
                              .padding((cfg.conv_in_kernel - 1) / 2)));
    time_proj = register_module(
        "time_proj", Timesteps(ch[0], cfg.flip_sin_to_cos, static_cast<double>(cfg.freq_shift)));
    time_embedding =
        register_module("time_embedding", TimestepEmbedding(ch[0], time_embed_dim, act));

    // resnet_skip_time_act / resnet_out_scale_factor only reach the ResnetDownsample and
    // SimpleCrossAttn blocks in diffusers; the blocks SD uses keep their defaults. The mid block
    // always has self-attention (mid_block_only_cross_attention only affects SimpleCrossAttn).
    auto base = [&](size_t i, bool cross) {
        BlockOptions b{};
        b.temb_channels                = time_embed_dim;
        b.resnet_eps                   = cfg.norm_eps;
        b.resnet_act_fn                = act;
        b.resnet_groups                = cfg.norm_num_groups;
        b.resnet_time_scale_shift      = cfg.resnet_time_scale_shift;
        b.dropout                      = cfg.dropout;
        b.downsample_padding           = cfg.downsample_padding;
        b.has_cross_attention          = cross;
        b.use_linear_projection        = cfg.use_linear_projection;
        b.upcast_attention             = cfg.upcast_attention;
        b.transformer_layers_per_block = cfg.transformer_layers_per_block[i];
        b.num_attention_heads          = cfg.num_attention_heads[i];
        b.cross_attention_dim          = cfg.cross_attention_dim[i];
        b.only_cross_attention         = cfg.only_cross_attention[i];
        return b;
    };
    // 2. down
    down_blocks            = register_module("down_blocks", torch::nn::ModuleList());
    int64_t output_channel = ch[0];
    for (size_t i = 0; i < n; ++i) {
        BlockOptions b = base(i, cfg.down_block_types[i] == "CrossAttnDownBlock2D");
        b.num_layers   = cfg.layers_per_block[i];
        b.in_channels  = output_channel;
        b.out_channels = output_channel = ch[i];
        b.add_sample                    = i + 1 < n;
        down_blocks->push_back(DownBlock(b));
    }
    // 3. mid
    if (!cfg.mid_block_type.empty()) {
        BlockOptions b = base(n - 1, true);
        b.num_layers   = 1;
        b.in_channels = b.out_channels = ch[n - 1];
        b.output_scale_factor          = cfg.mid_block_scale_factor;
        b.only_cross_attention         = false;
        mid_block                      = register_module("mid_block", MidBlock(b));
    }
    // 4. up: per-block lists reversed, as in diffusers.
    up_blocks      = register_module("up_blocks", torch::nn::ModuleList());
    output_channel = ch[n - 1];
    for (size_t i = 0; i < n; ++i) {
        const size_t r        = n - 1 - i;  // index into the down-block lists
        BlockOptions b        = base(r, cfg.up_block_types[i] == "CrossAttnUpBlock2D");
        b.num_layers          = cfg.layers_per_block[r] + 1;
        b.prev_output_channel = output_channel;
        b.out_channels = output_channel = ch[r];
        b.in_channels                   = ch[n - 1 - std::min(i + 1, n - 1)];
        b.add_sample                    = i + 1 < n;
        if (b.add_sample) ++num_upsamplers;
        up_blocks->push_back(UpBlock(b));
    }
    // 5. out
    if (cfg.norm_num_groups > 0)
        conv_norm_out = register_module(
            "conv_norm_out",
            AutocastGroupNorm(
                torch::nn::GroupNormOptions(cfg.norm_num_groups, ch[0]).eps(cfg.norm_eps)));
    conv_out = register_module(
        "conv_out",
        torch::nn::Conv2d(torch::nn::Conv2dOptions(ch[0], cfg.out_channels, cfg.conv_out_kernel)
                              .padding((cfg.conv_out_kernel - 1) / 2)));
}

void UNet2DConditionModelImpl::enable_gradient_checkpointing(bool enable) {
    gradient_checkpointing = enable;
    for (const auto& block : *down_blocks) block->as<DownBlock>()->gradient_checkpointing = enable;
    if (mid_block) mid_block->gradient_checkpointing = enable;
    for (const auto& block : *up_blocks) block->as<UpBlock>()->gradient_checkpointing = enable;
}

bool UNet2DConditionModelImpl::is_gradient_checkpointing() const { return gradient_checkpointing; }

torch::Tensor UNet2DConditionModelImpl::forward(const torch::Tensor& sample_in,
                                                const torch::Tensor& timestep,
                                                const torch::Tensor& encoder_hidden_states,
                                                ActivationMap* activations) {
    auto record = [&](const std::string& name, const torch::Tensor& t) {
        if (activations) (*activations)[name] = t.detach();
    };
    // 0. Sizes that are not a multiple of 2^num_upsamplers need explicit upsample sizes.
    const int64_t factor = int64_t{1} << num_upsamplers;
    const bool forward_up_size =
        sample_in.size(-1) % factor != 0 || sample_in.size(-2) % factor != 0;
    auto sample  = config.center_input_sample ? 2.0 * sample_in - 1.0 : sample_in;
    const auto N = sample.size(0);

    // 1. time: a scalar timestep is broadcast over the batch.
    torch::Tensor timesteps;
    if (timestep.numel() == 1 && timestep.device() != sample.device())  // a sampler's CPU t:
        timesteps = torch::full({N}, timestep.item(),  // filled on the device, no copy
                                torch::dtype(timestep.scalar_type()).device(sample.device()));
    else
        timesteps = (timestep.dim() == 0 ? timestep.reshape({1}) : timestep)
                        .to(sample.device())
                        .expand({N});
    auto t_emb = time_proj(timesteps).to(sample.scalar_type());  // [N, C0]
    record("time_proj", t_emb);
    auto emb = time_embedding(t_emb);  // [N, 4 C0]
    record("time_embedding", emb);

    // 2. pre-process
    sample = conv_in(sample);  // [N, C0, H, W]
    record("conv_in", sample);

    // 3. down
    std::vector<torch::Tensor> res_samples{sample};
    for (size_t i = 0; i < down_blocks->size(); ++i) {
        sample = down_blocks[i]->as<DownBlock>()->forward(sample, emb, encoder_hidden_states,
                                                          &res_samples);
        record("down_blocks." + std::to_string(i), sample);
    }

    // 4. mid
    if (mid_block) {
        sample = mid_block(sample, emb, encoder_hidden_states);
        record("mid_block", sample);
    }

    // 5. up
    for (size_t i = 0; i < up_blocks->size(); ++i) {
        auto* block         = up_blocks[i]->as<UpBlock>();
        const bool is_final = i + 1 == up_blocks->size();
        const size_t n_res  = block->resnets->size();
        c10::optional<std::vector<int64_t>> upsample_size;
        if (!is_final && forward_up_size) {
            const auto& next_skip = res_samples[res_samples.size() - n_res - 1];
            upsample_size         = std::vector<int64_t>{next_skip.size(2), next_skip.size(3)};
        }
        sample = block->forward(sample, &res_samples, emb, encoder_hidden_states, upsample_size);
        record("up_blocks." + std::to_string(i), sample);
    }

    // 6. post-process
    if (conv_norm_out) sample = apply_activation(act, conv_norm_out(sample));
    return conv_out(sample);  // [N, Cout, H, W]
}

}  // namespace t2i::models
