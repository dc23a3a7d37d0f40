// Implements: EulerDiscreteScheduler (Karras et al. 2022, https://arxiv.org/abs/2206.00364,
// Algorithm 2 with s_churn = 0) and EulerAncestralDiscreteScheduler (k-diffusion's
// sample_euler_ancestral), on sigma = sqrt((1 - alpha_bar) / alpha_bar).
// Mirrors diffusers v0.27.2 schedulers/scheduling_euler_discrete.py and
// scheduling_euler_ancestral_discrete.py (set_timesteps, scale_model_input, step).
// Shapes: T = num_train_timesteps, S = inference steps, [B, ...] = latents.
#pragma once

#include <torch/torch.h>

#include <optional>

#include "schedulers/noise_schedule.h"
#include "schedulers/scheduler.h"

namespace t2i::schedulers {

// EulerDiscreteScheduler.__init__ arguments with their v0.27.2 defaults.
struct EulerConfig : BetaScheduleConfig {
    std::string prediction_type    = "epsilon";  // epsilon|sample|v_prediction
    std::string interpolation_type = "linear";   // linear|log_linear
    bool use_karras_sigmas         = false;
    std::optional<double> sigma_min;  // karras range; null = the schedule's
    std::optional<double> sigma_max;
    std::string timestep_spacing = "linspace";  // linspace|leading|trailing
    std::string timestep_type    = "discrete";  // discrete|continuous
    int64_t steps_offset         = 0;
    bool rescale_betas_zero_snr  = false;
    static EulerConfig from_json(const io::JsonConfig& json);
};

// EulerAncestralDiscreteScheduler.__init__ arguments with their v0.27.2 defaults.
struct EulerAncestralConfig : BetaScheduleConfig {
    std::string prediction_type  = "epsilon";   // epsilon|v_prediction
    std::string timestep_spacing = "linspace";  // linspace|leading|trailing
    int64_t steps_offset         = 0;
    bool rescale_betas_zero_snr  = false;
    static EulerAncestralConfig from_json(const io::JsonConfig& json);
};

// The state both Euler samplers share: sigmas, timesteps, the step index.
class EulerBase : public Scheduler {
  public:
    const torch::Tensor& timesteps() const override { return timesteps_; }  // [S] f32
    const torch::Tensor& sigmas() const { return sigmas_; }                 // [S + 1] f32
    double init_noise_sigma() const override;
    // x / sqrt(sigma^2 + 1): the UNet sees unit-variance inputs.
    torch::Tensor scale_model_input(const torch::Tensor& sample,
                                    const torch::Tensor& timestep) override;

  protected:
    EulerBase(const BetaScheduleConfig& betas, bool rescale_betas_zero_snr,
              std::string timestep_spacing);
    void init_step_index(const torch::Tensor& timestep);
    NoiseSchedule schedule_;
    std::string timestep_spacing_;
    torch::Tensor timesteps_, sigmas_;
    int64_t step_index_ = -1;
};

class EulerDiscreteScheduler : public EulerBase {
  public:
    explicit EulerDiscreteScheduler(EulerConfig config = {});
    std::string name() const override { return "euler"; }
    const EulerConfig& config() const { return config_; }
    void set_timesteps(int64_t num_inference_steps) override;
    torch::Tensor step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                       const torch::Tensor& sample, at::Generator* generator = nullptr) override;

  private:
    EulerConfig config_;
};

class EulerAncestralDiscreteScheduler : public EulerBase {
  public:
    explicit EulerAncestralDiscreteScheduler(EulerAncestralConfig config = {});
    std::string name() const override { return "euler_ancestral"; }
    const EulerAncestralConfig& config() const { return config_; }
    void set_timesteps(int64_t num_inference_steps) override;
    torch::Tensor step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                       const torch::Tensor& sample, at::Generator* generator = nullptr) override;

  private:
    EulerAncestralConfig config_;
};

}  // namespace t2i::schedulers
