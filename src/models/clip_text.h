// Implements: the CLIP text encoder of Stable Diffusion (Radford et al. 2021,
// https://arxiv.org/abs/2103.00020): token + position embeddings, pre-LayerNorm transformer
// layers with causal self-attention, final LayerNorm, pooling at the end-of-text token, and the
// optional bias-free `text_projection` of CLIPTextModelWithProjection.
// Mirrors transformers 4.38 models/clip/modeling_clip.py (CLIPTextEmbeddings, CLIPAttention,
// CLIPMLP, CLIPEncoderLayer, CLIPEncoder, CLIPTextTransformer, CLIPTextModel,
// CLIPTextModelWithProjection). Attribute names equal the transformers ones, so
// named_parameters() keys equal the safetensors keys (`text_model.encoder.layers.0.self_attn.
// q_proj.weight`, `text_projection.weight`). The `position_ids` buffer is not registered: it is an
// arange, recomputed in forward (models/weights.cpp ignores it in files).
// Shapes: B = batch, S = sequence length (<= max_position_embeddings, 77 in SD), D = hidden_size,
// H = num_attention_heads, Dh = D / H, I = intermediate_size, P = projection_dim, V = vocab_size.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "io/json_config.h"
#include "models/normalization.h"

namespace t2i::models {

// text_encoder/config.json. Defaults are transformers' CLIPTextConfig defaults; values in the
// comments are those of SD 1.5's openai/clip-vit-large-patch14.
struct CLIPTextConfig {
    int64_t vocab_size              = 49408;         // 49408
    int64_t hidden_size             = 512;           // 768
    int64_t intermediate_size       = 2048;          // 3072
    int64_t num_hidden_layers       = 12;            // 12 (SD 2.x: 23)
    int64_t num_attention_heads     = 8;             // 12
    int64_t max_position_embeddings = 77;            // 77
    std::string hidden_act          = "quick_gelu";  // quick_gelu | gelu (SD 2.x)
    double layer_norm_eps           = 1e-5;
    int64_t bos_token_id            = 49406;  // SD 1.5's file says 0 (legacy)
    int64_t eos_token_id            = 49407;  // SD 1.5's file says 2 (legacy -> argmax pooling)
    int64_t pad_token_id            = 1;
    int64_t projection_dim          = 512;        // 768; used only with text_projection
    std::vector<std::string> architectures = {};  // e.g. ["CLIPTextModel"]

    // True when architectures[0] == "CLIPTextModelWithProjection".
    bool with_projection() const;

    // Reads the keys above; absent or null keys take the defaults. An unsupported hidden_act or
    // inconsistent sizes throw naming the file.
    static CLIPTextConfig from_json(const io::JsonConfig& json);
};

// token_embedding + position_embedding.
struct CLIPTextEmbeddingsImpl : torch::nn::Module {
    explicit CLIPTextEmbeddingsImpl(const CLIPTextConfig& config);
    torch::Tensor forward(const torch::Tensor& input_ids);  // [B, S] int64 -> [B, S, D]

    torch::nn::Embedding token_embedding{nullptr};     // weight [V, D]
    torch::nn::Embedding position_embedding{nullptr};  // weight [77, D]
};
TORCH_MODULE(CLIPTextEmbeddings);

// Multi-head self-attention (Vaswani et al. 2017) with the scale applied to q before QK^T.
struct CLIPAttentionImpl : torch::nn::Module {
    explicit CLIPAttentionImpl(const CLIPTextConfig& config);
    // hidden_states [B, S, D], causal_attention_mask [S, S] additive (0 or dtype min) -> [B, S, D]
    torch::Tensor forward(const torch::Tensor& hidden_states,
                          const torch::Tensor& causal_attention_mask);

    int64_t embed_dim, num_heads, head_dim;
    double scale;                         // head_dim^-0.5
    torch::nn::Linear k_proj{nullptr};    // [D, D] + [D]
    torch::nn::Linear v_proj{nullptr};    // [D, D] + [D]
    torch::nn::Linear q_proj{nullptr};    // [D, D] + [D]
    torch::nn::Linear out_proj{nullptr};  // [D, D] + [D]
};
TORCH_MODULE(CLIPAttention);

// fc1 -> activation -> fc2.
struct CLIPMLPImpl : torch::nn::Module {
    explicit CLIPMLPImpl(const CLIPTextConfig& config);
    torch::Tensor forward(const torch::Tensor& hidden_states);  // [B, S, D] -> [B, S, D]

    std::string hidden_act;
    torch::nn::Linear fc1{nullptr};  // [I, D] + [I]
    torch::nn::Linear fc2{nullptr};  // [D, I] + [D]
};
TORCH_MODULE(CLIPMLP);

// Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x)).
struct CLIPEncoderLayerImpl : torch::nn::Module {
    explicit CLIPEncoderLayerImpl(const CLIPTextConfig& config);
    torch::Tensor forward(const torch::Tensor& hidden_states,
                          const torch::Tensor& causal_attention_mask);  // [B, S, D] -> [B, S, D]

    CLIPAttention self_attn{nullptr};
    AutocastLayerNorm layer_norm1{nullptr};  // [D] + [D]
    CLIPMLP mlp{nullptr};
    AutocastLayerNorm layer_norm2{nullptr};  // [D] + [D]
};
TORCH_MODULE(CLIPEncoderLayer);

struct CLIPEncoderImpl : torch::nn::Module {
    explicit CLIPEncoderImpl(const CLIPTextConfig& config);
    // Runs every layer. When `hidden_states_out` is given it receives the input and the output
    // of each layer (num_hidden_layers + 1 tensors), as transformers' `hidden_states`.
    torch::Tensor forward(torch::Tensor hidden_states, const torch::Tensor& causal_attention_mask,
                          std::vector<torch::Tensor>* hidden_states_out = nullptr);

    torch::nn::ModuleList layers{nullptr};  // num_hidden_layers x CLIPEncoderLayer
};
TORCH_MODULE(CLIPEncoder);

// What CLIPTextModel(WithProjection) returns (transformers' BaseModelOutputWithPooling /
// CLIPTextModelOutput, without attentions).
struct CLIPTextOutput {
    torch::Tensor last_hidden_state;           // [B, S, D] after final_layer_norm
    torch::Tensor pooler_output;               // [B, D] last_hidden_state at the EOS token
    std::vector<torch::Tensor> hidden_states;  // output_hidden_states: L + 1 x [B, S, D]
    torch::Tensor text_embeds;                 // [B, P] text_projection(pooler_output); only
                                               // for CLIPTextModelWithProjection
};

struct CLIPTextTransformerImpl : torch::nn::Module {
    explicit CLIPTextTransformerImpl(const CLIPTextConfig& config);
    CLIPTextOutput forward(const torch::Tensor& input_ids, bool output_hidden_states = false);

    CLIPTextConfig config;
    CLIPTextEmbeddings embeddings{nullptr};
    CLIPEncoder encoder{nullptr};
    AutocastLayerNorm final_layer_norm{nullptr};  // [D] + [D]
};
TORCH_MODULE(CLIPTextTransformer);

// CLIPTextModel, or CLIPTextModelWithProjection when the config's architectures say so or
// `with_projection` is true.
struct CLIPTextModelImpl : torch::nn::Module {
    explicit CLIPTextModelImpl(const CLIPTextConfig& config);
    CLIPTextModelImpl(const CLIPTextConfig& config, bool with_projection);

    // input_ids [B, S] int64, no padding mask (Stable Diffusion passes none).
    CLIPTextOutput forward(const torch::Tensor& input_ids, bool output_hidden_states = false);

    const CLIPTextConfig& config() const { return config_; }
    bool has_projection() const { return !text_projection.is_empty(); }

    CLIPTextTransformer text_model{nullptr};
    torch::nn::Linear text_projection{nullptr};  // [P, D], no bias; only with projection

  private:
    CLIPTextConfig config_;
};
TORCH_MODULE(CLIPTextModel);

}  // namespace t2i::models
