// Implements: models/clip_text.h, following transformers 4.38 modeling_clip.py (eager attention).
#include "models/clip_text.h"

#include <limits>
#include <stdexcept>

#include "models/config_limits.h"
#include "util/log.h"

namespace t2i::models {

namespace {

// torch.finfo(dtype).min: what transformers puts above the diagonal of the causal mask.
double dtype_min(torch::ScalarType dtype) {
    switch (dtype) {
        case torch::kFloat:
            return std::numeric_limits<float>::lowest();
        case torch::kDouble:
            return std::numeric_limits<double>::lowest();
        case torch::kHalf:
            return -65504.0;
        case torch::kBFloat16:
            return -3.3895313892515355e38;
        default:
            throw std::runtime_error(std::string("CLIP text model: unsupported dtype ") +
                                     c10::toString(dtype));
    }
}

// transformers' _create_4d_causal_attention_mask, without the broadcast dims: 0 where key j <=
// query i, finfo.min where j > i.
torch::Tensor causal_attention_mask(int64_t seq_len, const torch::TensorOptions& options) {
    const double min = dtype_min(c10::typeMetaToScalarType(options.dtype()));
    return torch::full({seq_len, seq_len}, min, options).triu(1);  // [S, S]
}

}  // namespace

// ---- config -------------------------------------------------------------------------------------

bool CLIPTextConfig::with_projection() const {
    return !architectures.empty() && architectures[0] == "CLIPTextModelWithProjection";
}

CLIPTextConfig CLIPTextConfig::from_json(const io::JsonConfig& json) {
    CLIPTextConfig c;
    c.vocab_size          = json.get<int64_t>("vocab_size", c.vocab_size);
    c.hidden_size         = json.get<int64_t>("hidden_size", c.hidden_size);
    c.intermediate_size   = json.get<int64_t>("intermediate_size", c.intermediate_size);
    c.num_hidden_layers   = json.get<int64_t>("num_hidden_layers", c.num_hidden_layers);
    c.num_attention_heads = json.get<int64_t>("num_attention_heads", c.num_attention_heads);
    c.max_position_embeddings =
        json.get<int64_t>("max_position_embeddings", c.max_position_embeddings);
    c.hidden_act     = json.get<std::string>("hidden_act", c.hidden_act);
    c.layer_norm_eps = json.get<double>("layer_norm_eps", c.layer_norm_eps);
    c.bos_token_id   = json.get<int64_t>("bos_token_id", c.bos_token_id);
    c.eos_token_id   = json.get<int64_t>("eos_token_id", c.eos_token_id);
    c.pad_token_id   = json.get<int64_t>("pad_token_id", c.pad_token_id);
    c.projection_dim = json.get<int64_t>("projection_dim", c.projection_dim);
    c.architectures  = json.get<std::vector<std::string>>("architectures", c.architectures);

    const std::string where = "config '" + json.path() + "'";
    if (c.hidden_act != "quick_gelu" && c.hidden_act != "gelu")
        throw std::runtime_error(where + ": hidden_act '" + c.hidden_act +
                                 "' is not supported by the CLIP text model (accepted: "
                                 "quick_gelu, gelu)");
    for (const auto& [name, v] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
                                  {"hidden_size", c.hidden_size},
                                  {"intermediate_size", c.intermediate_size},
                                  {"num_hidden_layers", c.num_hidden_layers},
                                  {"num_attention_heads", c.num_attention_heads},
                                  {"max_position_embeddings", c.max_position_embeddings},
                                  {"projection_dim", c.projection_dim}})
        if (v <= 0)
            throw std::runtime_error(strformat("%s: %s must be positive, got %lld", where.c_str(),
                                               name, static_cast<long long>(v)));
    if (c.hidden_size % c.num_attention_heads != 0)
        throw std::runtime_error(strformat(
            "%s: hidden_size (%lld) must be divisible by num_attention_heads (%lld)", where.c_str(),
            static_cast<long long>(c.hidden_size), static_cast<long long>(c.num_attention_heads)));
    // Upper bounds (config_limits.h), before anything is allocated.
    json.check_range("vocab_size", static_cast<double>(c.vocab_size), 1, kMaxVocabulary);
    json.check_range("hidden_size", static_cast<double>(c.hidden_size), 1, kMaxChannels);
    json.check_range("intermediate_size", static_cast<double>(c.intermediate_size), 1,
                     4 * kMaxChannels);
    json.check_range("num_hidden_layers", static_cast<double>(c.num_hidden_layers), 1, kMaxLayers);
    json.check_range("num_attention_heads", static_cast<double>(c.num_attention_heads), 1,
                     kMaxHeads);
    json.check_range("max_position_embeddings", static_cast<double>(c.max_position_embeddings), 1,
                     kMaxTokenLength);
    json.check_range("projection_dim", static_cast<double>(c.projection_dim), 1, kMaxChannels);
    json.check_range("layer_norm_eps", c.layer_norm_eps, 1e-30, 1, "a positive epsilon");
    const double d = static_cast<double>(c.hidden_size);
    check_parameter_budget(json,
                           d * static_cast<double>(c.vocab_size + c.max_position_embeddings) +
                               static_cast<double>(c.num_hidden_layers) *
                                   (4 * d * d + 2 * d * static_cast<double>(c.intermediate_size)));
    return c;
}

// ---- modules ------------------------------------------------------------------------------------

CLIPTextEmbeddingsImpl::CLIPTextEmbeddingsImpl(const CLIPTextConfig& config) {
    token_embedding = register_module("token_embedding",
                                      torch::nn::Embedding(config.vocab_size, config.hidden_size));
    position_embedding =
        register_module("position_embedding",
                        torch::nn::Embedding(config.max_position_embeddings, config.hidden_size));
}

torch::Tensor CLIPTextEmbeddingsImpl::forward(const torch::Tensor& input_ids) {
    const int64_t seq_len = input_ids.size(-1);
    auto position_ids     = torch::arange(seq_len, input_ids.options().dtype(torch::kLong));  // [S]
    auto inputs_embeds    = token_embedding(input_ids);                        // [B, S, D]
    auto position_embeddings = position_embedding(position_ids).unsqueeze(0);  // [1, S, D]
    return inputs_embeds + position_embeddings;                                // [B, S, D]
}

CLIPAttentionImpl::CLIPAttentionImpl(const CLIPTextConfig& config)
    : embed_dim(config.hidden_size),
      num_heads(config.num_attention_heads),
      head_dim(config.hidden_size / config.num_attention_heads),
      scale(1.0 / std::sqrt(static_cast<double>(head_dim))) {
    k_proj   = register_module("k_proj", torch::nn::Linear(embed_dim, embed_dim));
    v_proj   = register_module("v_proj", torch::nn::Linear(embed_dim, embed_dim));
    q_proj   = register_module("q_proj", torch::nn::Linear(embed_dim, embed_dim));
    out_proj = register_module("out_proj", torch::nn::Linear(embed_dim, embed_dim));
}

torch::Tensor CLIPAttentionImpl::forward(const torch::Tensor& hidden_states,
                                         const torch::Tensor& causal_attention_mask) {
    const int64_t bsz = hidden_states.size(0), tgt_len = hidden_states.size(1);
    // [B, S, D] -> [B*H, S, Dh]
    auto to_heads = [&](const torch::Tensor& x) {
        return x.view({bsz, tgt_len, num_heads, head_dim})
            .transpose(1, 2)
            .contiguous()
            .view({bsz * num_heads, tgt_len, head_dim});
    };
    // 1. projections; the scale multiplies q before the product, as transformers does
    auto query_states = to_heads(q_proj(hidden_states) * scale);  // [B*H, S, Dh]
    auto key_states   = to_heads(k_proj(hidden_states));          // [B*H, S, Dh]
    auto value_states = to_heads(v_proj(hidden_states));          // [B*H, S, Dh]

    // 2. scores + additive causal mask, softmax over keys
    auto attn_weights = torch::bmm(query_states, key_states.transpose(1, 2));  // [B*H, S, S]
    attn_weights = (attn_weights.view({bsz, num_heads, tgt_len, tgt_len}) + causal_attention_mask)
                       .view({bsz * num_heads, tgt_len, tgt_len});
    attn_weights = torch::softmax(attn_weights, -1);

    // 3. weighted values, merge heads, output projection
    auto attn_output = torch::bmm(attn_weights, value_states);  // [B*H, S, Dh]
    attn_output      = attn_output.view({bsz, num_heads, tgt_len, head_dim})
                      .transpose(1, 2)
                      .reshape({bsz, tgt_len, embed_dim});  // [B, S, D]
    return out_proj(attn_output);                           // [B, S, D]
}

CLIPMLPImpl::CLIPMLPImpl(const CLIPTextConfig& config) : hidden_act(config.hidden_act) {
    fc1 = register_module("fc1", torch::nn::Linear(config.hidden_size, config.intermediate_size));
    fc2 = register_module("fc2", torch::nn::Linear(config.intermediate_size, config.hidden_size));
}

torch::Tensor CLIPMLPImpl::forward(const torch::Tensor& hidden_states) {
    auto h = fc1(hidden_states);  // [B, S, I]
    if (hidden_act == "quick_gelu")
        h = h * torch::sigmoid(1.702 * h);  // transformers' QuickGELUActivation
    else
        h = torch::gelu(h);  // exact (erf) GELU, transformers' "gelu"
    return fc2(h);           // [B, S, D]
}

CLIPEncoderLayerImpl::CLIPEncoderLayerImpl(const CLIPTextConfig& config) {
    const auto ln = torch::nn::LayerNormOptions({config.hidden_size}).eps(config.layer_norm_eps);
    self_attn     = register_module("self_attn", CLIPAttention(config));
    layer_norm1   = register_module("layer_norm1", AutocastLayerNorm(ln));
    mlp           = register_module("mlp", CLIPMLP(config));
    layer_norm2   = register_module("layer_norm2", AutocastLayerNorm(ln));
}

torch::Tensor CLIPEncoderLayerImpl::forward(const torch::Tensor& hidden_states,
                                            const torch::Tensor& causal_attention_mask) {
    auto h = hidden_states + self_attn(layer_norm1(hidden_states), causal_attention_mask);
    return h + mlp(layer_norm2(h));  // [B, S, D]
}

CLIPEncoderImpl::CLIPEncoderImpl(const CLIPTextConfig& config) {
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < config.num_hidden_layers; ++i)
        layers->push_back(CLIPEncoderLayer(config));
}

torch::Tensor CLIPEncoderImpl::forward(torch::Tensor hidden_states,
                                       const torch::Tensor& causal_attention_mask,
                                       std::vector<torch::Tensor>* hidden_states_out) {
    for (const auto& layer : *layers) {
        if (hidden_states_out) hidden_states_out->push_back(hidden_states);
        hidden_states =
            layer->as<CLIPEncoderLayer>()->forward(hidden_states, causal_attention_mask);
    }
    if (hidden_states_out) hidden_states_out->push_back(hidden_states);
    return hidden_states;  // [B, S, D]
}

CLIPTextTransformerImpl::CLIPTextTransformerImpl(const CLIPTextConfig& config_) : config(config_) {
    embeddings       = register_module("embeddings", CLIPTextEmbeddings(config));
    encoder          = register_module("encoder", CLIPEncoder(config));
    final_layer_norm = register_module(
        "final_layer_norm",
        AutocastLayerNorm(
            torch::nn::LayerNormOptions({config.hidden_size}).eps(config.layer_norm_eps)));
}

CLIPTextOutput CLIPTextTransformerImpl::forward(const torch::Tensor& input_ids,
                                                bool output_hidden_states) {
    if (input_ids.dim() != 2 || input_ids.scalar_type() != torch::kLong)
        throw std::runtime_error(strformat(
            "CLIP text model: input_ids must be a [batch, seq_len] int64 tensor, got %s %s",
            c10::str(input_ids.sizes()).c_str(), c10::toString(input_ids.scalar_type())));
    const int64_t bsz = input_ids.size(0), seq_len = input_ids.size(1);
    if (seq_len > config.max_position_embeddings)
        throw std::runtime_error(
            strformat("CLIP text model: sequence length %lld exceeds max_position_embeddings %lld",
                      static_cast<long long>(seq_len),
                      static_cast<long long>(config.max_position_embeddings)));
    // Checked on the CPU only (on a GPU the check would stop the host at every step; the
    // tokenizer's ids were checked against vocab_size when the components were loaded).
    if (input_ids.numel() > 0 && input_ids.is_cpu()) {
        const int64_t lo = input_ids.min().item<int64_t>(), hi = input_ids.max().item<int64_t>();
        if (lo < 0 || hi >= config.vocab_size)
            throw std::runtime_error(strformat(
                "CLIP text model: token ids must lie in [0, %lld) (vocab_size), got [%lld, %lld]; "
                "hint: the tokenizer does not belong to this text encoder",
                static_cast<long long>(config.vocab_size), static_cast<long long>(lo),
                static_cast<long long>(hi)));
    }

    CLIPTextOutput out;
    // 1. embeddings and the causal mask (no padding mask: SD passes none)
    auto hidden_states = embeddings(input_ids);                                    // [B, S, D]
    auto mask          = causal_attention_mask(seq_len, hidden_states.options());  // [S, S]

    // 2. transformer layers, then the final LayerNorm
    hidden_states =
        encoder(hidden_states, mask, output_hidden_states ? &out.hidden_states : nullptr);
    out.last_hidden_state = final_layer_norm(hidden_states);  // [B, S, D]

    // 3. pool at the end-of-text token. Configs with eos_token_id == 2 predate the fix of
    //    transformers#24650 and keep the legacy rule: the EOS token has the largest id in CLIP's
    //    vocabulary, so its position is argmax(input_ids). Otherwise: first position holding
    //    eos_token_id.
    auto ids = input_ids.to(torch::kInt);
    torch::Tensor eos_index;  // [B]
    if (config.eos_token_id == 2)
        eos_index = ids.argmax(-1);
    else
        eos_index = (ids == config.eos_token_id).to(torch::kInt).argmax(-1);
    auto batch_index  = torch::arange(bsz, input_ids.options().dtype(torch::kLong));  // [B]
    out.pooler_output = out.last_hidden_state.index({batch_index, eos_index});        // [B, D]
    return out;
}

CLIPTextModelImpl::CLIPTextModelImpl(const CLIPTextConfig& config)
    : CLIPTextModelImpl(config, config.with_projection()) {}

CLIPTextModelImpl::CLIPTextModelImpl(const CLIPTextConfig& config, bool with_projection)
    : config_(config) {
    text_model = register_module("text_model", CLIPTextTransformer(config));
    if (with_projection)
        text_projection = register_module(
            "text_projection",
            torch::nn::Linear(
                torch::nn::LinearOptions(config.hidden_size, config.projection_dim).bias(false)));
}

CLIPTextOutput CLIPTextModelImpl::forward(const torch::Tensor& input_ids,
                                          bool output_hidden_states) {
    CLIPTextOutput out = text_model(input_ids, output_hidden_states);
    if (has_projection()) out.text_embeds = text_projection(out.pooler_output);  // [B, P]
    return out;
}

}  // namespace t2i::models
