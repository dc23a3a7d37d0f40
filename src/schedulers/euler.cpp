// Implements: schedulers/euler.h, following diffusers v0.27.2 scheduling_euler_discrete.py and
// scheduling_euler_ancestral_discrete.py. numpy's float64 steps (np.interp, Karras sigmas) are
// done in double, torch's float32 ones with 0-d float32 tensors, as in the Python code.
#include "schedulers/euler.h"

#include <cmath>
#include <stdexcept>

namespace t2i::schedulers {

namespace {

template <typename Config>
void read_common(Config& c, const io::JsonConfig& json) {
    c.read_beta_keys(json);
    c.prediction_type        = json.get<std::string>("prediction_type", c.prediction_type);
    c.timestep_spacing       = json.get<std::string>("timestep_spacing", c.timestep_spacing);
    c.steps_offset           = read_steps_offset(json, c.steps_offset, c.num_train_timesteps);
    c.rescale_betas_zero_snr = json.get<bool>("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
}

// The inference timesteps in double, as numpy computes them before the float32 cast.
std::vector<double> euler_timesteps(const std::string& spacing, int64_t T, int64_t n,
                                    int64_t offset) {
    auto t = spaced_timesteps(spacing, T, n, offset);
    for (auto& v : t) v = static_cast<double>(static_cast<float>(v));  // .astype(np.float32)
    return t;
}

torch::Tensor to_f32(const std::vector<double>& v) {
    return torch::tensor(v, torch::kFloat64).to(torch::kFloat32);
}

}  // namespace

EulerConfig EulerConfig::from_json(const io::JsonConfig& json) {
    EulerConfig c;
    read_common(c, json);
    c.interpolation_type = json.get<std::string>("interpolation_type", c.interpolation_type);
    c.use_karras_sigmas  = json.get<bool>("use_karras_sigmas", c.use_karras_sigmas);
    if (json.has("sigma_min")) c.sigma_min = json.get<double>("sigma_min");
    if (json.has("sigma_max")) c.sigma_max = json.get<double>("sigma_max");
    c.timestep_type = json.get<std::string>("timestep_type", c.timestep_type);
    return c;
}

EulerAncestralConfig EulerAncestralConfig::from_json(const io::JsonConfig& json) {
    EulerAncestralConfig c;
    read_common(c, json);
    return c;
}

// ---- EulerBase ----

EulerBase::EulerBase(const BetaScheduleConfig& b, bool rescale, std::string spacing)
    : schedule_(make_noise_schedule(b.beta_schedule, b.beta_start, b.beta_end,
                                    b.num_train_timesteps, b.trained_betas, rescale)),
      timestep_spacing_(std::move(spacing)) {
    // Zero terminal SNR makes sigma_T infinite; diffusers sets alpha_bar_T = 2^-24 instead.
    if (rescale) schedule_.alphas_cumprod[-1].fill_(std::pow(2.0, -24));
    const auto& ac = schedule_.alphas_cumprod;
    sigmas_        = torch::cat({((1 - ac) / ac).pow(0.5).flip(0), torch::zeros({1})});  // [T+1]
    timesteps_     = torch::arange(b.num_train_timesteps - 1, -1, -1, torch::kFloat32);  // [T]
}

double EulerBase::init_noise_sigma() const {
    auto max_sigma = sigmas_.max();
    if (timestep_spacing_ == "linspace" || timestep_spacing_ == "trailing")
        return max_sigma.item<double>();
    return (max_sigma.pow(2) + 1).pow(0.5).item<double>();  // sqrt(sigma_max^2 + 1), float32
}

void EulerBase::init_step_index(const torch::Tensor& timestep) {
    step_index_ = index_for_timestep(timesteps_, timestep);
}

torch::Tensor EulerBase::scale_model_input(const torch::Tensor& sample,
                                           const torch::Tensor& timestep) {
    if (step_index_ < 0) init_step_index(timestep);
    auto sigma = sigmas_[step_index_];
    return sample / (sigma.pow(2) + 1).pow(0.5);
}

// ---- EulerDiscreteScheduler ----

EulerDiscreteScheduler::EulerDiscreteScheduler(EulerConfig config)
    : EulerBase(config, config.rescale_betas_zero_snr, config.timestep_spacing),
      config_(std::move(config)) {
    const auto& p = config_.prediction_type;
    if (p != "epsilon" && p != "sample" && p != "original_sample" && p != "v_prediction")
        throw std::runtime_error("EulerDiscreteScheduler: unknown prediction_type '" + p + "'");
    if (config_.timestep_type == "continuous" && p == "v_prediction")
        timesteps_ = 0.25 * sigmas_.slice(0, 0, -1).log();
}

void EulerDiscreteScheduler::set_timesteps(int64_t n) {
    const auto& c = config_;
    // 1. timesteps by spacing (Table 2 of https://arxiv.org/abs/2305.08891).
    auto t = euler_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset);
    // 2. sigma(t) by interpolating the training sigmas (float32 values, float64 math).
    const auto train = train_sigmas(schedule_.alphas_cumprod);
    std::vector<double> log_sigmas;
    for (double s : train) log_sigmas.push_back(std::log(static_cast<float>(s)));
    std::vector<double> sigmas;
    if (c.interpolation_type == "linear") {
        sigmas = np_interp(t, train);
    } else if (c.interpolation_type == "log_linear") {
        auto s = torch::linspace(log_sigmas.back(), log_sigmas.front(), n + 1).exp();
        for (int64_t i = 0; i < s.numel(); ++i) sigmas.push_back(s[i].item<double>());
    } else {
        throw std::runtime_error("EulerDiscreteScheduler: interpolation_type '" +
                                 c.interpolation_type + "' (accepted: linear, log_linear)");
    }
    // 3. Karras sigmas (eq. 5, rho 7) between the interpolated ends, timesteps from sigma.
    if (c.use_karras_sigmas) {
        sigmas = karras_sigmas(c.sigma_min.value_or(sigmas.back()),
                               c.sigma_max.value_or(sigmas.front()), n);
        t.clear();
        for (double s : sigmas) t.push_back(sigma_to_t(s, log_sigmas));
    }
    auto sig = to_f32(sigmas);
    if (c.timestep_type == "continuous" && c.prediction_type == "v_prediction")
        timesteps_ = 0.25 * sig.log();
    else
        timesteps_ = to_f32(t);
    sigmas_     = torch::cat({sig, torch::zeros({1})});  // [S + 1], sigma_S = 0
    step_index_ = -1;
}

torch::Tensor EulerDiscreteScheduler::step(const torch::Tensor& model_output,
                                           const torch::Tensor& timestep,
                                           const torch::Tensor& sample, at::Generator* generator) {
    if (step_index_ < 0) init_step_index(timestep);
    // diffusers draws the churn noise every step even when s_churn = 0 (gamma = 0, unused); we
    // draw it too when a generator is given so the generator's state matches afterwards.
    if (generator != nullptr)  // drawn where the generator lives: only its state matters
        randn_tensor(model_output.sizes(), generator, generator->device(),
                     model_output.scalar_type());
    auto x         = sample.to(torch::kFloat32);
    auto sigma     = sigmas_[step_index_];
    auto sigma_hat = sigma * 1.0;  // sigma * (gamma + 1), gamma = 0
    // 1. denoised x_0 (Karras D(x; sigma)).
    torch::Tensor pred_original_sample;
    const auto& p = config_.prediction_type;
    if (p == "sample" || p == "original_sample")
        pred_original_sample = model_output;
    else if (p == "epsilon")
        pred_original_sample = x - sigma_hat * model_output;
    else  // v_prediction: c_out = -sigma / sqrt(sigma^2 + 1), c_skip = 1 / (sigma^2 + 1)
        pred_original_sample =
            model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + (x / (sigma.pow(2) + 1));
    // 2. ODE derivative d = (x - D) / sigma (Algorithm 2, line 7) and the Euler step.
    auto derivative  = (x - pred_original_sample) / sigma_hat;
    auto dt          = sigmas_[step_index_ + 1] - sigma_hat;
    auto prev_sample = x + derivative * dt;
    ++step_index_;
    return prev_sample.to(model_output.scalar_type());
}

// ---- EulerAncestralDiscreteScheduler ----

EulerAncestralDiscreteScheduler::EulerAncestralDiscreteScheduler(EulerAncestralConfig config)
    : EulerBase(config, config.rescale_betas_zero_snr, config.timestep_spacing),
      config_(std::move(config)) {
    const auto& p = config_.prediction_type;
    if (p != "epsilon" && p != "v_prediction")
        throw std::runtime_error("EulerAncestralDiscreteScheduler: prediction_type '" + p +
                                 "' is not supported (accepted: epsilon, v_prediction)");
}

void EulerAncestralDiscreteScheduler::set_timesteps(int64_t n) {
    const auto& c = config_;
    auto t        = euler_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset);
    auto sigmas   = np_interp(t, train_sigmas(schedule_.alphas_cumprod));
    sigmas.push_back(0.0);
    sigmas_     = to_f32(sigmas);  // [S + 1]
    timesteps_  = to_f32(t);       // [S]
    step_index_ = -1;
}

torch::Tensor EulerAncestralDiscreteScheduler::step(const torch::Tensor& model_output,
                                                    const torch::Tensor& timestep,
                                                    const torch::Tensor& sample,
                                                    at::Generator* generator) {
    if (step_index_ < 0) init_step_index(timestep);
    auto sigma = sigmas_[step_index_];
    auto x     = sample.to(torch::kFloat32);
    // 1. denoised x_0.
    torch::Tensor pred_original_sample;
    if (config_.prediction_type == "epsilon")
        pred_original_sample = x - sigma * model_output;
    else
        pred_original_sample =
            model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + (x / (sigma.pow(2) + 1));
    // 2. split the step into a deterministic part down to sigma_down and fresh noise sigma_up:
    //    sigma_up = sqrt(s_to^2 (s_from^2 - s_to^2) / s_from^2), sigma_down = sqrt(s_to^2 -
    //    s_up^2).
    auto sigma_from = sigmas_[step_index_];
    auto sigma_to   = sigmas_[step_index_ + 1];
    auto sigma_up =
        (sigma_to.pow(2) * (sigma_from.pow(2) - sigma_to.pow(2)) / sigma_from.pow(2)).pow(0.5);
    auto sigma_down = (sigma_to.pow(2) - sigma_up.pow(2)).pow(0.5);
    // 3. Euler step to sigma_down, then add noise * sigma_up.
    auto derivative  = (x - pred_original_sample) / sigma;
    auto dt          = sigma_down - sigma;
    auto prev_sample = x + derivative * dt;
    auto noise       = randn_tensor(model_output.sizes(), generator, model_output.device(),
                                    model_output.scalar_type());
    prev_sample      = prev_sample + noise * sigma_up;
    ++step_index_;
    return prev_sample.to(model_output.scalar_type());
}

}  // namespace t2i::schedulers
