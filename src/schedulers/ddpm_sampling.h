// Implements: the sampling side of DDPMScheduler (Ho et al. 2020, https://arxiv.org/abs/2006.11239,
// eq. 6-7 posterior q(x_{t-1} | x_t, x_0) plus noise from the generator), on top of the training
// side in ddpm.h.
// Mirrors diffusers v0.27.2 schedulers/scheduling_ddpm.py (set_timesteps, previous_timestep,
// _get_variance, step) for variance_type fixed_small / fixed_small_log / fixed_large /
// fixed_large_log.
// Shapes: T = num_train_timesteps, S = inference steps, [B, ...] = latents.
#pragma once

#include <torch/torch.h>

#include "schedulers/ddpm.h"
#include "schedulers/scheduler.h"

namespace t2i::schedulers {

class DDPMSamplingScheduler : public Scheduler {
  public:
    explicit DDPMSamplingScheduler(SchedulerConfig config = {});
    std::string name() const override { return "ddpm"; }
    const SchedulerConfig& config() const { return ddpm_.config(); }
    const DDPMScheduler& ddpm() const { return ddpm_; }
    void set_timesteps(int64_t num_inference_steps) override;
    const torch::Tensor& timesteps() const override { return timesteps_; }  // [S] int64
    // Draws N(0, 1) noise from `generator` for every t > 0.
    torch::Tensor step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                       const torch::Tensor& sample, at::Generator* generator = nullptr) override;

  private:
    DDPMScheduler ddpm_;
    torch::Tensor one_;        // 0-d f32 1.0 (alpha_bar before t = 0)
    torch::Tensor timesteps_;  // [S] int64
    int64_t num_inference_steps_ = 0;
};

}  // namespace t2i::schedulers
