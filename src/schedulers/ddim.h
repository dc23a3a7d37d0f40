// Implements: DDIMScheduler (Song et al. 2020, https://arxiv.org/abs/2010.02502), deterministic
// for eta = 0, with the optional eta > 0 noise drawn from the generator.
// Mirrors diffusers v0.27.2 schedulers/scheduling_ddim.py (set_timesteps, _get_variance, step).
// Shapes: T = num_train_timesteps, S = inference steps, [B, ...] = latents.
#pragma once

#include <torch/torch.h>

#include "schedulers/noise_schedule.h"
#include "schedulers/scheduler.h"

namespace t2i::schedulers {

// DDIMScheduler.__init__ arguments with their v0.27.2 defaults.
struct DDIMConfig : BetaScheduleConfig {
    bool clip_sample                  = true;
    bool set_alpha_to_one             = true;
    int64_t steps_offset              = 0;
    std::string prediction_type       = "epsilon";  // epsilon|sample|v_prediction
    bool thresholding                 = false;      // Imagen dynamic thresholding
    double dynamic_thresholding_ratio = 0.995;
    double clip_sample_range          = 1.0;
    double sample_max_value           = 1.0;
    std::string timestep_spacing      = "leading";  // linspace|leading|trailing
    bool rescale_betas_zero_snr       = false;
    static DDIMConfig from_json(const io::JsonConfig& json);
};

class DDIMScheduler : public Scheduler {
  public:
    // eta: the weight of the noise (0 = DDIM, 1 = DDPM-like); the pipeline's `eta` argument.
    explicit DDIMScheduler(DDIMConfig config = {}, double eta = 0.0);
    std::string name() const override { return "ddim"; }
    const DDIMConfig& config() const { return config_; }
    void set_timesteps(int64_t num_inference_steps) override;
    const torch::Tensor& timesteps() const override { return timesteps_; }  // [S] int64
    torch::Tensor step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                       const torch::Tensor& sample, at::Generator* generator = nullptr) override;
    const torch::Tensor& alphas_cumprod() const { return schedule_.alphas_cumprod; }  // [T]

  private:
    DDIMConfig config_;
    double eta_;
    NoiseSchedule schedule_;
    torch::Tensor final_alpha_cumprod_;  // 0-d f32: 1 or alpha_bar_0
    torch::Tensor timesteps_;            // [S] int64
    int64_t num_inference_steps_ = 0;
};

}  // namespace t2i::schedulers
