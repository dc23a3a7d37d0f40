// Implements: schedulers/ddpm_sampling.h, following diffusers v0.27.2 scheduling_ddpm.py.
#include "schedulers/ddpm_sampling.h"

#include <stdexcept>

namespace t2i::schedulers {

DDPMSamplingScheduler::DDPMSamplingScheduler(SchedulerConfig config)
    : ddpm_(std::move(config)), one_(torch::tensor(1.0f)) {
    const auto& v = ddpm_.config().variance_type;
    if (v != "fixed_small" && v != "fixed_small_log" && v != "fixed_large" &&
        v != "fixed_large_log")
        throw std::runtime_error("DDPMScheduler sampling: variance_type '" + v +
                                 "' is not supported (accepted: fixed_small, fixed_small_log, "
                                 "fixed_large, fixed_large_log)");
    const int64_t T = ddpm_.config().num_train_timesteps;
    timesteps_      = torch::arange(T - 1, -1, -1, torch::kInt64);
}

void DDPMSamplingScheduler::set_timesteps(int64_t n) {
    const auto& c   = ddpm_.config();
    const int64_t T = c.num_train_timesteps;
    if (n <= 0 || n > T)
        throw std::runtime_error("DDPMScheduler: num_inference_steps " + std::to_string(n) +
                                 " must lie in [1, num_train_timesteps = " + std::to_string(T) +
                                 "]");
    num_inference_steps_ = n;
    std::vector<int64_t> t;
    if (c.timestep_spacing == "linspace") {
        for (double v : np_linspace(0, static_cast<double>(T - 1), n))
            t.insert(t.begin(), static_cast<int64_t>(std::nearbyint(v)));
    } else {
        for (double v : spaced_timesteps(c.timestep_spacing, T, n, c.steps_offset))
            t.push_back(static_cast<int64_t>(v));
    }
    timesteps_ = torch::tensor(t, torch::kInt64);
}

torch::Tensor DDPMSamplingScheduler::step(const torch::Tensor& model_output,
                                          const torch::Tensor& timestep,
                                          const torch::Tensor& sample, at::Generator* generator) {
    const auto& c   = ddpm_.config();
    const auto& ac  = ddpm_.alphas_cumprod();
    const int64_t n = num_inference_steps_ > 0 ? num_inference_steps_ : c.num_train_timesteps;
    // 1. alphas and betas of t and of the previous timestep t - T // S.
    const int64_t t        = timestep.item<int64_t>();
    const int64_t prev_t   = t - c.num_train_timesteps / n;
    auto alpha_prod_t      = ac[t];
    auto alpha_prod_t_prev = prev_t >= 0 ? ac[prev_t] : one_;
    auto beta_prod_t       = 1 - alpha_prod_t;
    auto beta_prod_t_prev  = 1 - alpha_prod_t_prev;
    auto current_alpha_t   = alpha_prod_t / alpha_prod_t_prev;
    auto current_beta_t    = 1 - current_alpha_t;

    // 2. predicted x_0 (eq. 15).
    torch::Tensor pred_original_sample;
    if (c.prediction_type == "epsilon")
        pred_original_sample =
            (sample - beta_prod_t.pow(0.5) * model_output) / alpha_prod_t.pow(0.5);
    else if (c.prediction_type == "sample")
        pred_original_sample = model_output;
    else  // v_prediction
        pred_original_sample = alpha_prod_t.pow(0.5) * sample - beta_prod_t.pow(0.5) * model_output;

    // 3. threshold or clip x_0.
    if (c.thresholding)
        pred_original_sample = threshold_sample(pred_original_sample, c.dynamic_thresholding_ratio,
                                                c.sample_max_value);
    else if (c.clip_sample)
        pred_original_sample =
            pred_original_sample.clamp(-c.clip_sample_range, c.clip_sample_range);

    // 4. posterior mean mu_t(x_t, x_0) (eq. 7).
    auto pred_original_sample_coeff = (alpha_prod_t_prev.pow(0.5) * current_beta_t) / beta_prod_t;
    auto current_sample_coeff       = current_alpha_t.pow(0.5) * beta_prod_t_prev / beta_prod_t;
    auto pred_prev_sample =
        pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample;

    // 5. add sigma_t z, with beta~_t = (1 - a_prev) / (1 - a_t) beta_t (eq. 7) for fixed_small.
    if (t > 0) {
        auto noise = randn_tensor(model_output.sizes(), generator, model_output.device(),
                                  model_output.scalar_type());
        auto variance =
            ((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t).clamp_min(1e-20);
        const auto& v = c.variance_type;
        if (v == "fixed_small_log")  // exp(0.5 log var) = the std itself, not squared again
            return pred_prev_sample + variance.log().mul(0.5).exp() * noise;
        if (v == "fixed_large") variance = current_beta_t;
        if (v == "fixed_large_log") variance = current_beta_t.log();
        pred_prev_sample = pred_prev_sample + variance.pow(0.5) * noise;
    }
    return pred_prev_sample;
}

}  // namespace t2i::schedulers
