// Implements: LoRA (low-rank adaptation) of the UNet's attention projections, as diffusers'
// examples/text_to_image/train_text_to_image_lora.py sets it up with PEFT: `LoraConfig(r=rank,
// lora_alpha=rank, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v",
// "to_out.0"])`, i.e. W x + (alpha / r) * B A x with A ~ N(0, 1/r) and B = 0, the base weights
// frozen. Also: LoRA files as deltas per module (read in models/lora_file.cpp: diffusers/PEFT and
// kohya layouts), applied to a model unfused (adapters, diffusers' default) or merged into the
// weights (diffusers' fuse_lora).
// Mirrors: peft/tuners/lora/layer.py (LoraLayer.update_layer, reset_lora_parameters, forward,
// merge), diffusers/training_utils.py (cast_training_params), StableDiffusionPipeline.
// save_lora_weights (the "unet."-prefixed PEFT state dict).
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/unet.h"

namespace t2i::models {

// The LoRA weights file of save_lora_weights (`t2i train-lora`'s output and checkpoints), and
// what `generate --lora DIR` reads in DIR.
inline constexpr const char* kLoraWeightsName = "pytorch_lora_weights.safetensors";

// Adds one trainable LoRA of rank `rank` (lora_alpha = rank, so scale 1) to to_q, to_k, to_v and
// to_out.0 of every attention of `unet`, in fp32 on the UNet's device: A ~ N(0, 1/rank) drawn
// from `generator`, B = 0. Every other parameter of the UNet is frozen (requires_grad false).
// Returns the LoRA parameters by name, in module order: "<module>.lora_A.weight" /
// "<module>.lora_B.weight", the keys of diffusers' LoRA file without its "unet." prefix.
torch::OrderedDict<std::string, torch::Tensor> add_trainable_lora(UNet2DConditionModel& unet,
                                                                  int64_t rank,
                                                                  at::Generator& generator);

// The LoRA parameters of `unet` (those add_trainable_lora named), by name.
torch::OrderedDict<std::string, torch::Tensor> lora_parameters(const UNet2DConditionModel& unet);

// What StableDiffusionPipeline.save_lora_weights writes: "unet.<name>" for each LoRA parameter,
// in the parameters' dtype.
io::TensorMap lora_state_dict_for_saving(
    const torch::OrderedDict<std::string, torch::Tensor>& params);

// Copies the file's "unet.<name>" tensors into `params` (a resume): every key must match a
// parameter and every parameter must be in the file, with its shape; throws naming the file and
// the first mismatch.
void load_lora_parameters(torch::OrderedDict<std::string, torch::Tensor>& params,
                          const std::string& path);

// One module's LoRA from a file: delta W = alpha_scale * up @ down (flattened for convolutions).
struct LoraModule {
    std::string component;  // "unet" or "text_encoder"
    std::string module;     // diffusers / transformers module name, e.g. "mid_block.attentions.0.
                            // transformer_blocks.0.attn1.to_q"
    torch::Tensor down;     // lora_A / lora_down: [r, in] or [r, in, kh, kw]
    torch::Tensor up;       // lora_B / lora_up: [out, r] or [out, r, 1, 1]
    double alpha_scale = 1.0;  // lora_alpha / r (kohya's `alpha`); 1 when the file has none
    std::string key;           // the file's key of `down`, for messages
};

// A LoRA file read into modules (read_lora_file below, in models/lora_file.cpp).
struct LoraFile {
    std::string path;
    std::string format;  // "diffusers" (PEFT), "diffusers-attn-procs" or "kohya"
    std::vector<LoraModule> modules;
};

// Reads a LoRA file in the layouts users download, as diffusers' load_lora_weights maps them:
// - diffusers / PEFT: "unet.<module>.lora_A.weight" / ".lora_B.weight" (also "text_encoder.",
//   "base_model.model." or no prefix), optional "<module>.alpha", optional PEFT metadata
//   ("lora_adapter_metadata": lora_alpha, alpha_pattern);
// - diffusers' older attention-processor layout: "<attn>.processor.to_q_lora.down.weight" /
//   ".up.weight" (to_out_lora = to_out.0);
// - kohya / A1111: "lora_unet_<module with '_' for '.'>.lora_down.weight", ".lora_up.weight",
//   ".alpha" (scale alpha / r), "lora_te_..." for the text encoder.
// kohya names are resolved against the modules of `unet` / `text_encoder` (required for that
// layout), and against `unet_aliases` (other names -> UNet module name; the caller passes the
// original LDM names, pipeline/ldm_keys.h, which some kohya files use: lora_unet_input_blocks_..).
// Anything else (LyCORIS, SDXL's lora_te1_/te2_, a key without its pair) is an error naming the
// file and the key.
LoraFile read_lora_file(const std::string& path, const torch::nn::Module* unet,
                        const torch::nn::Module* text_encoder,
                        const std::map<std::string, std::string>& unet_aliases = {});

// The LoRA parameters of a run (add_trainable_lora's names) as a LoraFile of the UNet, scale 1.
LoraFile lora_file_from_parameters(const torch::OrderedDict<std::string, torch::Tensor>& params);

// The same LoRA in kohya / A1111 layout (what ComfyUI and A1111 load): "lora_unet_<module>.
// lora_down.weight", ".lora_up.weight" and ".alpha" (= alpha_scale x r, F32), as diffusers'
// convert_state_dict_to_kohya names them.
io::TensorMap to_kohya(const LoraFile& lora);

// The same LoRA in diffusers / PEFT layout ("unet.<module>.lora_A.weight", "text_encoder.
// ..."), alpha_scale folded into lora_B (the layout has no alpha), so the delta is unchanged.
io::TensorMap to_diffusers(const LoraFile& lora);

// delta W of one module in fp32, shaped like `weight`; throws naming the file key when the
// shapes do not fit `weight` [out, in] or [out, in, kh, kw].
torch::Tensor lora_delta(const LoraModule& m, const torch::Tensor& weight, const std::string& path);

// Applies `lora` times `scale` (diffusers' cross_attention_kwargs={"scale": s}, which also
// scales the text encoder's LoRA): the UNet's attention projections get adapters (unfused,
// diffusers' default) unless `fuse`; every other module, and all of them with `fuse`, get
// W += scale * delta W in fp32, then rounded to W's dtype (diffusers' fuse_lora). Throws naming
// the file and key when a module does not exist or the shapes do not fit.
void apply_lora(const LoraFile& lora, double scale, bool fuse, UNet2DConditionModel& unet,
                CLIPTextModel& text_encoder);

}  // namespace t2i::models
