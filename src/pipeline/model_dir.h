// Implements: the one place that knows a Stable Diffusion model folder in diffusers layout:
// model_index.json and one subfolder per component, each with config.json and weights. Reading:
// ModelFolder (a pipeline folder, or a checkpoint-N folder plus a base), the weight files the way
// diffusers / transformers name them (variants, sharded index files), each component built from
// its config.json with its weights loaded strictly, the scheduler config. Writing: component
// folders and whole pipeline folders, under temporary names renamed into place, model_index.json
// last. New formats plug in here: a single original-layout .safetensors file
// (pipeline/single_file.h) opens as a ModelFolder too.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/json_config.h"
#include "io/output_folder.h"
#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"
#include "tokenizer/clip_tokenizer.h"

namespace t2i::pipeline {

struct LoadOptions {
    std::string variant;                     // "" or e.g. "fp16": *.fp16.safetensors
    c10::optional<torch::ScalarType> dtype;  // parameter dtype after loading (default fp32)
    torch::Device device = torch::kCPU;
};

// model_index.json: component name -> (library, class name); null entries are skipped.
struct ModelIndex {
    std::string class_name;
    std::map<std::string, std::pair<std::string, std::string>> components;
    io::JsonConfig raw;
};

// Throws naming the file and the entry when model_index.json is not an object or an entry is
// not null or a [library, class] pair of strings.
ModelIndex read_model_index(const std::string& model_dir);
// The same for model_index.json contents read elsewhere; `where` names them in messages.
ModelIndex parse_model_index(const io::JsonConfig& raw, const std::string& where);

// read_model_index plus what a Stable Diffusion pipeline needs: unet, vae, text_encoder,
// tokenizer and scheduler entries, each with its subfolder. Throws naming the missing one.
ModelIndex read_pipeline_index(const std::string& model_dir);

// Throws unless the components of one pipeline fit together, before any forward pass: the
// UNet's in/out channels equal the VAE's latent_channels, each cross_attention_dim equals the
// text encoder's hidden_size, every token id is a row of the text encoder's embedding and
// model_max_length fits its position embedding. `where` names the model in messages.
void check_components_fit(const models::UNet2DConditionConfig& unet,
                          const models::AutoencoderKLConfig& vae,
                          const models::CLIPTextConfig& text_encoder,
                          const tokenizer::CLIPTokenizer& tokenizer, const std::string& where);

// The safetensors files holding a component's weights: `<base>[.<variant>].safetensors`, or the
// shards listed by `<base>.safetensors.index[.<variant>].json`. `base` is
// "diffusion_pytorch_model" (diffusers) or "model" (transformers). Throws with the files present
// and a hint (e.g. "pass --variant fp16", ".bin files are not supported") when none match.
std::vector<std::string> find_weight_files(const std::string& component_dir,
                                           const std::string& base, const std::string& variant);

models::UNet2DConditionModel load_unet(const std::string& component_dir,
                                       const LoadOptions& options);
models::AutoencoderKL load_vae(const std::string& component_dir, const LoadOptions& options);
models::CLIPTextModel load_text_encoder(const std::string& component_dir,
                                        const LoadOptions& options);

// Throws a clear error when `path` is not a local diffusers folder (for example a Hub id).
void check_model_dir(const std::string& path);

class SingleFile;  // pipeline/single_file.h

// A model to read: where its UNet is and the pipeline folder of everything else, or one
// original-layout checkpoint file.
struct ModelFolder {
    std::string unet_dir;  // <model>/unet, or a checkpoint's unet_ema/ (preferred) or unet/
    std::string base;      // the pipeline folder: vae/, text_encoder/, tokenizer/, scheduler/
    ModelIndex index;      // base's model_index.json (read_pipeline_index)
    bool checkpoint = false;
    bool ema        = false;  // unet_dir is a checkpoint's unet_ema/
    // Set when the model is one .safetensors file (then `base` is that file, `unet_dir` empty).
    std::shared_ptr<const SingleFile> single_file;

    // `model`: a pipeline folder (also a t2i training output), a checkpoint-N folder whose
    // other components come from `base_model` (without it: std::invalid_argument naming
    // --base_model), or a single .safetensors file in original layout whose configs, tokenizer
    // and scheduler come from `config_dir` (a diffusers folder; optional, see single_file.h).
    // Checks the index of the pipeline folder.
    static ModelFolder open(const std::string& model, const std::string& base_model = "",
                            const std::string& config_dir = "");
    // A component's folder; a single file has none (use the loaders below).
    std::string component(const std::string& name) const { return base + "/" + name; }
    models::UNet2DConditionModel load_unet(const LoadOptions& options) const;
    models::AutoencoderKL load_vae(const LoadOptions& options) const;
    models::CLIPTextModel load_text_encoder(const LoadOptions& options) const;
    tokenizer::CLIPTokenizer tokenizer() const;
    // The scheduler config (scheduler/scheduler_config.json, or a single file's), read once by
    // the caller and handed on.
    io::JsonConfig scheduler_config() const;
};

// Writes one component folder `dir`: config.json, then the module's weights as `weights_file`
// (or `weights` instead of the module's own). Files are written atomically; `dir` is created.
void save_component_folder(const std::string& dir, const nlohmann::json& config,
                           const torch::nn::Module& module, const std::string& weights_file,
                           const io::TensorMap* weights = nullptr);

// A UNet folder: config.json (`config` plus `extra_config` keys) and
// diffusion_pytorch_model.safetensors in the parameters' dtype (or `weights_override`).
void save_unet_folder(const std::string& dir, const torch::nn::Module& unet,
                      const nlohmann::json& config, const io::TensorMap* weights_override = nullptr,
                      const nlohmann::json& extra_config = nlohmann::json::object());

// A whole pipeline folder in `out`: `unet` and `scheduler_config` as given, every other
// component of `base` copied unchanged (from a single file: the VAE and text encoder written from
// it, the tokenizer copied from its --config folder) (the `variant` weights under the plain names),
// each under a temporary name renamed into place, model_index.json (base's) last: its presence
// means the folder is complete. Only entries `out` lets t2i write are replaced.
// `vae`: a trained VAE written instead of base's (t2i train-vae); `unet` empty
// (UNet2DConditionModel{nullptr}): base's UNet folder copied unchanged, in its stored dtype.
void save_pipeline_folder(io::OutputFolder& out, const ModelFolder& base,
                          const models::UNet2DConditionModel& unet,
                          const nlohmann::json& scheduler_config, const std::string& variant,
                          const models::AutoencoderKL* vae = nullptr);

// Copies one component folder (config + weights, tokenizer or scheduler files) from a base
// model to `dest`, written under a temporary name and renamed into place. With a variant, only
// that variant's weight files are copied and they are renamed to the plain names, so the result
// loads without --variant.
void copy_component(const std::string& src_dir, const std::string& dest_dir,
                    const std::string& variant = "");

// Replaces folder `dest` by the finished folder `tmp` with renames only: a crash at any point
// leaves either the old or the new folder complete.
void move_dir_into_place(const std::string& tmp, const std::string& dest);

}  // namespace t2i::pipeline
