// Implements: Attention (to_q, to_k, to_v, to_out), GEGLU, FeedForward, BasicTransformerBlock,
// Transformer2DModel.
// Mirrors: diffusers models/attention_processor.py (Attention + AttnProcessor),
// models/attention.py, models/transformers/transformer_2d.py (v0.27).
// Letters: N batch, S query tokens (H*W), L key tokens, D channels, h heads, d head dim.
#pragma once

#include <torch/torch.h>

#include <array>
#include <vector>

#include "models/normalization.h"

namespace t2i::models {

// Which kernel computes softmax(Q K^T * scale) V. kFused (the default) is diffusers'
// AttnProcessor2_0, its default on torch 2: at::scaled_dot_product_attention, which picks
// flash / memory-efficient / cuDNN kernels on CUDA and a flash kernel on the CPU (it ignores
// upcast_attention, as AttnProcessor2_0 does). kReference is AttnProcessor (baddbmm + softmax +
// bmm), the path the fixtures' golden numbers came from (torch 1.13).
enum class AttentionBackend { kReference, kFused };
void set_attention_backend(AttentionBackend backend);

// One LoRA adapter on a Linear projection, PEFT's LoraLayer for one adapter:
// y = base(x) + scale * lora_B(lora_A(x)). models/lora.h adds them (scale = lora_alpha / r times
// the user's LoRA scale) and registers lora_A / lora_B as children of the base Linear, so their
// parameters are named `<module>.lora_A.weight` as in diffusers' LoRA files.
struct LoraAdapter {
    torch::nn::Linear lora_A{nullptr};  // [r, in], no bias
    torch::nn::Linear lora_B{nullptr};  // [out, r], no bias
    double scale = 1.0;
};

// base(x) plus every adapter's term.
torch::Tensor linear_with_lora(const torch::nn::Linear& base,
                               const std::vector<LoraAdapter>& adapters, const torch::Tensor& x);

struct AttentionOptions {
    int64_t query_dim;
    int64_t cross_attention_dim  = 0;  // 0 = self-attention (= query_dim)
    int64_t heads                = 8;
    int64_t dim_head             = 64;
    bool bias                    = false;  // bias of to_q/to_k/to_v (to_out always has one)
    bool upcast_attention        = false;  // compute Q K^T in fp32
    bool upcast_softmax          = false;  // softmax in fp32
    int64_t norm_num_groups      = 0;      // > 0: a GroupNorm over channels first (VAE)
    double eps                   = 1e-5;
    bool residual_connection     = false;
    double rescale_output_factor = 1.0;
    double dropout               = 0.0;
};

struct AttentionImpl : torch::nn::Module {
    explicit AttentionImpl(const AttentionOptions& options);
    // hidden [N, S, D] or [N, D, H, W]; context [N, L, Dc] or undefined (self-attention).
    torch::Tensor forward(const torch::Tensor& hidden_states,
                          const torch::Tensor& encoder_hidden_states = {});

    AttentionOptions options;
    double scale;
    AutocastGroupNorm group_norm{nullptr};  // [D] (VAE only)
    torch::nn::Linear to_q{nullptr};        // [h*d, D]
    torch::nn::Linear to_k{nullptr};        // [h*d, Dc]
    torch::nn::Linear to_v{nullptr};        // [h*d, Dc]
    torch::nn::ModuleList to_out{nullptr};  // 0: Linear [D, h*d]; 1: Dropout (no weights)
    // LoRA adapters of to_q, to_k, to_v, to_out.0 (index kLoraQ..kLoraOut); usually none.
    enum LoraSlot { kLoraQ = 0, kLoraK, kLoraV, kLoraOut };
    std::array<std::vector<LoraAdapter>, 4> lora;
    torch::nn::Linear projection(int slot) const;  // to_q, to_k, to_v or to_out.0
};
TORCH_MODULE(Attention);

// q, k, v [N, h, S|L, d] -> [N, h, S, d].
torch::Tensor attention_scores_apply(const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v, double scale, bool upcast_attention,
                                     bool upcast_softmax);

// proj(x) split into value and gate: value * gelu(gate). [.., D] -> [.., inner].
struct GEGLUImpl : torch::nn::Module {
    GEGLUImpl(int64_t dim_in, int64_t dim_out);
    torch::Tensor forward(const torch::Tensor& x);
    torch::nn::Linear proj{nullptr};  // [2*inner, D]
};
TORCH_MODULE(GEGLU);

// net.0 GEGLU, net.1 Dropout (placeholder: no weights, keeps the index), net.2 Linear.
struct FeedForwardImpl : torch::nn::Module {
    FeedForwardImpl(int64_t dim, int64_t mult, double dropout);
    torch::Tensor forward(const torch::Tensor& x);  // [N, S, D] -> [N, S, D]
    torch::nn::ModuleList net{nullptr};
    GEGLU geglu{nullptr};
    torch::nn::Dropout drop{nullptr};
    torch::nn::Linear out{nullptr};  // [D, 4D]
};
TORCH_MODULE(FeedForward);

struct BasicTransformerBlockOptions {
    int64_t dim;
    int64_t num_attention_heads;
    int64_t attention_head_dim;
    int64_t cross_attention_dim;
    double dropout            = 0.0;
    bool only_cross_attention = false;
    bool upcast_attention     = false;
    double norm_eps           = 1e-5;
};

// LayerNorm + self-attention, LayerNorm + cross-attention, LayerNorm + GEGLU MLP, each residual.
struct BasicTransformerBlockImpl : torch::nn::Module {
    explicit BasicTransformerBlockImpl(const BasicTransformerBlockOptions& options);
    torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);  // [N, S, D]

    bool only_cross_attention;
    AutocastLayerNorm norm1{nullptr};
    Attention attn1{nullptr};
    AutocastLayerNorm norm2{nullptr};
    Attention attn2{nullptr};
    AutocastLayerNorm norm3{nullptr};
    FeedForward ff{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

struct Transformer2DModelOptions {
    int64_t num_attention_heads;
    int64_t attention_head_dim;
    int64_t in_channels;
    int64_t num_layers          = 1;
    double dropout              = 0.0;
    int64_t norm_num_groups     = 32;
    int64_t cross_attention_dim = 0;
    bool use_linear_projection  = false;
    bool only_cross_attention   = false;
    bool upcast_attention       = false;
};

// GroupNorm -> proj_in (1x1 conv or Linear) -> transformer blocks over H*W tokens -> proj_out,
// plus the input as residual.
struct Transformer2DModelImpl : torch::nn::Module {
    explicit Transformer2DModelImpl(const Transformer2DModelOptions& options);
    // x [N, C, H, W], context [N, L, Dc] -> [N, C, H, W]
    torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);

    Transformer2DModelOptions options;
    AutocastGroupNorm norm{nullptr};   // [C]
    torch::nn::AnyModule proj_in_any;  // Conv2d [D, C, 1, 1] or Linear [D, C]
    torch::nn::ModuleList transformer_blocks{nullptr};
    torch::nn::AnyModule proj_out_any;  // Conv2d [C, D, 1, 1] or Linear [C, D]
};
TORCH_MODULE(Transformer2DModel);

}  // namespace t2i::models
