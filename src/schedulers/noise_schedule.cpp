// Implements: schedulers/noise_schedule.h, line for line with diffusers v0.27.2
// scheduling_ddpm.py (DDPMScheduler.__init__, betas_for_alpha_bar, rescale_zero_terminal_snr).
#include "schedulers/noise_schedule.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "util/log.h"

namespace t2i::schedulers {

const std::vector<std::string> kBetaSchedules = {"linear", "scaled_linear", "squaredcos_cap_v2",
                                                 "sigmoid"};

namespace {}  // namespace

torch::Tensor betas_for_alpha_bar(int64_t num_diffusion_timesteps, double max_beta,
                                  const std::string& alpha_transform_type) {
    if (num_diffusion_timesteps <= 0)
        throw std::runtime_error(
            strformat("betas_for_alpha_bar: num_diffusion_timesteps must be positive, got %lld",
                      static_cast<long long>(num_diffusion_timesteps)));
    double (*alpha_bar_fn)(double) = nullptr;
    if (alpha_transform_type == "cosine") {
        // alpha_bar(t) = cos^2((t + s) / (1 + s) * pi / 2) with s = 0.008 (eq. 17).
        alpha_bar_fn = [](double t) {
            const double c = std::cos((t + 0.008) / 1.008 * M_PI / 2);
            return c * c;
        };
    } else if (alpha_transform_type == "exp") {
        alpha_bar_fn = [](double t) { return std::exp(t * -12.0); };
    } else {
        throw std::runtime_error("betas_for_alpha_bar: unsupported alpha_transform_type '" +
                                 alpha_transform_type + "' (accepted: cosine, exp)");
    }
    const auto n = num_diffusion_timesteps;
    std::vector<double> betas(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        const double t1 = static_cast<double>(i) / static_cast<double>(n);
        const double t2 = static_cast<double>(i + 1) / static_cast<double>(n);
        betas[i]        = std::min(1.0 - alpha_bar_fn(t2) / alpha_bar_fn(t1), max_beta);
    }
    // torch.tensor(list_of_python_floats, dtype=torch.float32): one rounding per value.
    return torch::tensor(betas, torch::kFloat64).to(torch::kFloat32);  // [T]
}

torch::Tensor make_betas(const std::string& beta_schedule, double beta_start, double beta_end,
                         int64_t num_train_timesteps, const std::vector<double>& trained_betas) {
    if (num_train_timesteps <= 0)
        throw std::runtime_error(
            strformat("noise schedule: num_train_timesteps must be positive, got %lld",
                      static_cast<long long>(num_train_timesteps)));
    const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    if (!trained_betas.empty()) {
        if (static_cast<int64_t>(trained_betas.size()) != num_train_timesteps)
            throw std::runtime_error(strformat(
                "noise schedule: trained_betas has %zu values but num_train_timesteps is %lld",
                trained_betas.size(), static_cast<long long>(num_train_timesteps)));
        return torch::tensor(trained_betas, torch::kFloat64).to(torch::kFloat32);  // [T]
    }
    if (beta_schedule == "linear")
        return torch::linspace(beta_start, beta_end, num_train_timesteps, f32);  // [T]
    if (beta_schedule == "scaled_linear")
        // The schedule of the latent diffusion model: linear in sqrt(beta).
        return torch::linspace(std::sqrt(beta_start), std::sqrt(beta_end), num_train_timesteps,
                               f32)
            .pow(2);  // [T]
    if (beta_schedule == "squaredcos_cap_v2")
        // Glide cosine schedule.
        return betas_for_alpha_bar(num_train_timesteps);  // [T]
    if (beta_schedule == "sigmoid") {
        // GeoDiff sigmoid schedule (https://arxiv.org/abs/2203.02923).
        auto betas = torch::linspace(-6, 6, num_train_timesteps, f32);  // [T]
        return torch::sigmoid(betas) * (beta_end - beta_start) + beta_start;
    }
    throw std::runtime_error("noise schedule: beta_schedule '" + beta_schedule +
                             "' is not implemented (accepted: " + join(kBetaSchedules) +
                             ", or a trained_betas list)");
}

torch::Tensor rescale_zero_terminal_snr(const torch::Tensor& betas) {
    // Convert betas to sqrt(alpha_bar).
    auto alphas          = 1.0 - betas;                // [T]
    auto alphas_cumprod  = torch::cumprod(alphas, 0);  // [T]
    auto alphas_bar_sqrt = alphas_cumprod.sqrt();      // [T]

    // Store the old values; shift so the last timestep is zero, then scale so the first
    // timestep is back to its old value.
    auto alphas_bar_sqrt_0 = alphas_bar_sqrt[0].clone();
    auto alphas_bar_sqrt_T = alphas_bar_sqrt[-1].clone();
    alphas_bar_sqrt -= alphas_bar_sqrt_T;
    alphas_bar_sqrt *= alphas_bar_sqrt_0 / (alphas_bar_sqrt_0 - alphas_bar_sqrt_T);

    // Convert sqrt(alpha_bar) back to betas.
    auto alphas_bar = alphas_bar_sqrt.pow(2);
    auto n          = alphas_bar.size(0);
    auto ratios     = alphas_bar.slice(0, 1, n) / alphas_bar.slice(0, 0, n - 1);  // [T-1]
    alphas          = torch::cat({alphas_bar.slice(0, 0, 1), ratios});            // [T]
    return 1 - alphas;
}

NoiseSchedule make_noise_schedule(const std::string& beta_schedule, double beta_start,
                                  double beta_end, int64_t num_train_timesteps,
                                  const std::vector<double>& trained_betas,
                                  bool rescale_betas_zero_snr) {
    NoiseSchedule s;
    s.betas = make_betas(beta_schedule, beta_start, beta_end, num_train_timesteps, trained_betas);
    if (rescale_betas_zero_snr) s.betas = rescale_zero_terminal_snr(s.betas);
    s.alphas         = 1.0 - s.betas;
    s.alphas_cumprod = torch::cumprod(s.alphas, 0);
    return s;
}

}  // namespace t2i::schedulers
