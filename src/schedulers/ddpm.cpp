// Implements: schedulers/ddpm.h (diffusers v0.27.2 scheduling_ddpm.py: __init__, add_noise,
// get_velocity; training_utils.py: compute_snr; train_text_to_image.py: snr_gamma weighting).
#include "schedulers/ddpm.h"

#include <stdexcept>

#include "schedulers/scheduler.h"
#include "util/log.h"

namespace t2i::schedulers {

namespace {

const std::vector<std::string> kPredictionTypes = {"epsilon", "sample", "v_prediction"};

// Timesteps index alphas_cumprod, so they must be integers in [0, T).
void check_timesteps(const torch::Tensor& timesteps, int64_t num_train_timesteps,
                     const char* where) {
    if (!timesteps.defined() || c10::isFloatingType(timesteps.scalar_type()) ||
        timesteps.scalar_type() == torch::kBool)
        throw std::runtime_error(strformat("%s: timesteps must be an integer tensor", where));
    // The value range is checked where it costs nothing: on the CPU. On a GPU it would stop the
    // host at every step (diffusers checks neither); t2i's own draws are in range by design.
    if (timesteps.numel() == 0 || !timesteps.is_cpu()) return;
    const int64_t lo = timesteps.min().item<int64_t>();
    const int64_t hi = timesteps.max().item<int64_t>();
    if (lo < 0 || hi >= num_train_timesteps)
        throw std::runtime_error(strformat(
            "%s: timesteps must lie in [0, %lld) (num_train_timesteps), got values in [%lld, %lld]",
            where, static_cast<long long>(num_train_timesteps), static_cast<long long>(lo),
            static_cast<long long>(hi)));
}

}  // namespace

void check_prediction_type(const std::string& prediction_type, const std::string& where) {
    for (const auto& p : kPredictionTypes)
        if (p == prediction_type) return;
    throw std::runtime_error(where + ": unknown prediction_type '" + prediction_type +
                             "' (accepted: epsilon, sample, v_prediction)");
}

SchedulerConfig SchedulerConfig::from_json(const io::JsonConfig& json) {
    SchedulerConfig c;
    c.class_name = json.get<std::string>("_class_name", c.class_name);
    c.read_beta_keys(json);
    c.variance_type   = json.get<std::string>("variance_type", c.variance_type);
    c.clip_sample     = json.get<bool>("clip_sample", c.clip_sample);
    c.prediction_type = json.get<std::string>("prediction_type", c.prediction_type);
    c.thresholding    = json.get<bool>("thresholding", c.thresholding);
    c.dynamic_thresholding_ratio =
        json.get<double>("dynamic_thresholding_ratio", c.dynamic_thresholding_ratio);
    c.clip_sample_range      = json.get<double>("clip_sample_range", c.clip_sample_range);
    c.sample_max_value       = json.get<double>("sample_max_value", c.sample_max_value);
    c.timestep_spacing       = json.get<std::string>("timestep_spacing", c.timestep_spacing);
    c.steps_offset           = read_steps_offset(json, c.steps_offset, c.num_train_timesteps);
    c.rescale_betas_zero_snr = json.get<bool>("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
    check_prediction_type(c.prediction_type, "config '" + json.path() + "'");
    return c;
}

DDPMScheduler::DDPMScheduler(SchedulerConfig config)
    : config_(std::move(config)),
      schedule_(make_noise_schedule(config_.beta_schedule, config_.beta_start, config_.beta_end,
                                    config_.num_train_timesteps, config_.trained_betas,
                                    config_.rescale_betas_zero_snr)) {}

const torch::Tensor& DDPMScheduler::alphas_cumprod_on(const torch::Device& device) const {
    if (device == schedule_.alphas_cumprod.device()) return schedule_.alphas_cumprod;
    if (!device_alphas_cumprod_.defined() || device_alphas_cumprod_.device() != device)
        device_alphas_cumprod_ = schedule_.alphas_cumprod.to(device);
    return device_alphas_cumprod_;
}

std::pair<torch::Tensor, torch::Tensor> DDPMScheduler::coefficients(
    const torch::Tensor& like, const torch::Tensor& timesteps) const {
    check_timesteps(timesteps, config_.num_train_timesteps, "DDPMScheduler");
    // diffusers casts alpha_bar to the samples' dtype first, then takes the square roots.
    auto alphas_cumprod  = alphas_cumprod_on(like.device()).to(like.scalar_type());  // [T]
    auto t               = timesteps.to(like.device());
    auto alpha_prod      = alphas_cumprod.index({t});                      // t.shape
    auto sqrt_alpha_prod = alpha_prod.pow(0.5).flatten();                  // [B]
    auto sqrt_one_minus_alpha_prod = (1 - alpha_prod).pow(0.5).flatten();  // [B]
    while (sqrt_alpha_prod.dim() < like.dim()) {
        sqrt_alpha_prod           = sqrt_alpha_prod.unsqueeze(-1);            // [B, 1, ...]
        sqrt_one_minus_alpha_prod = sqrt_one_minus_alpha_prod.unsqueeze(-1);  // [B, 1, ...]
    }
    return {sqrt_alpha_prod, sqrt_one_minus_alpha_prod};
}

torch::Tensor DDPMScheduler::add_noise(const torch::Tensor& original_samples,
                                       const torch::Tensor& noise,
                                       const torch::Tensor& timesteps) const {
    auto [sqrt_alpha_prod, sqrt_one_minus_alpha_prod] = coefficients(original_samples, timesteps);
    return sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise;  // [B, ...]
}

torch::Tensor DDPMScheduler::get_velocity(const torch::Tensor& sample, const torch::Tensor& noise,
                                          const torch::Tensor& timesteps) const {
    auto [sqrt_alpha_prod, sqrt_one_minus_alpha_prod] = coefficients(sample, timesteps);
    return sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample;  // [B, ...]
}

torch::Tensor compute_snr(const DDPMScheduler& scheduler, const torch::Tensor& timesteps) {
    check_timesteps(timesteps, scheduler.config().num_train_timesteps, "compute_snr");
    const auto& alphas_cumprod         = scheduler.alphas_cumprod_on(timesteps.device());  // [T]
    auto sqrt_alphas_cumprod           = alphas_cumprod.pow(0.5);                          // [T]
    auto sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).pow(0.5);
    auto alpha                         = sqrt_alphas_cumprod.index({timesteps}).to(torch::kFloat32);
    auto sigma = sqrt_one_minus_alphas_cumprod.index({timesteps}).to(torch::kFloat32);
    return (alpha / sigma).pow(2);  // timesteps.shape
}

torch::Tensor min_snr_loss_weights(const torch::Tensor& snr, double gamma,
                                   const std::string& prediction_type) {
    if (!(gamma > 0))
        throw std::runtime_error(
            strformat("min_snr_loss_weights: snr_gamma must be > 0, got %g", gamma));
    check_prediction_type(prediction_type, "min_snr_loss_weights");
    // torch.stack([snr, gamma * ones], dim=1).min(dim=1)[0]
    auto weights = torch::clamp_max(snr, gamma);  // [B]
    if (prediction_type == "epsilon") {
        weights = weights / snr;
        // 0/0 at zero terminal SNR -> the limit 1 (see the header).
        weights = torch::where(snr == 0, torch::ones_like(weights), weights);
    } else if (prediction_type == "v_prediction") {
        weights = weights / (snr + 1);
    }
    return weights;
}

}  // namespace t2i::schedulers
