// Implements: PNDMScheduler (Liu et al. 2022, https://arxiv.org/abs/2202.09778): pseudo
// linear multistep (PLMS, eq. 12) steps, preceded by pseudo Runge-Kutta (PRK) warm-up steps unless
// skip_prk_steps (as SD 1.5's scheduler_config.json sets it).
// Mirrors diffusers v0.27.2 schedulers/scheduling_pndm.py (set_timesteps, step_prk, step_plms,
// _get_prev_sample).
// Shapes: T = num_train_timesteps, S = model evaluations, [B, ...] = latents.
#pragma once

#include <torch/torch.h>

#include "schedulers/noise_schedule.h"
#include "schedulers/scheduler.h"

namespace t2i::schedulers {

// PNDMScheduler.__init__ arguments with their v0.27.2 defaults.
struct PNDMConfig : BetaScheduleConfig {
    bool skip_prk_steps          = false;
    bool set_alpha_to_one        = false;
    std::string prediction_type  = "epsilon";  // epsilon|v_prediction
    std::string timestep_spacing = "leading";  // linspace|leading|trailing
    int64_t steps_offset         = 0;
    static PNDMConfig from_json(const io::JsonConfig& json);
};

class PNDMScheduler : public Scheduler {
  public:
    explicit PNDMScheduler(PNDMConfig config = {});
    std::string name() const override { return "pndm"; }
    const PNDMConfig& config() const { return config_; }
    // With PRK steps the schedule has more entries than num_inference_steps (each RK step
    // evaluates the model 4 times): 3 x 4 PRK entries then num_inference_steps - 3 PLMS ones.
    void set_timesteps(int64_t num_inference_steps) override;
    const torch::Tensor& timesteps() const override { return timesteps_; }  // [S] int64
    torch::Tensor step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                       const torch::Tensor& sample, at::Generator* generator = nullptr) override;

  private:
    torch::Tensor step_prk(const torch::Tensor& model_output, int64_t timestep,
                           const torch::Tensor& sample);
    torch::Tensor step_plms(torch::Tensor model_output, int64_t timestep, torch::Tensor sample);
    torch::Tensor prev_sample(const torch::Tensor& sample, int64_t timestep, int64_t prev_timestep,
                              torch::Tensor model_output) const;

    PNDMConfig config_;
    NoiseSchedule schedule_;
    torch::Tensor final_alpha_cumprod_;  // 0-d f32
    torch::Tensor timesteps_;            // [S] int64
    std::vector<int64_t> prk_timesteps_;
    int64_t num_inference_steps_ = 0;
    // multistep state
    std::vector<torch::Tensor> ets_;  // past model outputs (eps)
    torch::Tensor cur_model_output_;  // PRK accumulator (undefined = 0)
    torch::Tensor cur_sample_;
    int64_t counter_ = 0;
};

}  // namespace t2i::schedulers
