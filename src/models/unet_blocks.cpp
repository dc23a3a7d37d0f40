// Implements: models/unet_blocks.h.
#include "models/unet_blocks.h"

#include "util/activation_checkpoint.h"

namespace t2i::models {

namespace {

ResnetBlock2D make_resnet(const BlockOptions& o, int64_t in_channels, int64_t out_channels) {
    ResnetBlock2DOptions r{in_channels, out_channels};
    r.temb_channels       = o.temb_channels;
    r.groups              = o.resnet_groups;
    r.eps                 = o.resnet_eps;
    r.dropout             = o.dropout;
    r.non_linearity       = o.resnet_act_fn;
    r.time_embedding_norm = o.resnet_time_scale_shift;
    r.skip_time_act       = o.resnet_skip_time_act;
    r.output_scale_factor = o.output_scale_factor;
    return ResnetBlock2D(r);
}

// The Transformer2DModel of cross-attention blocks: heads = num_attention_heads, head dim =
// channels / heads (diffusers' attention_head_dim naming quirk is resolved in unet.cpp).
Transformer2DModel make_transformer(const BlockOptions& o, int64_t channels) {
    // diffusers floors channels / heads; the projections handle inner != channels.
    Transformer2DModelOptions t{o.num_attention_heads, channels / o.num_attention_heads, channels};
    t.num_layers            = o.transformer_layers_per_block;
    t.dropout               = o.dropout;
    t.norm_num_groups       = o.resnet_groups;
    t.cross_attention_dim   = o.cross_attention_dim;
    t.use_linear_projection = o.use_linear_projection;
    t.only_cross_attention  = o.only_cross_attention;
    t.upcast_attention      = o.upcast_attention;
    return Transformer2DModel(t);
}

// The VAE mid-block attention: one head of all channels, GroupNorm first, residual inside.
Attention make_vae_attention(const BlockOptions& o, int64_t channels) {
    const int64_t head_dim = o.attention_head_dim > 0 ? o.attention_head_dim : channels;
    AttentionOptions a{channels};
    a.heads                 = channels / head_dim;
    a.dim_head              = head_dim;
    a.bias                  = true;
    a.upcast_softmax        = true;
    a.norm_num_groups       = o.resnet_groups;
    a.eps                   = o.resnet_eps;
    a.residual_connection   = true;
    a.rescale_output_factor = o.output_scale_factor;
    return Attention(a);
}

// `resnet(hidden_states, temb)`, or, when training with gradient checkpointing, diffusers'
// `torch.utils.checkpoint.checkpoint(resnet, hidden_states, temb)`: its activations are
// recomputed in backward instead of stored.
torch::Tensor resnet_forward(const std::shared_ptr<ResnetBlock2DImpl>& resnet,
                             const torch::Tensor& h, const torch::Tensor& temb,
                             bool checkpointing) {
    if (!checkpointing) return resnet->forward(h, temb);
    return checkpoint(
        [resnet](const std::vector<torch::Tensor>& in) { return resnet->forward(in[0], in[1]); },
        {h, temb}, resnet->parameters());
}

// `attn(hidden_states, encoder_hidden_states)`, checkpointed the same way. (diffusers >= 0.13
// instead checkpoints each BasicTransformerBlock inside Transformer2DModel; with one block per
// Transformer2DModel, as in SD, checkpointing the whole call stores strictly less.)
torch::Tensor transformer_forward(const std::shared_ptr<Transformer2DModelImpl>& attn,
                                  const torch::Tensor& h, const torch::Tensor& context,
                                  bool checkpointing) {
    if (!checkpointing) return attn->forward(h, context);
    return checkpoint(
        [attn](const std::vector<torch::Tensor>& in) { return attn->forward(in[0], in[1]); },
        {h, context}, attn->parameters());
}

}  // namespace

DownBlockImpl::DownBlockImpl(const BlockOptions& o) {
    // attentions before resnets: diffusers registers them in this order, so named_parameters()
    // (and everything ordered by it) lists parameters as diffusers does.
    if (o.has_cross_attention) attentions = register_module("attentions", torch::nn::ModuleList());
    resnets = register_module("resnets", torch::nn::ModuleList());
    for (int64_t i = 0; i < o.num_layers; ++i) {
        resnets->push_back(make_resnet(o, i == 0 ? o.in_channels : o.out_channels, o.out_channels));
        if (o.has_cross_attention) attentions->push_back(make_transformer(o, o.out_channels));
    }
    if (o.add_sample) {
        downsamplers = register_module("downsamplers", torch::nn::ModuleList());
        downsamplers->push_back(Downsample2D(o.out_channels, o.out_channels, o.downsample_padding));
    }
}

torch::Tensor DownBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& temb,
                                     const torch::Tensor& context,
                                     std::vector<torch::Tensor>* res_samples) {
    const bool ckpt = gradient_checkpointing && is_training();
    auto h          = x;
    for (size_t i = 0; i < resnets->size(); ++i) {
        h = resnet_forward(resnets->ptr<ResnetBlock2DImpl>(i), h, temb, ckpt);  // [N, C, H, W]
        if (attentions)
            h = transformer_forward(attentions->ptr<Transformer2DModelImpl>(i), h, context, ckpt);
        if (res_samples) res_samples->push_back(h);
    }
    if (downsamplers) {
        h = downsamplers[0]->as<Downsample2D>()->forward(h);  // [N, C, H/2, W/2]
        if (res_samples) res_samples->push_back(h);
    }
    return h;
}

MidBlockImpl::MidBlockImpl(const BlockOptions& o) : has_cross_attention(o.has_cross_attention) {
    attentions = register_module("attentions", torch::nn::ModuleList());
    resnets    = register_module("resnets", torch::nn::ModuleList());
    resnets->push_back(make_resnet(o, o.in_channels, o.in_channels));
    // Without attention (VAE mid_block_add_attention false) diffusers still adds the resnets.
    for (int64_t i = 0; i < o.num_layers; ++i) {
        if (o.has_cross_attention)
            attentions->push_back(make_transformer(o, o.in_channels));
        else if (o.add_attention)
            attentions->push_back(make_vae_attention(o, o.in_channels));
        resnets->push_back(make_resnet(o, o.in_channels, o.in_channels));
    }
}

torch::Tensor MidBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& temb,
                                    const torch::Tensor& context) {
    const bool ckpt = gradient_checkpointing && is_training();
    auto h          = resnet_forward(resnets->ptr<ResnetBlock2DImpl>(0), x, temb, ckpt);
    for (size_t i = 1; i < resnets->size(); ++i) {
        if (i - 1 < attentions->size()) {
            if (has_cross_attention)
                h = transformer_forward(attentions->ptr<Transformer2DModelImpl>(i - 1), h, context,
                                        ckpt);
            else
                h = attentions[i - 1]->as<Attention>()->forward(h);
        }
        h = resnet_forward(resnets->ptr<ResnetBlock2DImpl>(i), h, temb, ckpt);
    }
    return h;
}

UpBlockImpl::UpBlockImpl(const BlockOptions& o) {
    if (o.has_cross_attention) attentions = register_module("attentions", torch::nn::ModuleList());
    resnets = register_module("resnets", torch::nn::ModuleList());
    for (int64_t i = 0; i < o.num_layers; ++i) {
        const int64_t res_skip  = (i == o.num_layers - 1) ? o.in_channels : o.out_channels;
        const int64_t resnet_in = (i == 0) ? o.prev_output_channel : o.out_channels;
        resnets->push_back(make_resnet(o, resnet_in + res_skip, o.out_channels));
        if (o.has_cross_attention) attentions->push_back(make_transformer(o, o.out_channels));
    }
    if (o.add_sample) {
        upsamplers = register_module("upsamplers", torch::nn::ModuleList());
        upsamplers->push_back(Upsample2D(o.out_channels, o.out_channels));
    }
}

torch::Tensor UpBlockImpl::forward(const torch::Tensor& x, std::vector<torch::Tensor>* res_samples,
                                   const torch::Tensor& temb, const torch::Tensor& context,
                                   c10::optional<std::vector<int64_t>> upsample_size) {
    const bool ckpt = gradient_checkpointing && is_training();
    auto h          = x;
    for (size_t i = 0; i < resnets->size(); ++i) {
        auto skip = res_samples->back();
        res_samples->pop_back();
        h = torch::cat({h, skip}, 1);  // [N, C + Cskip, H, W]
        h = resnet_forward(resnets->ptr<ResnetBlock2DImpl>(i), h, temb, ckpt);
        if (attentions)
            h = transformer_forward(attentions->ptr<Transformer2DModelImpl>(i), h, context, ckpt);
    }
    if (upsamplers) h = upsamplers[0]->as<Upsample2D>()->forward(h, upsample_size);
    return h;
}

UpDecoderBlockImpl::UpDecoderBlockImpl(const BlockOptions& o) {
    resnets = register_module("resnets", torch::nn::ModuleList());
    for (int64_t i = 0; i < o.num_layers; ++i)
        resnets->push_back(make_resnet(o, i == 0 ? o.in_channels : o.out_channels, o.out_channels));
    if (o.add_sample) {
        upsamplers = register_module("upsamplers", torch::nn::ModuleList());
        upsamplers->push_back(Upsample2D(o.out_channels, o.out_channels));
    }
}

torch::Tensor UpDecoderBlockImpl::forward(const torch::Tensor& x) {
    auto h = x;
    for (const auto& r : *resnets) h = r->as<ResnetBlock2D>()->forward(h);
    if (upsamplers) h = upsamplers[0]->as<Upsample2D>()->forward(h);
    return h;
}

}  // namespace t2i::models
