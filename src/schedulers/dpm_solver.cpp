// Implements: schedulers/dpm_solver.h, following diffusers v0.27.2
// scheduling_dpmsolver_multistep.py. Scalars are 0-d float32 tensors like the Python code's; at
// the last step sigma = 0 gives lambda = +inf and exp(-h) = 0, which the formulas handle.
#include "schedulers/dpm_solver.h"

#include <cmath>
#include <stdexcept>

namespace t2i::schedulers {

namespace {

// alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma alpha_t (VP coefficients from the VE sigma).
std::pair<torch::Tensor, torch::Tensor> alpha_sigma(const torch::Tensor& sigma) {
    auto alpha_t = 1 / (sigma.pow(2) + 1).pow(0.5);
    return {alpha_t, sigma * alpha_t};
}

}  // namespace

DPMSolverConfig DPMSolverConfig::from_json(const io::JsonConfig& j) {
    DPMSolverConfig c;
    c.read_beta_keys(j);
    c.solver_order               = j.get<int64_t>("solver_order", c.solver_order);
    c.prediction_type            = j.get<std::string>("prediction_type", c.prediction_type);
    c.thresholding               = j.get<bool>("thresholding", c.thresholding);
    c.dynamic_thresholding_ratio = j.get<double>("dynamic_thresholding_ratio", 0.995);
    c.sample_max_value           = j.get<double>("sample_max_value", c.sample_max_value);
    c.algorithm_type             = j.get<std::string>("algorithm_type", c.algorithm_type);
    c.solver_type                = j.get<std::string>("solver_type", c.solver_type);
    c.lower_order_final          = j.get<bool>("lower_order_final", c.lower_order_final);
    c.euler_at_final             = j.get<bool>("euler_at_final", c.euler_at_final);
    c.use_karras_sigmas          = j.get<bool>("use_karras_sigmas", c.use_karras_sigmas);
    c.use_lu_lambdas             = j.get<bool>("use_lu_lambdas", c.use_lu_lambdas);
    c.final_sigmas_type          = j.get<std::string>("final_sigmas_type", c.final_sigmas_type);
    c.lambda_min_clipped         = j.get<double>("lambda_min_clipped", c.lambda_min_clipped);
    // diffusers' default is -inf (no clipping); a finite value is compared in float32.
    if (std::isfinite(c.lambda_min_clipped))
        j.check_range("lambda_min_clipped", c.lambda_min_clipped, -1e38, 1e38);
    c.variance_type          = j.get<std::string>("variance_type", c.variance_type);
    c.timestep_spacing       = j.get<std::string>("timestep_spacing", c.timestep_spacing);
    c.steps_offset           = read_steps_offset(j, c.steps_offset, c.num_train_timesteps);
    c.rescale_betas_zero_snr = j.get<bool>("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
    return c;
}

DPMSolverMultistepScheduler::DPMSolverMultistepScheduler(DPMSolverConfig config)
    : config_(std::move(config)),
      schedule_(make_noise_schedule(config_.beta_schedule, config_.beta_start, config_.beta_end,
                                    config_.num_train_timesteps, config_.trained_betas,
                                    config_.rescale_betas_zero_snr)) {
    const auto& c = config_;
    // diffusers maps the deprecated "deis" and "logrho"/"bh1"/"bh2" names; we do the same.
    if (c.algorithm_type == "deis") config_.algorithm_type = "dpmsolver++";
    if (c.solver_type == "logrho" || c.solver_type == "bh1" || c.solver_type == "bh2")
        config_.solver_type = "midpoint";
    if (c.algorithm_type != "dpmsolver++" && c.algorithm_type != "dpmsolver")
        throw std::runtime_error("DPMSolverMultistepScheduler: algorithm_type '" +
                                 c.algorithm_type +
                                 "' is not supported (accepted: dpmsolver++, dpmsolver)");
    if (c.solver_type != "midpoint" && c.solver_type != "heun")
        throw std::runtime_error("DPMSolverMultistepScheduler: unknown solver_type '" +
                                 c.solver_type + "' (accepted: midpoint, heun)");
    if (c.solver_order != 1 && c.solver_order != 2)
        throw std::runtime_error("DPMSolverMultistepScheduler: solver_order " +
                                 std::to_string(c.solver_order) + " is not supported (1 or 2)");
    if (c.use_lu_lambdas)
        throw std::runtime_error("DPMSolverMultistepScheduler: use_lu_lambdas is not supported");
    if (c.algorithm_type == "dpmsolver" && c.final_sigmas_type == "zero")
        throw std::runtime_error(
            "DPMSolverMultistepScheduler: final_sigmas_type 'zero' needs algorithm_type "
            "dpmsolver++; choose final_sigmas_type 'sigma_min'");
    const auto& p = c.prediction_type;
    if (p != "epsilon" && p != "sample" && p != "v_prediction")
        throw std::runtime_error("DPMSolverMultistepScheduler: unknown prediction_type '" + p +
                                 "'");
    auto& ac = schedule_.alphas_cumprod;
    if (c.rescale_betas_zero_snr) ac[-1].fill_(std::pow(2.0, -24));
    lambda_t_  = ac.sqrt().log() - (1 - ac).sqrt().log();                          // [T]
    sigmas_    = ((1 - ac) / ac).pow(0.5);                                         // [T]
    timesteps_ = torch::arange(c.num_train_timesteps - 1, -1, -1, torch::kInt64);  // [T]
    model_outputs_.assign(static_cast<size_t>(c.solver_order), torch::Tensor());
}

void DPMSolverMultistepScheduler::set_timesteps(int64_t n) {
    const auto& c   = config_;
    const int64_t T = c.num_train_timesteps;
    if (n <= 0 || n > T)
        throw std::runtime_error(
            "DPMSolverMultistepScheduler: num_inference_steps must lie in "
            "[1, " +
            std::to_string(T) + "]");
    // 1. last_timestep: T minus the number of lambdas below lambda_min_clipped (searchsorted).
    const auto clipped_idx =
        (lambda_t_ < static_cast<float>(c.lambda_min_clipped)).sum().item<int64_t>();
    const int64_t last = T - clipped_idx;
    // 2. timesteps by spacing; linspace and leading take n + 1 points and drop the last (t = 0).
    std::vector<double> t;
    if (c.timestep_spacing == "linspace") {
        auto v = np_linspace(0, static_cast<double>(last - 1), n + 1);
        for (int64_t i = n; i >= 1; --i) t.push_back(std::nearbyint(v[i]));
    } else if (c.timestep_spacing == "leading") {
        const int64_t ratio = last / (n + 1);
        for (int64_t i = n; i >= 1; --i)
            t.push_back(static_cast<double>(i * ratio + c.steps_offset));
    } else if (c.timestep_spacing == "trailing") {
        const double ratio = static_cast<double>(T) / static_cast<double>(n);
        const auto len     = static_cast<int64_t>(std::ceil(static_cast<double>(last) / ratio));
        for (int64_t i = 0; i < len; ++i)
            t.push_back(std::nearbyint(static_cast<double>(last) - static_cast<double>(i) * ratio) -
                        1);
    } else {
        throw std::runtime_error("DPMSolverMultistepScheduler: timestep_spacing '" +
                                 c.timestep_spacing + "' (accepted: linspace, leading, trailing)");
    }
    // 3. sigmas at the timesteps, or Karras sigmas over the whole training range.
    const auto train = train_sigmas(schedule_.alphas_cumprod);
    std::vector<double> sigmas;
    if (c.use_karras_sigmas) {
        std::vector<double> log_sigmas;
        for (double s : train) log_sigmas.push_back(std::log(static_cast<float>(s)));
        sigmas = karras_sigmas(train.front(), train.back(), n);
        t.clear();
        for (double s : sigmas) t.push_back(std::nearbyint(sigma_to_t(s, log_sigmas)));
    } else {
        sigmas = np_interp(t, train);
    }
    // 4. the final sigma: 0 (denoise fully) or sigma_min.
    sigmas.push_back(c.final_sigmas_type == "sigma_min" ? train.front() : 0.0);
    if (c.final_sigmas_type != "sigma_min" && c.final_sigmas_type != "zero")
        throw std::runtime_error("DPMSolverMultistepScheduler: final_sigmas_type '" +
                                 c.final_sigmas_type + "' (accepted: zero, sigma_min)");
    sigmas_    = torch::tensor(sigmas, torch::kFloat64).to(torch::kFloat32);  // [S + 1]
    timesteps_ = torch::tensor(t, torch::kFloat64).to(torch::kInt64);         // [S]
    model_outputs_.assign(static_cast<size_t>(c.solver_order), torch::Tensor());
    lower_order_nums_ = 0;
    step_index_       = -1;
}

torch::Tensor DPMSolverMultistepScheduler::convert_model_output(const torch::Tensor& model_output,
                                                                const torch::Tensor& sample) const {
    const auto& p   = config_.prediction_type;
    auto [a_t, s_t] = alpha_sigma(sigmas_[step_index_]);
    const bool learned =
        config_.variance_type == "learned" || config_.variance_type == "learned_range";
    auto mo       = (learned && p == "epsilon") ? model_output.slice(1, 0, 3) : model_output;
    const auto& c = config_;
    if (c.algorithm_type == "dpmsolver++") {  // data prediction x_0 (eq. 4 of 2211.01095)
        torch::Tensor x0;
        if (p == "epsilon")
            x0 = (sample - s_t * mo) / a_t;
        else if (p == "sample")
            x0 = mo;
        else  // v_prediction
            x0 = a_t * sample - s_t * mo;
        if (c.thresholding)
            x0 = threshold_sample(x0, c.dynamic_thresholding_ratio, c.sample_max_value);
        return x0;
    }
    // noise prediction epsilon
    torch::Tensor epsilon;
    if (p == "epsilon")
        epsilon = mo;
    else if (p == "sample")
        epsilon = (sample - a_t * mo) / s_t;
    else
        epsilon = a_t * mo + s_t * sample;
    if (c.thresholding) {  // threshold x_0, then back to epsilon
        auto x0 = threshold_sample((sample - s_t * epsilon) / a_t, c.dynamic_thresholding_ratio,
                                   c.sample_max_value);
        epsilon = (sample - a_t * x0) / s_t;
    }
    return epsilon;
}

// DPM-Solver++(1) = DDIM (eq. 5 of 2211.01095): x_t = sigma_t/sigma_s x_s - alpha_t (e^-h - 1) x0.
torch::Tensor DPMSolverMultistepScheduler::first_order_update(const torch::Tensor& m0,
                                                              const torch::Tensor& sample) const {
    auto [alpha_t, sigma_t] = alpha_sigma(sigmas_[step_index_ + 1]);
    auto [alpha_s, sigma_s] = alpha_sigma(sigmas_[step_index_]);
    auto h                  = (alpha_t.log() - sigma_t.log()) - (alpha_s.log() - sigma_s.log());
    if (config_.algorithm_type == "dpmsolver++")
        return (sigma_t / sigma_s) * sample - (alpha_t * ((-h).exp() - 1.0)) * m0;
    return (alpha_t / alpha_s) * sample - (sigma_t * (h.exp() - 1.0)) * m0;
}

// Multistep second order (Algorithm 2 of 2211.01095): D1 = (m0 - m1) / r0, r0 = h_0 / h.
torch::Tensor DPMSolverMultistepScheduler::second_order_update(const torch::Tensor& sample) const {
    auto [alpha_t, sigma_t]   = alpha_sigma(sigmas_[step_index_ + 1]);
    auto [alpha_s0, sigma_s0] = alpha_sigma(sigmas_[step_index_]);
    auto [alpha_s1, sigma_s1] = alpha_sigma(sigmas_[step_index_ - 1]);
    auto lambda_t             = alpha_t.log() - sigma_t.log();
    auto lambda_s0            = alpha_s0.log() - sigma_s0.log();
    auto lambda_s1            = alpha_s1.log() - sigma_s1.log();
    const auto& m0            = model_outputs_.back();
    const auto& m1            = model_outputs_[model_outputs_.size() - 2];
    auto h = lambda_t - lambda_s0, h_0 = lambda_s0 - lambda_s1;
    auto r0             = h_0 / h;
    auto D0             = m0;
    auto D1             = (1.0 / r0) * (m0 - m1);
    const bool midpoint = config_.solver_type == "midpoint";
    if (config_.algorithm_type == "dpmsolver++") {
        auto c = alpha_t * ((-h).exp() - 1.0);
        if (midpoint) return (sigma_t / sigma_s0) * sample - c * D0 - 0.5 * c * D1;
        return (sigma_t / sigma_s0) * sample - c * D0 +
               (alpha_t * (((-h).exp() - 1.0) / h + 1.0)) * D1;
    }
    auto c = sigma_t * (h.exp() - 1.0);
    if (midpoint) return (alpha_t / alpha_s0) * sample - c * D0 - 0.5 * c * D1;
    return (alpha_t / alpha_s0) * sample - c * D0 - (sigma_t * ((h.exp() - 1.0) / h - 1.0)) * D1;
}

torch::Tensor DPMSolverMultistepScheduler::step(const torch::Tensor& model_output,
                                                const torch::Tensor& timestep,
                                                const torch::Tensor& sample,
                                                at::Generator* generator) {
    const auto& c   = config_;
    const int64_t S = timesteps_.size(0);
    if (step_index_ < 0) step_index_ = index_for_timestep(timesteps_, timestep, S - 1);
    // 1. fall back to lower orders at the end (more stable for few steps, and needed for sigma 0).
    const bool lower_order_final =
        step_index_ == S - 1 &&
        (c.euler_at_final || (c.lower_order_final && S < 15) || c.final_sigmas_type == "zero");
    // 2. model output -> x_0 (or epsilon), pushed onto the history.
    auto converted = convert_model_output(model_output, sample);
    for (size_t i = 0; i + 1 < model_outputs_.size(); ++i)
        model_outputs_[i] = model_outputs_[i + 1];
    model_outputs_.back() = converted;
    auto x                = sample.to(torch::kFloat32);
    // 3. first- or second-order update.
    torch::Tensor prev_sample;
    if (c.solver_order == 1 || lower_order_nums_ < 1 || lower_order_final)
        prev_sample = first_order_update(converted, x);
    else
        prev_sample = second_order_update(x);
    if (lower_order_nums_ < c.solver_order) ++lower_order_nums_;
    ++step_index_;
    return prev_sample.to(converted.scalar_type());
}

}  // namespace t2i::schedulers
