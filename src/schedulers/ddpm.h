// Implements: DDPMScheduler (Ho et al. 2020, https://arxiv.org/abs/2006.11239), the training side:
// the noise schedule, forward diffusion `add_noise` (eq. 4), the v-prediction target
// `get_velocity` (Salimans & Ho 2022, https://arxiv.org/abs/2202.00512, sec. 4), the
// signal-to-noise ratio and the Min-SNR loss weights (Hang et al. 2023,
// https://arxiv.org/abs/2303.09556).
// Mirrors diffusers v0.27.2 schedulers/scheduling_ddpm.py and training_utils.py (compute_snr), and
// the loss weighting of examples/text_to_image/train_text_to_image.py.
// Shapes: T = num_train_timesteps, B = batch, [B, ...] = any sample shape with the batch first.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "io/json_config.h"
#include "schedulers/noise_schedule.h"
#include "schedulers/scheduler.h"

namespace t2i::schedulers {

// The keys of scheduler/scheduler_config.json that DDPMScheduler has, with diffusers' defaults.
// Any scheduler's config (PNDM in the SD 1.5 repo, DDIM, ...) can be read; diffusers'
// `DDPMScheduler.from_config` also ignores keys it does not know.
struct SchedulerConfig : BetaScheduleConfig {  // the beta keys, shared with every sampler
    std::string class_name            = "DDPMScheduler";  // `_class_name`
    std::string variance_type         = "fixed_small";
    bool clip_sample                  = true;
    std::string prediction_type       = "epsilon";  // epsilon|sample|v_prediction
    bool thresholding                 = false;
    double dynamic_thresholding_ratio = 0.995;
    double clip_sample_range          = 1.0;
    double sample_max_value           = 1.0;
    std::string timestep_spacing      = "leading";  // linspace|leading|trailing
    int64_t steps_offset              = 0;
    bool rescale_betas_zero_snr       = false;

    // Absent or null keys take the defaults above; a wrong type or an unknown prediction_type
    // throws naming the file and key.
    static SchedulerConfig from_json(const io::JsonConfig& json);
};

// Throws unless prediction_type is epsilon, sample or v_prediction; `where` names the config.
void check_prediction_type(const std::string& prediction_type, const std::string& where);

class DDPMScheduler {
  public:
    // Builds the schedule; an unknown beta_schedule throws naming it.
    explicit DDPMScheduler(SchedulerConfig config = {});

    const SchedulerConfig& config() const { return config_; }
    const torch::Tensor& betas() const { return schedule_.betas; }                    // [T] f32
    const torch::Tensor& alphas() const { return schedule_.alphas; }                  // [T] f32
    const torch::Tensor& alphas_cumprod() const { return schedule_.alphas_cumprod; }  // [T] f32
    // alphas_cumprod on `device`: copied there once (as diffusers moves it to the device), so a
    // training step indexes it without a host-to-device copy. Not thread-safe (the trainer's).
    const torch::Tensor& alphas_cumprod_on(const torch::Device& device) const;

    // x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.
    // original_samples, noise: [B, ...]; timesteps: [B] or a 0-d tensor, integer, in [0, T).
    // Computed in the samples' dtype on their device, as diffusers does.
    torch::Tensor add_noise(const torch::Tensor& original_samples, const torch::Tensor& noise,
                            const torch::Tensor& timesteps) const;

    // v_t = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (same shapes as add_noise).
    torch::Tensor get_velocity(const torch::Tensor& sample, const torch::Tensor& noise,
                               const torch::Tensor& timesteps) const;

  private:
    // sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), flattened and unsqueezed to `like`'s rank.
    std::pair<torch::Tensor, torch::Tensor> coefficients(const torch::Tensor& like,
                                                         const torch::Tensor& timesteps) const;

    SchedulerConfig config_;
    NoiseSchedule schedule_;
    mutable torch::Tensor device_alphas_cumprod_;  // the last device's copy
};

// SNR(t) = alpha_bar_t / (1 - alpha_bar_t), computed as diffusers' training_utils.compute_snr:
// (sqrt(alpha_bar_t) / sqrt(1 - alpha_bar_t))^2 in float32. Returns timesteps.shape, on the
// timesteps' device.
torch::Tensor compute_snr(const DDPMScheduler& scheduler, const torch::Tensor& timesteps);

// Min-SNR-gamma per-sample loss weights, as train_text_to_image.py computes them:
//   epsilon:      min(snr, gamma) / snr
//   v_prediction: min(snr, gamma) / (snr + 1)
//   sample:       min(snr, gamma)          (the script applies no division for "sample")
// Zero terminal SNR (snr == 0 at the last timestep with rescale_betas_zero_snr): the script
// returns 0/0 = NaN for epsilon and the loss turns NaN. We return 1 there, the limit of
// min(snr, gamma) / snr as snr -> 0+, which is also the fix diffusers' community training
// scripts use (`mse_loss_weights[snr == 0] = 1.0`): the sample keeps its plain MSE weight.
// v_prediction needs no fix (0 / 1 = 0, the formula's own value); sample gives 0.
// snr: [B]; returns [B] in snr's dtype. gamma must be > 0; an unknown prediction_type throws.
torch::Tensor min_snr_loss_weights(const torch::Tensor& snr, double gamma,
                                   const std::string& prediction_type);

}  // namespace t2i::schedulers
