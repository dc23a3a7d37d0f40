// Implements: writing a complete, freshly initialized Stable Diffusion model folder in diffusers
// layout from a named built-in config, for training from scratch and for the README's demo.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace t2i::pipeline {

// "tiny" (64x64 images, ~2 M parameters), "small" (256x256, 56 M: the shapes of the small-sd
// benchmark configs),
// "sd15" (Stable Diffusion 1.5's architecture, 1.07 B).
const std::vector<std::string>& init_model_presets();

// The scheduler_config.json of stable-diffusion-v1-5 (PNDM, epsilon) or, sd2, of
// stable-diffusion-2-1 (DDIM, v_prediction); the training math reads the same keys.
nlohmann::json sd_scheduler_config(bool sd2);
// A StableDiffusionPipeline model_index.json with the given scheduler class.
nlohmann::json sd_model_index(const std::string& scheduler_class);

// Writes DIR/{model_index.json, scheduler/, tokenizer/, text_encoder/, vae/, unet/}.
// `tokenizer_dir` empty: a byte-level CLIP tokenizer (512 byte symbols, no merges) is generated;
// otherwise that tokenizer folder is copied and the text encoder's vocabulary follows it.
void init_model(const std::string& output_dir, const std::string& preset,
                const std::string& tokenizer_dir, uint64_t seed);

}  // namespace t2i::pipeline
