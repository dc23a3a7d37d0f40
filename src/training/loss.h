// Implements: one training micro-step's forward pass and loss, as train_text_to_image.py computes
// it: VAE encode + sample x scaling_factor, noise (+ `--noise_offset`, Guttenberg 2023,
// https://www.crosslabs.org/blog/diffusion-with-offset-noise), `--input_perturbation` (Ning et al.
// 2023, https://arxiv.org/abs/2301.11706), uniform timesteps, add_noise, text encoder, target by
// prediction_type (epsilon or v, Salimans & Ho 2022), `--dream_training` (Zhou et al. 2023,
// https://arxiv.org/abs/2312.00210; diffusers training_utils.compute_dream_and_update_latents),
// UNet, MSE or Min-SNR-gamma weighted MSE (Hang et al. 2023, https://arxiv.org/abs/2303.09556).
// Mirrors diffusers examples/text_to_image/train_text_to_image.py, the body of
// `with accelerator.accumulate(unet):` up to `loss` (REFERENCE.md section 2, "Forward/loss").
// Shapes: B batch, Z latent channels, h, w latent size (H/8, W/8 for SD), S = 77 tokens.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"
#include "schedulers/ddpm.h"
#include "training/step_profile.h"

namespace t2i::training {

// The loss-related flags of train_text_to_image.py, with its defaults.
struct LossConfig {
    std::string prediction_type;  // "" = the scheduler config's; else epsilon | v_prediction
    double noise_offset              = 0.0;
    double input_perturbation        = 0.0;
    double snr_gamma                 = 0.0;  // <= 0: plain MSE (the script's None)
    bool dream_training              = false;
    double dream_detail_preservation = 1.0;
};

// Every random draw of one micro-step, explicit so tests can feed the golden ones.
struct StepDraws {
    torch::Tensor vae_eps;        // [B, Z, h, w] N(0, 1): latent_dist.sample()
    torch::Tensor noise;          // [B, Z, h, w] N(0, 1): randn_like(latents)
    torch::Tensor offset_noise;   // [B, Z, 1, 1] N(0, 1); undefined unless noise_offset != 0
    torch::Tensor perturb_noise;  // [B, Z, h, w] N(0, 1); undefined unless input_perturbation != 0
    torch::Tensor timesteps;      // [B] int64, uniform in [0, num_train_timesteps)
};

struct StepOutputs {
    torch::Tensor loss;              // 0-d f32, differentiable w.r.t. the UNet parameters
    torch::Tensor model_pred;        // [B, Z, h, w]
    torch::Tensor target;            // [B, Z, h, w] (after DREAM when enabled)
    torch::Tensor noisy_latents;     // [B, Z, h, w] the UNet input (after DREAM when enabled)
    torch::Tensor latents;           // [B, Z, h, w] VAE sample x scaling_factor
    torch::Tensor snr;               // [B] only with snr_gamma
    torch::Tensor mse_loss_weights;  // [B] only with snr_gamma
};

// The prediction type in force: config.prediction_type, else the scheduler's. Throws for
// anything but epsilon / v_prediction (the script raises ValueError for "sample").
std::string effective_prediction_type(const schedulers::DDPMScheduler& scheduler,
                                      const LossConfig& config);

// [B, Z, H / f, W / f] for pixel_values [B, 3, H, W] (f = the VAE's scale factor).
std::vector<int64_t> latent_shape(const models::AutoencoderKLConfig& vae_config,
                                  at::IntArrayRef pixel_shape);

// Draws a micro-step's randoms on the CPU from `generator`, in the script's order:
//   1. vae_eps       randn(latent_shape)
//   2. noise         randn(latent_shape)
//   3. offset_noise  randn(B, Z, 1, 1)      only when noise_offset != 0
//   4. perturb_noise randn(latent_shape)    only when input_perturbation != 0
//   5. timesteps     randint(0, num_train_timesteps, (B,))
// All float32 / int64 on the CPU, so a seed gives the same draws on every device; `pinned`
// (a CUDA run) puts them in page-locked memory for copies that do not stop the host.
StepDraws draw_step_randoms(at::IntArrayRef latent_shape, int64_t num_train_timesteps,
                            at::Generator& generator, const LossConfig& config,
                            bool pinned = false);

// The models a training step computes with: the frozen VAE and text encoder, the trained UNet
// and the noise scheduler (training/train_setup's TrainingModels is one, with more).
struct StepModels {
    models::UNet2DConditionModel unet{nullptr};
    models::AutoencoderKL vae{nullptr};
    models::CLIPTextModel text_encoder{nullptr};
    schedulers::DDPMScheduler noise_scheduler;
};

// What a micro-step computes from: pixels and token ids, or what training/feature_cache holds
// for them: the VAE posterior's mean and std (latents = (mean + std * vae_eps) * scaling_factor,
// as from the pixels) and the text encoder's last_hidden_state.
struct StepInputs {
    torch::Tensor pixel_values;             // [B, 3, H, W]; unused with latent_mean
    torch::Tensor input_ids;                // [B, S]; unused with encoder_hidden_states
    torch::Tensor latent_mean, latent_std;  // [B, Z, h, w], cached
    torch::Tensor encoder_hidden_states;    // [B, S, D], cached
    StepProfile* profile = nullptr;         // --profile: marks vae, text, unet_fwd
};

StepOutputs compute_step(StepModels& m, const StepInputs& inputs, const StepDraws& draws,
                         const LossConfig& config);

// One micro-step's forward and loss. The VAE and text encoder run under NoGradGuard (frozen),
// pixel_values [B, 3, H, W] in [-1, 1] are cast to the VAE's dtype; input_ids [B, S] int64.
// The draws are moved to the latents' device and dtype. The UNet forward records autograd;
// call loss.backward() afterwards. Throws for DREAM with v_prediction.
StepOutputs compute_step(StepModels& m, const torch::Tensor& pixel_values,
                         const torch::Tensor& input_ids, const StepDraws& draws,
                         const LossConfig& config);

// The loss from prediction and target: mean((pred - target)^2) in float32, or with snr_gamma
// mean_b(w_b * mean_chw((pred - target)^2)), w = schedulers::min_snr_loss_weights (SNR = 0 safe).
// Fills out->snr / out->mse_loss_weights when given.
torch::Tensor diffusion_loss(const torch::Tensor& model_pred, const torch::Tensor& target,
                             const torch::Tensor& timesteps,
                             const schedulers::DDPMScheduler& scheduler,
                             const std::string& prediction_type, double snr_gamma,
                             StepOutputs* out = nullptr);

}  // namespace t2i::training
