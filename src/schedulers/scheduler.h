// Implements: the sampler interface every inference scheduler implements (the subset of diffusers'
// SchedulerMixin that StableDiffusionPipeline.__call__ uses), `make_scheduler` (diffusers'
// `<Class>.from_config(config)`), and the sigma helpers shared by Euler and DPM-Solver.
// Mirrors diffusers v0.27.2 schedulers/scheduling_utils.py, configuration_utils.py (from_config:
// keys absent from the file take the TARGET class's defaults, keys of other classes are ignored)
// and utils/torch_utils.py (randn_tensor).
// Shapes: S = inference steps, [B, C, h, w] = latents.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/json_config.h"

namespace t2i::schedulers {

// The sampling loop, as the pipeline runs it:
//   s.set_timesteps(S); latents *= s.init_noise_sigma();
//   for t in s.timesteps(): eps = unet(s.scale_model_input(latents, t), t);
//                           latents = s.step(eps, t, latents, gen);
// `t` is an element of timesteps() (a 0-d CPU tensor); schedulers that track a step index
// (Euler, DPM-Solver) find it from `t` on the first call, as diffusers' _init_step_index does.
class Scheduler {
  public:
    virtual ~Scheduler() = default;
    // The CLI name: ddim, pndm, euler, euler_ancestral, dpm++2m, dpm++2m_karras, ddpm.
    virtual std::string name() const = 0;
    // Resets the per-run state (step index, multistep history).
    virtual void set_timesteps(int64_t num_inference_steps) = 0;
    // [S] on the CPU: int64 (DDIM, PNDM, DPM, DDPM) or float32 (Euler, Euler ancestral).
    virtual const torch::Tensor& timesteps() const = 0;
    // The pipeline multiplies the initial N(0, 1) latents by this (diffusers returns a float32
    // tensor for Euler; the value here is that float32 number).
    virtual double init_noise_sigma() const { return 1.0; }
    virtual torch::Tensor scale_model_input(const torch::Tensor& sample,
                                            const torch::Tensor& timestep) {
        return sample;
    }
    // One denoising step: returns prev_sample (same shape and dtype as model_output).
    // `generator` (may be null = torch's default one) is used only by stochastic samplers, and
    // by Euler, which draws (and discards) noise every step as diffusers does.
    virtual torch::Tensor step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                               const torch::Tensor& sample, at::Generator* generator = nullptr) = 0;
};

// The names `--scheduler` accepts.
extern const std::vector<std::string> kSchedulerNames;

// `name` empty: the class named by `_class_name` in the config. Otherwise one of kSchedulerNames
// (dpm++2m / dpm++2m_karras also set algorithm_type dpmsolver++, solver_order 2 and
// use_karras_sigmas false / true, as `from_config(config, use_karras_sigmas=...)` would).
// An unknown name or class throws listing the accepted ones.
std::unique_ptr<Scheduler> make_scheduler(const std::string& name,
                                          const io::JsonConfig& scheduler_config);

// The keys every scheduler shares, with the defaults all six diffusers classes give them.
struct BetaScheduleConfig {
    int64_t num_train_timesteps       = 1000;
    double beta_start                 = 0.0001;
    double beta_end                   = 0.02;
    std::string beta_schedule         = "linear";
    std::vector<double> trained_betas = {};  // empty == null
    void read_beta_keys(const io::JsonConfig& json);
};

// The beta keys' constraints, checked by every scheduler's from_json: 1 <= num_train_timesteps
// <= 100,000 and every beta (start, end, trained) in [0, 1), where alphas = 1 - betas stay
// positive; a trained_betas list of another length than num_train_timesteps.
void check_beta_keys(const io::JsonConfig& json, int64_t num_train_timesteps, double beta_start,
                     double beta_end, const std::vector<double>& trained_betas);
// `steps_offset` (default `fallback`), which must lie in [0, num_train_timesteps): the shifted
// timesteps index the schedule.
int64_t read_steps_offset(const io::JsonConfig& json, int64_t fallback,
                          int64_t num_train_timesteps);

// ---- helpers shared by the samplers ----

// diffusers' randn_tensor: torch.randn on the generator's device (CPU for a CPU generator, so
// the numbers equal Python's), then moved to `device`.
torch::Tensor randn_tensor(at::IntArrayRef shape, at::Generator* generator,
                           const torch::Device& device, torch::ScalarType dtype);

// np.linspace(start, stop, n) in double.
std::vector<double> np_linspace(double start, double stop, int64_t n);

// Timesteps of `leading` / `trailing` / `linspace` spacing in double, before the class's cast,
// as the Euler-type schedulers compute them. Throws for another spacing.
std::vector<double> spaced_timesteps(const std::string& spacing, int64_t num_train_timesteps,
                                     int64_t num_inference_steps, int64_t steps_offset);

// sqrt((1 - alpha_bar) / alpha_bar) in float32, as a double vector [T].
std::vector<double> train_sigmas(const torch::Tensor& alphas_cumprod);

// np.interp(x, arange(len(fp)), fp).
std::vector<double> np_interp(const std::vector<double>& x, const std::vector<double>& fp);

// Karras et al. 2022 (https://arxiv.org/abs/2206.00364) eq. 5 with rho = 7.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n);

// diffusers' _sigma_to_t: piecewise-linear inverse of log sigma(t); `log_sigmas` ascending [T]
// (float32 values, as np.log of a float32 array).
double sigma_to_t(double sigma, const std::vector<double>& log_sigmas);

// Imagen's dynamic thresholding (Saharia et al. 2022, https://arxiv.org/abs/2205.11487): per
// sample, s = clamp(quantile(|x0|, ratio), 1, max_value); x0 = clamp(x0, -s, s) / s.
torch::Tensor threshold_sample(const torch::Tensor& sample, double ratio, double max_value);

// Index of `timestep` in `schedule` as diffusers' index_for_timestep: the second match when there
// are several (so img2img does not skip a sigma), `fallback` (or an error if < 0) when none.
int64_t index_for_timestep(const torch::Tensor& schedule, const torch::Tensor& timestep,
                           int64_t fallback = -1);

}  // namespace t2i::schedulers
