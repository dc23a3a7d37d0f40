// Implements: StableDiffusionPipeline, text-to-image sampling with classifier-free guidance.
// Mirrors: diffusers pipelines/stable_diffusion/pipeline_stable_diffusion.py (v0.27):
// encode_prompt, prepare_latents, the denoising loop, VAE decode. Used by `t2i generate` and by
// validation during training. Letters: N images, B prompts, L tokens (77), D context width, Z
// latent channels, h/w latent size.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"
#include "schedulers/scheduler.h"
#include "tokenizer/clip_tokenizer.h"

namespace t2i::pipeline {

struct GenerateOptions {
    std::vector<std::string> prompts;
    std::vector<std::string> negative_prompts;  // empty, one for all, or one per prompt
    int64_t num_inference_steps   = 50;
    double guidance_scale         = 7.5;  // <= 1 disables guidance
    int64_t height                = 0;    // 0 = unet sample_size x vae scale
    int64_t width                 = 0;
    int64_t num_images_per_prompt = 1;
    std::optional<uint64_t> seed;        // torch.Generator("cpu").manual_seed(seed)
    at::Generator* generator = nullptr;  // used instead of `seed` when set (shared)
    torch::Tensor latents;               // optional initial latents [N, Z, h, w] (unscaled noise)
    bool decode        = true;           // false: return latents only
    bool show_progress = false;
};

struct GenerateResult {
    torch::Tensor latents;       // [N, Z, h, w] final latents, not divided by scaling_factor
    torch::Tensor images;        // [N, H, W, 3] uint8 (when decoded)
    double denoise_seconds = 0;  // the denoising loop (UNet + scheduler)
    double total_seconds   = 0;  // prompt encoding to decoded images
};

class StableDiffusionPipeline {
  public:
    StableDiffusionPipeline(models::UNet2DConditionModel unet, models::AutoencoderKL vae,
                            models::CLIPTextModel text_encoder, tokenizer::CLIPTokenizer tokenizer);

    // prompts -> [B, L, D] last_hidden_state (no attention mask, as diffusers for CLIP).
    torch::Tensor encode_prompt(const std::vector<std::string>& prompts);
    // Runs the whole pipeline with `scheduler` (already configured; set_timesteps is called here).
    GenerateResult operator()(const GenerateOptions& options, schedulers::Scheduler& scheduler);

    int64_t vae_scale_factor() const { return vae_->config.vae_scale_factor(); }
    models::UNet2DConditionModel& unet() { return unet_; }

  private:
    models::UNet2DConditionModel unet_;
    models::AutoencoderKL vae_;
    models::CLIPTextModel text_encoder_;
    tokenizer::CLIPTokenizer tokenizer_;
};

// [N, 3, H, W] decoder output in ~[-1, 1] -> [N, H, W, 3] uint8, as diffusers' postprocess
// ((x / 2 + 0.5).clamp(0, 1) * 255, rounded).
torch::Tensor to_uint8_images(const torch::Tensor& decoded);

}  // namespace t2i::pipeline
