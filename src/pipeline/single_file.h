// Implements: Stable Diffusion 1.x / 2.x as one .safetensors file in the original (LDM) layout,
// read and written. Reading maps every key to its diffusers name (pipeline/ldm_keys.h) and loads
// the components straight from the memory-mapped file; the configs come from a diffusers folder
// given with --config (diffusers' from_single_file `config=`), or are inferred from the weights
// with SD 1.x / SD 2.x defaults for what weights cannot say. Writing produces what diffusers'
// scripts/convert_diffusers_to_original_stable_diffusion.py --use_safetensors writes.
// Mirrors: diffusers loaders/single_file_utils.py (infer_diffusers_model_type,
// create_unet_diffusers_config_from_ldm, convert_ldm_*_checkpoint) and the script above.
//
// Config inference reads architecture from tensor shapes, which DESIGN.md section 6 forbids for
// diffusers folders. A single file has no config.json: this is the one place that does it, and the
// models are still built from a config (the inferred one), whose shapes are then checked strictly.
#pragma once

#include <memory>
#include <string>

#include "io/safetensors.h"
#include "pipeline/ldm_keys.h"
#include "pipeline/model_dir.h"

namespace t2i::pipeline {

// True for a path t2i reads as one checkpoint file: an existing regular file. A pickled
// checkpoint (.ckpt, .pt, .pth, .bin) throws std::invalid_argument with the reason and how to
// convert it; any other name but .safetensors also throws.
bool is_single_file(const std::string& path);

// The configs of a single file's components, as the config.json files of a diffusers folder.
struct SingleFileConfigs {
    bool open_clip = false;  // SD 2.x: the text encoder is OpenCLIP (cond_stage_model.model.*)
    nlohmann::json unet, vae, text_encoder, scheduler, model_index;
};

// What from_single_file infers offline: every shape-determined value from the weights (UNet
// blocks, channels, layers, cross-attention size, linear projections; VAE channels, layers,
// latent channels; text encoder sizes and layers), SD 1.x (CLIP) or SD 2.x (OpenCLIP) defaults
// for the rest (head dims, sample sizes, the scheduler of stable-diffusion-v1-5 /
// stable-diffusion-2-1). Throws naming the file and the missing key for a file that is not an SD
// 1.x / 2.x checkpoint in original layout.
SingleFileConfigs infer_single_file_configs(const io::SafetensorsFile& file);

// Throws unless every value the weights determine in `inferred` equals `given` (a component's
// config.json from --config), naming the component, the key, both values and the file.
void check_config_fits_weights(const std::string& component, const nlohmann::json& inferred,
                               const io::JsonConfig& given, const std::string& weights_file);

class SingleFile {
  public:
    // `config_dir`: "" or a diffusers folder (model_index.json, unet/, vae/, text_encoder/,
    // tokenizer/, scheduler/) whose configs are used where present; each is checked against the
    // weights. Every key of the file is mapped or skipped (ldm_keys.h); leftover keys throw naming
    // the first few.
    static std::shared_ptr<const SingleFile> open(const std::string& path,
                                                  const std::string& config_dir = "");

    const std::string& path() const { return path_; }
    const std::string& config_dir() const { return config_dir_; }
    const SingleFileConfigs& configs() const { return configs_; }

    // Each built from its config, weights copied from the file (strict: every parameter filled,
    // every mapped tensor used, shapes equal).
    models::UNet2DConditionModel load_unet(const LoadOptions& options) const;
    models::AutoencoderKL load_vae(const LoadOptions& options) const;
    models::CLIPTextModel load_text_encoder(const LoadOptions& options) const;
    // --config's tokenizer/; throws saying so when there is no --config.
    tokenizer::CLIPTokenizer tokenizer() const;
    std::string tokenizer_dir() const;  // "" without --config

  private:
    using Sources = std::map<std::string, LdmKey>;  // diffusers key -> where it is in the file
    void load_into(torch::nn::Module& module, const Sources& sources, const std::string& component,
                   const LoadOptions& options) const;

    std::string path_, config_dir_;
    std::unique_ptr<io::SafetensorsFile> file_;
    SingleFileConfigs configs_;
    Sources unet_, vae_, text_encoder_;
};

// The three components' weights in the original layout, every tensor contiguous, floats in fp16
// when `half` (else as the modules hold them). Throws for a tensor the layout has no place for.
io::TensorMap to_ldm_state_dict(const models::UNet2DConditionModel& unet,
                                const models::AutoencoderKL& vae,
                                const models::CLIPTextModel& text_encoder, bool half);

// `model` (a diffusers folder, or another single file) as one original-layout file at `path`,
// fp32 or (half) fp16, written under a temporary name and renamed into place. The text encoder
// takes the OpenCLIP layout when its hidden_act is "gelu" (SD 2.x), else the CLIP one.
// `replace` false: `path` must not exist when the write ends (io::write_file_atomic).
void save_single_file(const ModelFolder& model, const std::string& path, bool half,
                      bool replace = true);

}  // namespace t2i::pipeline
