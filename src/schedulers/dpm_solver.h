// Implements: DPMSolverMultistepScheduler: DPM-Solver++ (Lu et al. 2022,
// https://arxiv.org/abs/2211.01095) multistep, orders 1 and 2 ("DPM++ 2M"), data prediction,
// midpoint or heun second-order update, optional Karras sigmas; the noise-prediction DPM-Solver
// (https://arxiv.org/abs/2206.00927) too.
// Mirrors diffusers v0.27.2 schedulers/scheduling_dpmsolver_multistep.py (set_timesteps,
// convert_model_output, dpm_solver_first_order_update, multistep_dpm_solver_second_order_update,
// step).
// Shapes: T = num_train_timesteps, S = inference steps, [B, ...] = latents.
#pragma once

#include <torch/torch.h>

#include <limits>

#include "schedulers/noise_schedule.h"
#include "schedulers/scheduler.h"

namespace t2i::schedulers {

// DPMSolverMultistepScheduler.__init__ arguments with their v0.27.2 defaults.
struct DPMSolverConfig : BetaScheduleConfig {
    int64_t solver_order              = 2;          // 1 or 2 (3 is not supported)
    std::string prediction_type       = "epsilon";  // epsilon|sample|v_prediction
    bool thresholding                 = false;      // Imagen dynamic thresholding
    double dynamic_thresholding_ratio = 0.995;
    double sample_max_value           = 1.0;
    std::string algorithm_type        = "dpmsolver++";  // dpmsolver++|dpmsolver
    std::string solver_type           = "midpoint";     // midpoint|heun
    bool lower_order_final            = true;
    bool euler_at_final               = false;
    bool use_karras_sigmas            = false;
    bool use_lu_lambdas               = false;   // not supported
    std::string final_sigmas_type     = "zero";  // zero|sigma_min
    double lambda_min_clipped         = -std::numeric_limits<double>::infinity();
    std::string variance_type         = "";  // null; learned|learned_range keep 3 channels
    std::string timestep_spacing      = "linspace";
    int64_t steps_offset              = 0;
    bool rescale_betas_zero_snr       = false;
    static DPMSolverConfig from_json(const io::JsonConfig& json);
};

class DPMSolverMultistepScheduler : public Scheduler {
  public:
    explicit DPMSolverMultistepScheduler(DPMSolverConfig config = {});
    std::string name() const override {
        return config_.use_karras_sigmas ? "dpm++2m_karras" : "dpm++2m";
    }
    const DPMSolverConfig& config() const { return config_; }
    void set_timesteps(int64_t num_inference_steps) override;
    const torch::Tensor& timesteps() const override { return timesteps_; }  // [S] int64
    const torch::Tensor& sigmas() const { return sigmas_; }                 // [S + 1] f32
    torch::Tensor step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                       const torch::Tensor& sample, at::Generator* generator = nullptr) override;

  private:
    torch::Tensor convert_model_output(const torch::Tensor& model_output,
                                       const torch::Tensor& sample) const;
    torch::Tensor first_order_update(const torch::Tensor& m0, const torch::Tensor& sample) const;
    torch::Tensor second_order_update(const torch::Tensor& sample) const;

    DPMSolverConfig config_;
    NoiseSchedule schedule_;
    torch::Tensor lambda_t_;                    // [T] log alpha_t - log sigma_t (f32)
    torch::Tensor timesteps_;                   // [S] int64
    torch::Tensor sigmas_;                      // [S + 1] f32
    std::vector<torch::Tensor> model_outputs_;  // [solver_order], oldest first
    int64_t lower_order_nums_ = 0;
    int64_t step_index_       = -1;
};

}  // namespace t2i::schedulers
