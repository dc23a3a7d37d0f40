// Implements: models/attention.h.
#include "models/attention.h"

#include <atomic>

#include "util/torch_compat.h"

namespace t2i::models {

namespace {
std::atomic<AttentionBackend> g_backend{AttentionBackend::kFused};
}

void set_attention_backend(AttentionBackend backend) { g_backend = backend; }

torch::Tensor attention_scores_apply(const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v, double scale, bool upcast_attention,
                                     bool upcast_softmax) {
#if T2I_HAS_SDPA
    if (g_backend.load() == AttentionBackend::kFused)
        return at::scaled_dot_product_attention(q, k, v);  // default scale == 1/sqrt(d) == scale
#endif
    // AttnProcessor: scores = baddbmm(empty, q, k^T, beta=0, alpha=scale); softmax; @ v.
    const auto dtype = q.scalar_type();
    auto qq          = upcast_attention ? q.to(torch::kFloat32) : q;
    auto kk          = upcast_attention ? k.to(torch::kFloat32) : k;
    const auto N = q.size(0), h = q.size(1), S = q.size(2), d = q.size(3), L = k.size(2);
    auto q3     = qq.reshape({N * h, S, d});
    auto k3     = kk.reshape({N * h, L, d});
    auto scores = torch::baddbmm(torch::empty({N * h, S, L}, q3.options()), q3, k3.transpose(1, 2),
                                 /*beta=*/0, /*alpha=*/scale);  // [Nh, S, L]
    if (upcast_softmax) scores = scores.to(torch::kFloat32);
    auto probs = scores.softmax(-1).to(dtype);
    auto out   = torch::bmm(probs, v.reshape({N * h, L, d}));  // [Nh, S, d]
    return out.view({N, h, S, d});
}

torch::Tensor linear_with_lora(const torch::nn::Linear& base,
                               const std::vector<LoraAdapter>& adapters, const torch::Tensor& x) {
    auto y = torch::linear(x, base->weight, base->bias);
    for (const auto& a : adapters)
        y = y + torch::linear(torch::linear(x, a.lora_A->weight), a.lora_B->weight) * a.scale;
    return y;
}

torch::nn::Linear AttentionImpl::projection(int slot) const {
    switch (slot) {
        case kLoraQ:
            return to_q;
        case kLoraK:
            return to_k;
        case kLoraV:
            return to_v;
        default:
            return torch::nn::Linear(to_out->ptr<torch::nn::LinearImpl>(0));
    }
}

AttentionImpl::AttentionImpl(const AttentionOptions& o) : options(o) {
    const int64_t inner   = o.heads * o.dim_head;
    const int64_t context = o.cross_attention_dim > 0 ? o.cross_attention_dim : o.query_dim;
    scale                 = 1.0 / std::sqrt(static_cast<double>(o.dim_head));
    if (o.norm_num_groups > 0)
        group_norm = register_module(
            "group_norm",
            AutocastGroupNorm(
                torch::nn::GroupNormOptions(o.norm_num_groups, o.query_dim).eps(o.eps)));
    to_q = register_module(
        "to_q", torch::nn::Linear(torch::nn::LinearOptions(o.query_dim, inner).bias(o.bias)));
    to_k = register_module(
        "to_k", torch::nn::Linear(torch::nn::LinearOptions(context, inner).bias(o.bias)));
    to_v = register_module(
        "to_v", torch::nn::Linear(torch::nn::LinearOptions(context, inner).bias(o.bias)));
    to_out = register_module("to_out", torch::nn::ModuleList());
    to_out->push_back(torch::nn::Linear(inner, o.query_dim));
    to_out->push_back(torch::nn::Dropout(o.dropout));  // placeholder at index 1, as in diffusers
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& hidden_states,
                                     const torch::Tensor& encoder_hidden_states) {
    const auto& residual = hidden_states;
    auto x               = hidden_states;
    const bool is_4d     = x.dim() == 4;
    int64_t C = 0, H = 0, W = 0;
    if (is_4d) {
        C = x.size(1), H = x.size(2), W = x.size(3);
        x = x.reshape({x.size(0), C, H * W}).transpose(1, 2);  // [N, S, C] (any memory format)
    }
    if (group_norm) x = group_norm(x.transpose(1, 2)).transpose(1, 2);
    const auto& ctx = encoder_hidden_states.defined() ? encoder_hidden_states : x;
    const auto N = x.size(0), S = x.size(1), L = ctx.size(1);
    const auto h = options.heads, d = options.dim_head;
    auto q = linear_with_lora(to_q, lora[kLoraQ], x).view({N, S, h, d}).transpose(1, 2);
    auto k = linear_with_lora(to_k, lora[kLoraK], ctx).view({N, L, h, d}).transpose(1, 2);
    auto v = linear_with_lora(to_v, lora[kLoraV], ctx).view({N, L, h, d}).transpose(1, 2);
    auto o =
        attention_scores_apply(q, k, v, scale, options.upcast_attention, options.upcast_softmax);
    o = o.transpose(1, 2).reshape({N, S, h * d});  // [N, S, h*d]
    o = linear_with_lora(projection(kLoraOut), lora[kLoraOut], o);
    o = to_out[1]->as<torch::nn::Dropout>()->forward(o);
    if (is_4d) o = o.transpose(1, 2).reshape({N, C, H, W});
    if (options.residual_connection) o = o + residual;
    if (options.rescale_output_factor != 1.0) o = o / options.rescale_output_factor;
    return o;
}

GEGLUImpl::GEGLUImpl(int64_t dim_in, int64_t dim_out) {
    proj = register_module("proj", torch::nn::Linear(dim_in, dim_out * 2));
}

torch::Tensor GEGLUImpl::forward(const torch::Tensor& x) {
    auto chunks = proj(x).chunk(2, -1);  // value, gate: [.., inner] each
    return chunks[0] * torch::gelu(chunks[1]);
}

FeedForwardImpl::FeedForwardImpl(int64_t dim, int64_t mult, double dropout) {
    const int64_t inner = dim * mult;
    geglu               = GEGLU(dim, inner);
    drop                = torch::nn::Dropout(dropout);
    out                 = torch::nn::Linear(inner, dim);
    net                 = register_module("net", torch::nn::ModuleList(geglu, drop, out));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x) { return out(drop(geglu(x))); }

BasicTransformerBlockImpl::BasicTransformerBlockImpl(const BasicTransformerBlockOptions& o)
    : only_cross_attention(o.only_cross_attention) {
    auto ln = [&](const char* name) {
        return register_module(
            name, AutocastLayerNorm(torch::nn::LayerNormOptions({o.dim}).eps(o.norm_eps)));
    };
    AttentionOptions a1{o.dim};
    a1.heads               = o.num_attention_heads;
    a1.dim_head            = o.attention_head_dim;
    a1.upcast_attention    = o.upcast_attention;
    a1.dropout             = o.dropout;
    a1.cross_attention_dim = o.only_cross_attention ? o.cross_attention_dim : 0;
    AttentionOptions a2    = a1;
    a2.cross_attention_dim = o.cross_attention_dim;
    norm1                  = ln("norm1");
    attn1                  = register_module("attn1", Attention(a1));
    norm2                  = ln("norm2");
    attn2                  = register_module("attn2", Attention(a2));
    norm3                  = ln("norm3");
    ff                     = register_module("ff", FeedForward(o.dim, 4, o.dropout));
}

torch::Tensor BasicTransformerBlockImpl::forward(const torch::Tensor& x,
                                                 const torch::Tensor& context) {
    auto h = attn1(norm1(x), only_cross_attention ? context : torch::Tensor()) + x;
    h      = attn2(norm2(h), context) + h;
    return ff(norm3(h)) + h;
}

Transformer2DModelImpl::Transformer2DModelImpl(const Transformer2DModelOptions& o) : options(o) {
    const int64_t inner = o.num_attention_heads * o.attention_head_dim;
    const auto gn       = torch::nn::GroupNormOptions(o.norm_num_groups, o.in_channels).eps(1e-6);
    norm                = register_module("norm", AutocastGroupNorm(gn));
    if (o.use_linear_projection) {
        proj_in_any = torch::nn::AnyModule(
            register_module("proj_in", torch::nn::Linear(o.in_channels, inner)));
    } else {
        proj_in_any = torch::nn::AnyModule(register_module(
            "proj_in", torch::nn::Conv2d(torch::nn::Conv2dOptions(o.in_channels, inner, 1))));
    }
    transformer_blocks = register_module("transformer_blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < o.num_layers; ++i) {
        BasicTransformerBlockOptions b{inner, o.num_attention_heads, o.attention_head_dim,
                                       o.cross_attention_dim};
        b.dropout              = o.dropout;
        b.only_cross_attention = o.only_cross_attention;
        b.upcast_attention     = o.upcast_attention;
        transformer_blocks->push_back(BasicTransformerBlock(b));
    }
    if (o.use_linear_projection) {
        proj_out_any = torch::nn::AnyModule(
            register_module("proj_out", torch::nn::Linear(inner, o.in_channels)));
    } else {
        proj_out_any = torch::nn::AnyModule(register_module(
            "proj_out", torch::nn::Conv2d(torch::nn::Conv2dOptions(inner, o.in_channels, 1))));
    }
}

torch::Tensor Transformer2DModelImpl::forward(const torch::Tensor& x,
                                              const torch::Tensor& context) {
    const auto N = x.size(0), H = x.size(2), W = x.size(3);
    auto h    = norm(x);
    int64_t D = 0;
    if (!options.use_linear_projection) {
        h = proj_in_any.forward(h);  // [N, D, H, W]
        D = h.size(1);
        h = h.permute({0, 2, 3, 1}).reshape({N, H * W, D});  // [N, S, D]
    } else {
        h = h.permute({0, 2, 3, 1}).reshape({N, H * W, h.size(1)});  // [N, S, C]
        h = proj_in_any.forward(h);                                  // [N, S, D]
        D = h.size(2);
    }
    for (const auto& block : *transformer_blocks)
        h = block->as<BasicTransformerBlock>()->forward(h, context);
    if (!options.use_linear_projection) {
        h = h.reshape({N, H, W, D}).permute({0, 3, 1, 2}).contiguous();  // [N, D, H, W]
        h = proj_out_any.forward(h);                                     // [N, C, H, W]
    } else {
        h = proj_out_any.forward(h);                                             // [N, S, C]
        h = h.reshape({N, H, W, h.size(2)}).permute({0, 3, 1, 2}).contiguous();  // [N, C, H, W]
    }
    return h + x;
}

}  // namespace t2i::models
