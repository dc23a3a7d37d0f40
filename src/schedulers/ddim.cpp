// Implements: schedulers/ddim.h, following diffusers v0.27.2 scheduling_ddim.py line by line.
// Scalars stay 0-d float32 tensors so the rounding equals the Python code's.
#include "schedulers/ddim.h"

#include <stdexcept>

#include "schedulers/ddpm.h"

namespace t2i::schedulers {

DDIMConfig DDIMConfig::from_json(const io::JsonConfig& json) {
    DDIMConfig c;
    c.read_beta_keys(json);
    c.clip_sample                = json.get<bool>("clip_sample", c.clip_sample);
    c.set_alpha_to_one           = json.get<bool>("set_alpha_to_one", c.set_alpha_to_one);
    c.steps_offset               = read_steps_offset(json, c.steps_offset, c.num_train_timesteps);
    c.prediction_type            = json.get<std::string>("prediction_type", c.prediction_type);
    c.thresholding               = json.get<bool>("thresholding", c.thresholding);
    c.dynamic_thresholding_ratio = json.get<double>("dynamic_thresholding_ratio", 0.995);
    c.clip_sample_range          = json.get<double>("clip_sample_range", c.clip_sample_range);
    c.sample_max_value           = json.get<double>("sample_max_value", c.sample_max_value);
    c.timestep_spacing           = json.get<std::string>("timestep_spacing", c.timestep_spacing);
    c.rescale_betas_zero_snr = json.get<bool>("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
    check_prediction_type(c.prediction_type, "DDIMScheduler config '" + json.path() + "'");
    return c;
}

DDIMScheduler::DDIMScheduler(DDIMConfig config, double eta)
    : config_(std::move(config)),
      eta_(eta),
      schedule_(make_noise_schedule(config_.beta_schedule, config_.beta_start, config_.beta_end,
                                    config_.num_train_timesteps, config_.trained_betas,
                                    config_.rescale_betas_zero_snr)) {
    check_prediction_type(config_.prediction_type, "DDIMScheduler");
    final_alpha_cumprod_ =
        config_.set_alpha_to_one ? torch::tensor(1.0f) : schedule_.alphas_cumprod[0].clone();
    timesteps_ = torch::arange(config_.num_train_timesteps - 1, -1, -1, torch::kInt64);
}

void DDIMScheduler::set_timesteps(int64_t n) {
    const int64_t T = config_.num_train_timesteps;
    if (n <= 0 || n > T)
        throw std::runtime_error("DDIMScheduler: num_inference_steps " + std::to_string(n) +
                                 " must lie in [1, num_train_timesteps = " + std::to_string(T) +
                                 "]");
    num_inference_steps_ = n;
    std::vector<int64_t> t;
    if (config_.timestep_spacing == "linspace") {
        // np.linspace(0, T - 1, n).round()[::-1]
        for (double v : np_linspace(0, static_cast<double>(T - 1), n))
            t.insert(t.begin(), static_cast<int64_t>(std::nearbyint(v)));
    } else {
        // leading: arange(n) * (T // n) + steps_offset; trailing: round(arange(T, 0, -T/n)) - 1
        for (double v : spaced_timesteps(config_.timestep_spacing, T, n, config_.steps_offset))
            t.push_back(static_cast<int64_t>(v));
    }
    timesteps_ = torch::tensor(t, torch::kInt64);
}

torch::Tensor DDIMScheduler::step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                                  const torch::Tensor& sample, at::Generator* generator) {
    if (num_inference_steps_ == 0)
        throw std::runtime_error("DDIMScheduler: call set_timesteps before step");
    const auto& ac = schedule_.alphas_cumprod;
    // 1. previous step: t - T // S (eq. 12 runs on the sub-sequence tau).
    const int64_t t      = timestep.item<int64_t>();
    const int64_t prev_t = t - config_.num_train_timesteps / num_inference_steps_;

    // 2. alpha_bar_t, alpha_bar_{t-1}, beta_bar_t.
    auto alpha_prod_t      = ac[t];
    auto alpha_prod_t_prev = prev_t >= 0 ? ac[prev_t] : final_alpha_cumprod_;
    auto beta_prod_t       = 1 - alpha_prod_t;

    // 3. predicted x_0 ("predicted x_0" of eq. 12) and epsilon.
    torch::Tensor pred_original_sample, pred_epsilon;
    if (config_.prediction_type == "epsilon") {
        pred_original_sample =
            (sample - beta_prod_t.pow(0.5) * model_output) / alpha_prod_t.pow(0.5);
        pred_epsilon = model_output;
    } else if (config_.prediction_type == "sample") {
        pred_original_sample = model_output;
        pred_epsilon =
            (sample - alpha_prod_t.pow(0.5) * pred_original_sample) / beta_prod_t.pow(0.5);
    } else {  // v_prediction (Salimans & Ho 2022, sec. 2.4 of Imagen Video)
        pred_original_sample = alpha_prod_t.pow(0.5) * sample - beta_prod_t.pow(0.5) * model_output;
        pred_epsilon         = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
    }

    // 4. threshold or clip x_0.
    if (config_.thresholding)
        pred_original_sample = threshold_sample(
            pred_original_sample, config_.dynamic_thresholding_ratio, config_.sample_max_value);
    else if (config_.clip_sample)
        pred_original_sample =
            pred_original_sample.clamp(-config_.clip_sample_range, config_.clip_sample_range);

    // 5. sigma_t(eta) of eq. 16: eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).
    auto variance =
        ((1 - alpha_prod_t_prev) / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev);
    auto std_dev_t = eta_ * variance.pow(0.5);

    // 6. "direction pointing to x_t" of eq. 12, then x_{t-1} without the noise.
    auto pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t.pow(2)).pow(0.5) * pred_epsilon;
    auto prev_sample = alpha_prod_t_prev.pow(0.5) * pred_original_sample + pred_sample_direction;

    // 7. the random term sigma_t z of eq. 12.
    if (eta_ > 0) {
        auto noise  = randn_tensor(model_output.sizes(), generator, model_output.device(),
                                   model_output.scalar_type());
        prev_sample = prev_sample + std_dev_t * noise;
    }
    return prev_sample;
}

}  // namespace t2i::schedulers
