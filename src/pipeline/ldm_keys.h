// Implements: the key names of a Stable Diffusion 1.x / 2.x checkpoint in the original (LDM /
// CompVis) layout, one file with the UNet under `model.diffusion_model.`, the VAE under
// `first_stage_model.` and the text encoder under `cond_stage_model.transformer.` (SD 1.x, the HF
// CLIP names) or `cond_stage_model.model.` (SD 2.x, OpenCLIP names with a fused q/k/v). Both
// directions, derived from the component's config (block counts and layers per block), never
// from a fixed 4-level / 2-layer SD shape.
// Mirrors: diffusers scripts/convert_diffusers_to_original_stable_diffusion.py (diffusers ->
// original) and loaders/single_file_utils.py convert_ldm_unet_checkpoint,
// convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
// (original -> diffusers).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "models/unet.h"
#include "models/vae.h"

namespace t2i::pipeline {

constexpr const char* kLdmUnetPrefix     = "model.diffusion_model.";
constexpr const char* kLdmVaePrefix      = "first_stage_model.";
constexpr const char* kLdmClipPrefix     = "cond_stage_model.transformer.";
constexpr const char* kLdmOpenClipPrefix = "cond_stage_model.model.";

// How a diffusers tensor is stored in the original layout.
enum class LdmStorage {
    kSame,     // same values and shape
    kConv1x1,  // VAE mid-block attention q/k/v/proj_out: Linear [C, C] stored as conv [C, C, 1, 1]
    kQkvPart,  // OpenCLIP attn.in_proj_weight / in_proj_bias = cat(q, k, v) along dim 0
};

// One diffusers tensor's place in the original layout.
struct LdmKey {
    std::string name;  // full original key, prefix included
    LdmStorage storage = LdmStorage::kSame;
    int part           = 0;  // kQkvPart: 0 = q, 1 = k, 2 = v
};

// diffusers key (relative to the component) -> original key. Throws naming the key when the
// component has a tensor the original layout has no place for.
LdmKey unet_key_to_ldm(const std::string& key, const models::UNet2DConditionConfig& config);
LdmKey vae_key_to_ldm(const std::string& key, const models::AutoencoderKLConfig& config);
LdmKey text_encoder_key_to_ldm(const std::string& key, bool open_clip);

// Original key (prefix included) -> the diffusers key(s) it holds: none when the key is not of
// that component (or is a tolerated extra, see single_file.cpp), three for an OpenCLIP in_proj.
// `name` of each result is the diffusers key; storage/part say how to cut the original tensor.
// Accepted besides the canonical names: SD 1.x text encoders without the `text_model.` level
// (older files), VAE attention `to_q/query`, `to_out.0/proj_attn`, `group_norm` (files written by
// older diffusers conversion scripts).
std::vector<LdmKey> ldm_key_to_unet(const std::string& key,
                                    const models::UNet2DConditionConfig& config);
std::vector<LdmKey> ldm_key_to_vae(const std::string& key,
                                   const models::AutoencoderKLConfig& config);
std::vector<LdmKey> ldm_key_to_text_encoder(const std::string& key, bool open_clip);

// The UNet's weighted modules by their original-layout name (without the prefix) -> diffusers
// module name, e.g. "input_blocks.4.1.transformer_blocks.0.attn1.to_q" -> "down_blocks.1.
// attentions.0.transformer_blocks.0.attn1.to_q": the aliases under which LoRA files in kohya
// layout with LDM names (lora_unet_input_blocks_4_1_...) address them.
std::map<std::string, std::string> ldm_unet_module_names(const models::UNet2DConditionModel& unet);

// Keys an original checkpoint may carry that the diffusers pipeline does not use, skipped on
// reading as from_single_file skips them: the EMA copy (`model_ema.*`), the training schedule's
// buffers (`alphas_cumprod`, ...), CLIP's `position_ids`, OpenCLIP's `text_projection`,
// `logit_scale`, `attn_mask`, and resblocks at or beyond `text_layers` (SD 2.x's OpenCLIP has 24;
// SD 2.x uses the penultimate one's output, so diffusers' text encoder has 23).
bool is_skipped_ldm_key(const std::string& key, int64_t text_layers);

}  // namespace t2i::pipeline
