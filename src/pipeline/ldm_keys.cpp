// Implements: pipeline/ldm_keys.h. Mirrors: diffusers
// scripts/convert_diffusers_to_original_stable_diffusion.py and loaders/single_file_utils.py.
//
// LDM numbering of the UNet (openaimodel.py's UNetModel), with lpb_i = layers_per_block of down
// block i and n blocks:
//   input_blocks.0.0                      conv_in
//   input_blocks.{s_i + j}.0 / .1         down_blocks.i.resnets.j / .attentions.j, j < lpb_i,
//                                         s_i = 1 + sum_{k<i} (lpb_k + 1)
//   input_blocks.{s_i + lpb_i}.0.op       down_blocks.i.downsamplers.0.conv (not the last block)
//   middle_block.0 / .1 / .2              mid_block.resnets.0 / attentions.0 / resnets.1
//   output_blocks.{t_i + j}.0 / .1        up_blocks.i.resnets.j / .attentions.j, j <= rlpb_i,
//                                         rlpb = lpb reversed, t_i = sum_{k<i} (rlpb_k + 1)
//   output_blocks.{t_i + rlpb_i}.{1 + has_attention}.conv   up_blocks.i.upsamplers.0.conv
//   time_embed.0 / .2, out.0 / .2         time_embedding.linear_1 / 2, conv_norm_out / conv_out
// The VAE's decoder numbers its levels from the bottom: decoder.up.{n-1-i} = up_blocks.i.
#include "pipeline/ldm_keys.h"

#include <stdexcept>

namespace t2i::pipeline {

namespace {

using Parts = std::vector<std::string>;

Parts split(const std::string& key) {
    Parts parts;
    size_t start = 0;
    for (size_t dot = key.find('.'); dot != std::string::npos; dot = key.find('.', start)) {
        parts.push_back(key.substr(start, dot - start));
        start = dot + 1;
    }
    parts.push_back(key.substr(start));
    return parts;
}

std::string join(const Parts& parts, size_t from) {
    std::string out;
    for (size_t i = from; i < parts.size(); ++i) out += (out.empty() ? "" : ".") + parts[i];
    return out;
}

bool starts_with(const std::string& s, const std::string& prefix) {
    return s.compare(0, prefix.size(), prefix) == 0;
}

// A non-negative decimal index, or -1.
int64_t index_of(const std::string& s) {
    if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos)
        return -1;
    return std::stoll(s);
}

// Replaces the first name of `rest` by its partner in `pairs` (either direction).
std::string rename_first(const std::string& rest,
                         const std::vector<std::pair<std::string, std::string>>& pairs,
                         bool forward) {
    for (const auto& [a, b] : pairs) {
        const std::string& from = forward ? a : b;
        const std::string& to   = forward ? b : a;
        if (rest == from || starts_with(rest, from + ".")) return to + rest.substr(from.size());
    }
    return rest;
}

// diffusers ResnetBlock2D <-> LDM ResBlock (UNet) and ResnetBlock (VAE).
const std::vector<std::pair<std::string, std::string>> kUnetResnet = {
    {"norm1", "in_layers.0"},  {"conv1", "in_layers.2"},  {"time_emb_proj", "emb_layers.1"},
    {"norm2", "out_layers.0"}, {"conv2", "out_layers.3"}, {"conv_shortcut", "skip_connection"},
};
const std::vector<std::pair<std::string, std::string>> kVaeResnet = {
    {"conv_shortcut", "nin_shortcut"}};
// The VAE mid-block attention (diffusers Attention <-> LDM AttnBlock); the LDM name first.
const std::vector<std::pair<std::string, std::vector<std::string>>> kVaeAttention = {
    {"group_norm", {"norm", "group_norm"}},
    {"to_q", {"q", "to_q", "query"}},
    {"to_k", {"k", "to_k", "key"}},
    {"to_v", {"v", "to_v", "value"}},
    {"to_out.0", {"proj_out", "to_out.0", "proj_attn"}},
};
// UNet top-level layers, diffusers -> LDM.
const std::vector<std::pair<std::string, std::string>> kUnetTop = {
    {"time_embedding.linear_1", "time_embed.0"},
    {"time_embedding.linear_2", "time_embed.2"},
    {"conv_in", "input_blocks.0.0"},
    {"conv_norm_out", "out.0"},
    {"conv_out", "out.2"},
};
// OpenCLIP resblock names, diffusers (inside text_model.encoder.layers.L) -> LDM.
const std::vector<std::pair<std::string, std::string>> kOpenClipLayer = {
    {"layer_norm1", "ln_1"},
    {"layer_norm2", "ln_2"},
    {"mlp.fc1", "mlp.c_fc"},
    {"mlp.fc2", "mlp.c_proj"},
    {"self_attn.out_proj", "attn.out_proj"},
};

// Where each UNet block starts in input_blocks / output_blocks.
struct UnetNumbering {
    std::vector<int64_t> down_start, down_layers, up_start, up_layers;
    std::vector<bool> up_attention;
};

UnetNumbering unet_numbering(const models::UNet2DConditionConfig& c) {
    UnetNumbering u;
    const size_t n = c.block_out_channels.size();
    int64_t in = 1, out = 0;
    for (size_t i = 0; i < n; ++i) {
        u.down_start.push_back(in);
        u.down_layers.push_back(c.layers_per_block[i]);
        in += c.layers_per_block[i] + 1;
        u.up_start.push_back(out);
        u.up_layers.push_back(c.layers_per_block[n - 1 - i] + 1);
        out += c.layers_per_block[n - 1 - i] + 1;
        u.up_attention.push_back(c.up_block_types[i] == "CrossAttnUpBlock2D");
    }
    return u;
}

[[noreturn]] void no_place(const std::string& component, const std::string& key) {
    throw std::runtime_error(component + " weight '" + key +
                             "' has no place in the original (LDM) Stable Diffusion layout; only "
                             "SD 1.x / 2.x style components can be written as one file");
}

}  // namespace

LdmKey unet_key_to_ldm(const std::string& key, const models::UNet2DConditionConfig& config) {
    const std::string P = kLdmUnetPrefix;
    for (const auto& [d, l] : kUnetTop)
        if (starts_with(key, d + ".")) return {P + l + key.substr(d.size())};
    const auto u    = unet_numbering(config);
    const Parts p   = split(key);
    const int64_t i = p.size() > 4 ? index_of(p[1]) : -1, j = p.size() > 4 ? index_of(p[3]) : -1;
    auto res = [&](size_t from) { return rename_first(join(p, from), kUnetResnet, true); };
    if (p[0] == "down_blocks" && i >= 0 && i < (int64_t)u.down_start.size() && j >= 0) {
        const std::string at = "input_blocks." + std::to_string(u.down_start[i] + j);
        if (p[2] == "resnets" && j < u.down_layers[i]) return {P + at + ".0." + res(4)};
        if (p[2] == "attentions" && j < u.down_layers[i]) return {P + at + ".1." + join(p, 4)};
        if (p[2] == "downsamplers" && j == 0 && p[4] == "conv")
            return {P + "input_blocks." + std::to_string(u.down_start[i] + u.down_layers[i]) +
                    ".0.op." + join(p, 5)};
    }
    if (p[0] == "mid_block" && p.size() > 3) {
        const int64_t m = index_of(p[2]);
        if (p[1] == "resnets" && (m == 0 || m == 1))
            return {P + "middle_block." + std::to_string(2 * m) + "." + res(3)};
        if (p[1] == "attentions" && m == 0) return {P + "middle_block.1." + join(p, 3)};
    }
    if (p[0] == "up_blocks" && i >= 0 && i < (int64_t)u.up_start.size() && j >= 0) {
        const int64_t last   = u.up_start[i] + u.up_layers[i] - 1;
        const std::string at = "output_blocks." + std::to_string(u.up_start[i] + j);
        if (p[2] == "resnets" && j < u.up_layers[i]) return {P + at + ".0." + res(4)};
        if (p[2] == "attentions" && j < u.up_layers[i]) return {P + at + ".1." + join(p, 4)};
        if (p[2] == "upsamplers" && j == 0 && p[4] == "conv")
            return {P + "output_blocks." + std::to_string(last) + "." +
                    (u.up_attention[i] ? "2" : "1") + ".conv." + join(p, 5)};
    }
    no_place("unet", key);
}

std::vector<LdmKey> ldm_key_to_unet(const std::string& full_key,
                                    const models::UNet2DConditionConfig& config) {
    if (!starts_with(full_key, kLdmUnetPrefix)) return {};
    const std::string key = full_key.substr(std::string(kLdmUnetPrefix).size());
    for (const auto& [d, l] : kUnetTop)
        if (starts_with(key, l + ".")) return {{d + key.substr(l.size())}};
    const auto u  = unet_numbering(config);
    const Parts p = split(key);
    if (p.size() < 4) return {};
    const int64_t n = index_of(p[1]), m = index_of(p[2]);
    auto res = [&](size_t from) { return rename_first(join(p, from), kUnetResnet, false); };
    if (p[0] == "input_blocks") {
        for (size_t i = 0; i < u.down_start.size(); ++i) {
            const int64_t j = n - u.down_start[i];
            if (j < 0 || j > u.down_layers[i]) continue;
            const std::string at = "down_blocks." + std::to_string(i);
            if (j == u.down_layers[i]) {
                if (m == 0 && p[3] == "op" && i + 1 < u.down_start.size())
                    return {{at + ".downsamplers.0.conv." + join(p, 4)}};
                return {};
            }
            if (m == 0) return {{at + ".resnets." + std::to_string(j) + "." + res(3)}};
            if (m == 1) return {{at + ".attentions." + std::to_string(j) + "." + join(p, 3)}};
        }
        return {};
    }
    if (p[0] == "middle_block") {
        if (n == 0 || n == 2)
            return {{"mid_block.resnets." + std::to_string(n / 2) + "." + res(2)}};
        if (n == 1) return {{"mid_block.attentions.0." + join(p, 2)}};
        return {};
    }
    if (p[0] == "output_blocks") {
        for (size_t i = 0; i < u.up_start.size(); ++i) {
            const int64_t j = n - u.up_start[i];
            if (j < 0 || j >= u.up_layers[i]) continue;
            const std::string at = "up_blocks." + std::to_string(i);
            const bool upsampler = j + 1 == u.up_layers[i] && i + 1 < u.up_start.size() &&
                                   p[3] == "conv" && m == (u.up_attention[i] ? 2 : 1);
            if (upsampler) return {{at + ".upsamplers.0.conv." + join(p, 4)}};
            if (m == 0) return {{at + ".resnets." + std::to_string(j) + "." + res(3)}};
            if (m == 1) return {{at + ".attentions." + std::to_string(j) + "." + join(p, 3)}};
            return {};
        }
    }
    return {};
}

LdmKey vae_key_to_ldm(const std::string& key, const models::AutoencoderKLConfig& config) {
    const std::string P = kLdmVaePrefix;
    const auto n        = static_cast<int64_t>(config.block_out_channels.size());
    const Parts p       = split(key);
    if (p[0] == "quant_conv" || p[0] == "post_quant_conv") return {P + key};
    if (p.size() < 3 || (p[0] != "encoder" && p[0] != "decoder")) no_place("vae", key);
    const std::string& side = p[0];
    if (p[1] == "conv_in" || p[1] == "conv_out") return {P + key};
    if (p[1] == "conv_norm_out") return {P + side + ".norm_out." + join(p, 2)};
    auto res = [&](size_t from) { return rename_first(join(p, from), kVaeResnet, true); };
    if (p[1] == "mid_block" && p.size() > 4) {
        const int64_t m = index_of(p[3]);
        if (p[2] == "resnets" && (m == 0 || m == 1))
            return {P + side + ".mid.block_" + std::to_string(m + 1) + "." + res(4)};
        if (p[2] == "attentions" && m == 0) {
            const std::string rest = join(p, 4);
            for (const auto& [d, names] : kVaeAttention) {
                if (!starts_with(rest, d + ".")) continue;
                const std::string leaf = rest.substr(d.size() + 1);
                const bool conv        = d != "group_norm" && leaf == "weight";
                return {P + side + ".mid.attn_1." + names[0] + "." + leaf,
                        conv ? LdmStorage::kConv1x1 : LdmStorage::kSame};
            }
        }
    }
    const int64_t i = p.size() > 4 ? index_of(p[2]) : -1, j = p.size() > 4 ? index_of(p[4]) : -1;
    if (i >= 0 && i < n && j >= 0) {
        if (side == "encoder" && p[1] == "down_blocks") {
            const std::string at = P + "encoder.down." + std::to_string(i);
            if (p[3] == "resnets") return {at + ".block." + std::to_string(j) + "." + res(5)};
            if (p[3] == "downsamplers" && j == 0) return {at + ".downsample." + join(p, 5)};
        }
        if (side == "decoder" && p[1] == "up_blocks") {
            const std::string at = P + "decoder.up." + std::to_string(n - 1 - i);
            if (p[3] == "resnets") return {at + ".block." + std::to_string(j) + "." + res(5)};
            if (p[3] == "upsamplers" && j == 0) return {at + ".upsample." + join(p, 5)};
        }
    }
    no_place("vae", key);
}

std::vector<LdmKey> ldm_key_to_vae(const std::string& full_key,
                                   const models::AutoencoderKLConfig& config) {
    if (!starts_with(full_key, kLdmVaePrefix)) return {};
    const std::string key = full_key.substr(std::string(kLdmVaePrefix).size());
    const auto n          = static_cast<int64_t>(config.block_out_channels.size());
    const Parts p         = split(key);
    if (p[0] == "quant_conv" || p[0] == "post_quant_conv") return {{key}};
    if (p.size() < 3 || (p[0] != "encoder" && p[0] != "decoder")) return {};
    const std::string& side = p[0];
    if (p[1] == "conv_in" || p[1] == "conv_out") return {{key}};
    if (p[1] == "norm_out") return {{side + ".conv_norm_out." + join(p, 2)}};
    auto res = [&](size_t from) { return rename_first(join(p, from), kVaeResnet, false); };
    if (p[1] == "mid" && p.size() > 3) {
        if (p[2] == "block_1" || p[2] == "block_2")
            return {{side + ".mid_block.resnets." + (p[2] == "block_1" ? "0." : "1.") + res(3)}};
        if (p[2] == "attn_1") {
            const std::string rest = join(p, 3);
            for (const auto& [d, names] : kVaeAttention) {
                for (const auto& name : names) {
                    if (!starts_with(rest, name + ".")) continue;
                    const std::string leaf = rest.substr(name.size() + 1);
                    const bool conv        = d != "group_norm" && leaf == "weight";
                    return {{side + ".mid_block.attentions.0." + d + "." + leaf,
                             conv ? LdmStorage::kConv1x1 : LdmStorage::kSame}};
                }
            }
        }
        return {};
    }
    const int64_t i = index_of(p[2]);
    if (i < 0 || i >= n || p.size() < 5) return {};
    if (side == "encoder" && p[1] == "down") {
        const std::string at = "encoder.down_blocks." + std::to_string(i);
        if (p[3] == "block" && index_of(p[4]) >= 0)
            return {{at + ".resnets." + p[4] + "." + res(5)}};
        if (p[3] == "downsample") return {{at + ".downsamplers.0." + join(p, 4)}};
    }
    if (side == "decoder" && p[1] == "up") {
        const std::string at = "decoder.up_blocks." + std::to_string(n - 1 - i);
        if (p[3] == "block" && index_of(p[4]) >= 0)
            return {{at + ".resnets." + p[4] + "." + res(5)}};
        if (p[3] == "upsample") return {{at + ".upsamplers.0." + join(p, 4)}};
    }
    return {};
}

LdmKey text_encoder_key_to_ldm(const std::string& key, bool open_clip) {
    if (!starts_with(key, "text_model.")) no_place("text_encoder", key);
    if (!open_clip) return {kLdmClipPrefix + key};
    const std::string O = kLdmOpenClipPrefix;
    if (key == "text_model.embeddings.token_embedding.weight")
        return {O + "token_embedding.weight"};
    if (key == "text_model.embeddings.position_embedding.weight")
        return {O + "positional_embedding"};
    if (starts_with(key, "text_model.final_layer_norm."))
        return {O + "ln_final." + key.substr(std::string("text_model.final_layer_norm.").size())};
    const Parts p = split(key);
    if (p.size() >= 6 && p[1] == "encoder" && p[2] == "layers" && index_of(p[3]) >= 0) {
        const std::string at   = O + "transformer.resblocks." + p[3] + ".";
        const std::string rest = join(p, 4);
        for (int part = 0; part < 3 && p.size() == 7; ++part)
            if (p[4] == "self_attn" && p[5] == std::string(1, "qkv"[part]) + "_proj")
                return {at + "attn.in_proj_" + p[6], LdmStorage::kQkvPart, part};
        const std::string renamed = rename_first(rest, kOpenClipLayer, true);
        if (renamed != rest) return {at + renamed};
    }
    no_place("text_encoder", key);
}

std::vector<LdmKey> ldm_key_to_text_encoder(const std::string& full_key, bool open_clip) {
    if (!open_clip) {
        if (!starts_with(full_key, kLdmClipPrefix)) return {};
        const std::string key = full_key.substr(std::string(kLdmClipPrefix).size());
        // Older SD 1.x files (transformers < 4.22) lack the `text_model.` level.
        return {{starts_with(key, "text_model.") ? key : "text_model." + key}};
    }
    if (!starts_with(full_key, kLdmOpenClipPrefix)) return {};
    const std::string key = full_key.substr(std::string(kLdmOpenClipPrefix).size());
    if (key == "token_embedding.weight") return {{"text_model.embeddings.token_embedding.weight"}};
    if (key == "positional_embedding") return {{"text_model.embeddings.position_embedding.weight"}};
    if (starts_with(key, "ln_final.")) return {{"text_model.final_layer_norm." + key.substr(9)}};
    const Parts p = split(key);
    if (p.size() < 5 || p[0] != "transformer" || p[1] != "resblocks" || index_of(p[2]) < 0)
        return {};
    const std::string at = "text_model.encoder.layers." + p[2] + ".";
    if (p.size() == 5 && p[3] == "attn" && starts_with(p[4], "in_proj_")) {
        const std::string leaf = p[4].substr(8);  // weight | bias
        if (leaf != "weight" && leaf != "bias") return {};
        std::vector<LdmKey> out;
        for (int part = 0; part < 3; ++part)
            out.push_back(
                {at + "self_attn." + "qkv"[part] + "_proj." + leaf, LdmStorage::kQkvPart, part});
        return out;
    }
    const std::string rest    = join(p, 3);
    const std::string renamed = rename_first(rest, kOpenClipLayer, false);
    if (renamed == rest) return {};
    return {{at + renamed}};
}

bool is_skipped_ldm_key(const std::string& key, int64_t text_layers) {
    static const char* kScheduleBuffers[] = {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "logvar",
        "lvlb_weights",
    };
    for (const char* name : kScheduleBuffers)
        if (key == name) return true;
    if (starts_with(key, "model_ema.")) return true;
    const std::string O = kLdmOpenClipPrefix;
    if (key == O + "text_projection" || key == O + "logit_scale" || key == O + "attn_mask")
        return true;
    // transformers < 4.31 saved CLIP's position_ids (an arange) beside the weights.
    const bool text = starts_with(key, kLdmClipPrefix) || starts_with(key, O);
    if (text && key.size() > 13 && key.compare(key.size() - 13, 13, ".position_ids") == 0)
        return true;
    const std::string blocks = O + "transformer.resblocks.";
    if (starts_with(key, blocks)) {
        const std::string rest = key.substr(blocks.size());
        const int64_t layer    = index_of(rest.substr(0, rest.find('.')));
        return layer >= text_layers;
    }
    return false;
}

std::map<std::string, std::string> ldm_unet_module_names(const models::UNet2DConditionModel& unet) {
    std::map<std::string, std::string> out;
    const std::string prefix = kLdmUnetPrefix, suffix = ".weight";
    for (const auto& p : unet->named_parameters()) {
        const auto& key = p.key();
        if (key.size() <= suffix.size() ||
            key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0)
            continue;
        std::string ldm;
        try {
            ldm = unet_key_to_ldm(key, unet->config).name;
        } catch (const std::exception&) {
            continue;  // a tensor without a place in the original layout (LoRA parameters)
        }
        out[ldm.substr(prefix.size(), ldm.size() - prefix.size() - suffix.size())] =
            key.substr(0, key.size() - suffix.size());
    }
    return out;
}

}  // namespace t2i::pipeline
