// Implements: infer_single_file_configs and check_config_fits_weights (pipeline/single_file.h):
// the configs of a single-file checkpoint, from its tensor shapes plus SD 1.x / 2.x defaults.
// Mirrors: diffusers loaders/single_file_utils.py infer_diffusers_model_type (SD 2.x = the
// OpenCLIP text encoder) and create_*_diffusers_config_from_ldm, which read the same values
// from the LDM yaml; here they come from the weights, as the yaml is not shipped with the file.
#include <stdexcept>

#include "pipeline/init_model.h"
#include "pipeline/single_file.h"

namespace t2i::pipeline {

namespace {

using json = nlohmann::json;

// Shapes by key, with errors that name the file.
class Shapes {
  public:
    explicit Shapes(const io::SafetensorsFile& file) : path_(file.path()) {
        for (const auto& t : file.tensors()) shapes_[t.name] = t.shape;
    }
    bool has(const std::string& key) const { return shapes_.count(key) > 0; }
    const std::vector<int64_t>& operator()(const std::string& key, size_t min_dims = 1) const {
        const auto it = shapes_.find(key);
        if (it == shapes_.end())
            throw std::runtime_error("single file '" + path_ + "' has no tensor '" + key +
                                     "': it is not a Stable Diffusion 1.x / 2.x checkpoint in "
                                     "the original (LDM) layout, or it is incomplete");
        if (it->second.size() < min_dims)
            throw std::runtime_error("single file '" + path_ + "': tensor '" + key + "' has " +
                                     std::to_string(it->second.size()) + " dimensions, expected " +
                                     std::to_string(min_dims) + " or more (a damaged file?)");
        return it->second;
    }
    // Largest N + 1 over keys `prefix` N `.`...
    int64_t count(const std::string& prefix) const {
        int64_t n = 0;
        for (auto it = shapes_.lower_bound(prefix);
             it != shapes_.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
            const std::string rest = it->first.substr(prefix.size());
            const std::string num  = rest.substr(0, rest.find('.'));
            if (!num.empty() && num.size() < 6 &&
                num.find_first_not_of("0123456789") == std::string::npos)
                n = std::max<int64_t>(n, std::stoll(num) + 1);
        }
        return n;
    }
    // How many of `prefix` 0, 1, 2, ... `suffix` exist in a row.
    int64_t run(const std::string& prefix, const std::string& suffix) const {
        int64_t n = 0;
        while (has(prefix + std::to_string(n) + suffix)) ++n;
        return n;
    }
    const std::string& path() const { return path_; }

  private:
    std::string path_;
    std::map<std::string, std::vector<int64_t>> shapes_;
};

[[noreturn]] void bad_layout(const Shapes& s, const std::string& what) {
    throw std::runtime_error("single file '" + s.path() + "': " + what +
                             "; t2i reads Stable Diffusion 1.x / 2.x checkpoints in the original "
                             "(LDM) layout");
}

// A list, or one int when every entry is the same (diffusers writes `layers_per_block: 2`).
json int_or_list(const std::vector<int64_t>& v) {
    for (const auto x : v)
        if (x != v.front()) return v;
    return v.front();
}

json infer_unet(const Shapes& s, bool sd2) {
    const std::string P = std::string(kLdmUnetPrefix);
    const int64_t n_in = s.count(P + "input_blocks."), n_out = s.count(P + "output_blocks.");
    s(P + "input_blocks.0.0.weight", 4);
    // The first downsampler sits after layers_per_block resnets; one level has none.
    int64_t lpb = n_in - 1;
    for (int64_t k = 1; k < n_in; ++k)
        if (s.has(P + "input_blocks." + std::to_string(k) + ".0.op.weight")) {
            lpb = k - 1;
            break;
        }
    const int64_t levels = lpb > 0 ? n_out / (lpb + 1) : 0;
    if (lpb < 1 || levels < 1 || n_out != levels * (lpb + 1) || n_in != levels * (lpb + 1))
        bad_layout(s, "its UNet has " + std::to_string(n_in) + " input_blocks and " +
                          std::to_string(n_out) + " output_blocks, which no block layout fits");
    std::vector<int64_t> channels, layers, heads;
    std::vector<std::string> down, up;
    for (int64_t i = 0; i < levels; ++i) {
        const std::string at = P + "input_blocks." + std::to_string(1 + i * (lpb + 1));
        channels.push_back(s(at + ".0.out_layers.3.weight")[0]);
        const bool attn = s.has(at + ".1.proj_in.weight");
        down.push_back(attn ? "CrossAttnDownBlock2D" : "DownBlock2D");
        layers.push_back(attn ? s.run(at + ".1.transformer_blocks.", ".attn1.to_q.weight") : 1);
        const bool up_attn =
            s.has(P + "output_blocks." + std::to_string(i * (lpb + 1)) + ".1.proj_in.weight");
        up.push_back(up_attn ? "CrossAttnUpBlock2D" : "UpBlock2D");
        // SD 2.x: heads of 64 channels (attention_head_dim [5, 10, 20, 20] for 320..1280).
        const int64_t h = channels.back() / 64;
        heads.push_back(h > 0 && channels.back() % h == 0 ? h : 1);
    }
    const std::string mid = P + "middle_block.1.";
    const auto& proj_in   = s(mid + "proj_in.weight", 2);
    // The mid block's transformer depth is the last entry (diffusers' UNetMidBlock2DCrossAttn).
    layers.back() = s.run(mid + "transformer_blocks.", ".attn1.to_q.weight");
    return {
        {"_class_name", "UNet2DConditionModel"},
        {"_diffusers_version", "0.27.2"},
        {"act_fn", "silu"},
        {"attention_head_dim", sd2 ? int_or_list(heads) : json(8)},
        {"block_out_channels", channels},
        {"center_input_sample", false},
        {"cross_attention_dim", s(mid + "transformer_blocks.0.attn2.to_k.weight", 2)[1]},
        {"down_block_types", down},
        {"downsample_padding", 1},
        {"flip_sin_to_cos", true},
        {"freq_shift", 0},
        {"in_channels", s(P + "input_blocks.0.0.weight")[1]},
        {"layers_per_block", lpb},
        {"mid_block_scale_factor", 1},
        {"mid_block_type", "UNetMidBlock2DCrossAttn"},
        {"norm_eps", 1e-5},
        {"norm_num_groups", 32},
        {"out_channels", s(P + "out.2.weight")[0]},
        {"sample_size", sd2 ? 96 : 64},  // 768 / 512 pixels, as from_single_file's defaults
        {"transformer_layers_per_block", int_or_list(layers)},
        {"up_block_types", up},
        {"upcast_attention", false},
        {"use_linear_projection", proj_in.size() == 2},
    };
}

json infer_vae(const Shapes& s, bool sd2) {
    const std::string V  = std::string(kLdmVaePrefix);
    const int64_t levels = s.run(V + "encoder.down.", ".block.0.conv1.weight");
    const int64_t lpb    = s.run(V + "encoder.down.0.block.", ".conv1.weight");
    if (levels < 1 || lpb < 1) s(V + "encoder.down.0.block.0.conv1.weight");  // names it
    std::vector<int64_t> channels;
    for (int64_t i = 0; i < levels; ++i)
        channels.push_back(s(V + "encoder.down." + std::to_string(i) + ".block.0.conv2.weight")[0]);
    return {
        {"_class_name", "AutoencoderKL"},
        {"_diffusers_version", "0.27.2"},
        {"act_fn", "silu"},
        {"block_out_channels", channels},
        {"down_block_types", std::vector<std::string>(levels, "DownEncoderBlock2D")},
        {"in_channels", s(V + "encoder.conv_in.weight", 2)[1]},
        {"latent_channels", s(V + "decoder.conv_in.weight", 2)[1]},
        {"layers_per_block", lpb},
        {"norm_num_groups", 32},
        {"out_channels", s(V + "decoder.conv_out.weight")[0]},
        {"sample_size", sd2 ? 768 : 512},
        {"scaling_factor", 0.18215},
        {"up_block_types", std::vector<std::string>(levels, "UpDecoderBlock2D")},
    };
}

json infer_text_encoder(const Shapes& s, bool open_clip) {
    std::string embed, positions, fc1, layer_prefix, layer_suffix;
    int64_t layers = 0;
    if (open_clip) {
        const std::string O = std::string(kLdmOpenClipPrefix);
        embed               = O + "token_embedding.weight";
        positions           = O + "positional_embedding";
        fc1                 = O + "transformer.resblocks.0.mlp.c_fc.weight";
        layers              = s.run(O + "transformer.resblocks.", ".attn.in_proj_weight");
        // A file of the original training (it keeps OpenCLIP's text_projection) has all 24
        // resblocks; SD 2.x uses the penultimate one's output, so diffusers' model has 23.
        if (s.has(O + "text_projection") && layers > 1) --layers;
    } else {
        std::string T = std::string(kLdmClipPrefix) + "text_model.";
        if (!s.has(T + "embeddings.token_embedding.weight")) T = kLdmClipPrefix;  // older files
        embed     = T + "embeddings.token_embedding.weight";
        positions = T + "embeddings.position_embedding.weight";
        fc1       = T + "encoder.layers.0.mlp.fc1.weight";
        layers    = s.run(T + "encoder.layers.", ".self_attn.q_proj.weight");
    }
    const auto& tokens = s(embed, 2);
    const int64_t d    = tokens[1];
    return {
        {"architectures", {"CLIPTextModel"}},
        {"attention_dropout", 0.0},
        {"bos_token_id", 0},  // the legacy ids of SD 1.5's and SD 2.1's config.json
        {"eos_token_id", 2},
        {"hidden_act", open_clip ? "gelu" : "quick_gelu"},
        {"hidden_size", d},
        {"initializer_factor", 1.0},
        {"initializer_range", 0.02},
        {"intermediate_size", s(fc1, 2)[0]},
        {"layer_norm_eps", 1e-5},
        {"max_position_embeddings", s(positions, 2)[0]},
        {"model_type", "clip_text_model"},
        {"num_attention_heads", d % 64 == 0 ? d / 64 : 1},  // 64 channels per head in SD
        {"num_hidden_layers", layers},
        {"pad_token_id", 1},
        {"projection_dim", d},
        {"torch_dtype", "float32"},
        {"vocab_size", tokens[0]},
    };
}

}  // namespace

SingleFileConfigs infer_single_file_configs(const io::SafetensorsFile& file) {
    const Shapes s(file);
    SingleFileConfigs c;
    c.open_clip = s.has(std::string(kLdmOpenClipPrefix) + "token_embedding.weight");
    const bool clip =
        s.has(std::string(kLdmClipPrefix) + "text_model.embeddings.token_embedding.weight") ||
        s.has(std::string(kLdmClipPrefix) + "embeddings.token_embedding.weight");
    if (!c.open_clip && !clip)
        bad_layout(s,
                   "it has no text encoder (cond_stage_model.transformer.* for SD 1.x, "
                   "cond_stage_model.model.* for SD 2.x)");
    if (!s.has(std::string(kLdmUnetPrefix) + "input_blocks.0.0.weight"))
        bad_layout(s, "it has no UNet (model.diffusion_model.*)");
    if (!s.has(std::string(kLdmVaePrefix) + "encoder.conv_in.weight"))
        bad_layout(s, "it has no VAE (first_stage_model.*)");
    c.unet         = infer_unet(s, c.open_clip);
    c.vae          = infer_vae(s, c.open_clip);
    c.text_encoder = infer_text_encoder(s, c.open_clip);
    c.scheduler    = sd_scheduler_config(c.open_clip);
    c.model_index  = sd_model_index(c.scheduler["_class_name"]);
    return c;
}

void check_config_fits_weights(const std::string& component, const nlohmann::json& inferred,
                               const io::JsonConfig& given, const std::string& weights_file) {
    const io::JsonConfig weights(inferred, weights_file);
    std::vector<std::pair<std::string, json>> from_weights, from_config;  // normalized
    auto both = [&](const std::string& key, auto read) {
        from_weights.emplace_back(key, read(weights));
        from_config.emplace_back(key, read(given));
    };
    if (component == "unet") {
        for (const char* key :
             {"block_out_channels", "layers_per_block", "in_channels", "out_channels",
              "cross_attention_dim", "use_linear_projection", "down_block_types", "up_block_types",
              "transformer_layers_per_block"})
            both(key, [&](const io::JsonConfig& j) {
                const auto c   = models::UNet2DConditionConfig::from_json(j);
                const json all = {{"block_out_channels", c.block_out_channels},
                                  {"layers_per_block", c.layers_per_block},
                                  {"in_channels", c.in_channels},
                                  {"out_channels", c.out_channels},
                                  {"cross_attention_dim", c.cross_attention_dim},
                                  {"use_linear_projection", c.use_linear_projection},
                                  {"down_block_types", c.down_block_types},
                                  {"up_block_types", c.up_block_types},
                                  {"transformer_layers_per_block", c.transformer_layers_per_block}};
                return all[key];
            });
    } else if (component == "vae") {
        for (const char* key : {"block_out_channels", "layers_per_block", "latent_channels",
                                "in_channels", "out_channels"})
            both(key, [&](const io::JsonConfig& j) {
                const auto c   = models::AutoencoderKLConfig::from_json(j);
                const json all = {{"block_out_channels", c.block_out_channels},
                                  {"layers_per_block", c.layers_per_block},
                                  {"latent_channels", c.latent_channels},
                                  {"in_channels", c.in_channels},
                                  {"out_channels", c.out_channels}};
                return all[key];
            });
    } else {
        for (const char* key :
             {"hidden_size", "intermediate_size", "vocab_size", "max_position_embeddings"})
            both(key, [&](const io::JsonConfig& j) {
                const auto c   = models::CLIPTextConfig::from_json(j);
                const json all = {{"hidden_size", c.hidden_size},
                                  {"intermediate_size", c.intermediate_size},
                                  {"vocab_size", c.vocab_size},
                                  {"max_position_embeddings", c.max_position_embeddings}};
                return all[key];
            });
        // Fewer layers than the file holds is what SD 2.x does (see infer_text_encoder); more
        // would leave layers without weights.
        const auto layers = models::CLIPTextConfig::from_json(given).num_hidden_layers;
        const auto held   = inferred.at("num_hidden_layers").get<int64_t>();
        if (layers > held)
            throw std::runtime_error("'" + given.path() + "' says num_hidden_layers " +
                                     std::to_string(layers) + " but the single file '" +
                                     weights_file + "' holds " + std::to_string(held) +
                                     " text encoder layers; --config must be a diffusers folder "
                                     "of the same model family as the file");
    }
    for (size_t i = 0; i < from_weights.size(); ++i)
        if (from_weights[i].second != from_config[i].second)
            throw std::runtime_error(
                "single file '" + weights_file + "': its " + component + " weights give " +
                from_weights[i].first + " = " + from_weights[i].second.dump() + " but '" +
                given.path() + "' says " + from_config[i].second.dump() +
                "; --config must be a diffusers folder of the same model family (the same "
                "architecture) as the file, e.g. stable-diffusion-v1-5 for an SD 1.x file");
}

}  // namespace t2i::pipeline
