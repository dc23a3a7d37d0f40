// Implements: the discrete noise schedules shared by every scheduler (DDPM, DDIM, Euler):
// betas for `linear`, `scaled_linear`, `squaredcos_cap_v2`, `sigmoid` or a trained list, the
// optional zero-terminal-SNR rescale, alphas = 1 - betas and alphas_cumprod = prod(alphas).
// Mirrors diffusers v0.27.2 schedulers/scheduling_ddpm.py (`__init__`, `betas_for_alpha_bar`,
// `rescale_zero_terminal_snr`), including its dtypes: everything is float32 except the cosine
// schedule, which Python computes in double and casts once.
// Shapes: T = num_train_timesteps; every tensor here is [T] float32 on the CPU.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace t2i::schedulers {

// The beta schedule names diffusers' DDPMScheduler accepts.
extern const std::vector<std::string> kBetaSchedules;

// betas [T] float32. `trained_betas`, when not empty, wins over `beta_schedule` (as in diffusers)
// and must hold exactly T values. An unknown schedule throws naming it and the accepted ones.
torch::Tensor make_betas(const std::string& beta_schedule, double beta_start, double beta_end,
                         int64_t num_train_timesteps,
                         const std::vector<double>& trained_betas = {});

// Nichol & Dhariwal 2021 (https://arxiv.org/abs/2102.09672) eq. 17: betas from a continuous
// alpha_bar(t), clipped at `max_beta`. `alpha_transform_type` is "cosine" or "exp".
// Computed in double, returned as float32 [T].
torch::Tensor betas_for_alpha_bar(int64_t num_diffusion_timesteps, double max_beta = 0.999,
                                  const std::string& alpha_transform_type = "cosine");

// Lin et al. 2023 (https://arxiv.org/abs/2305.08891) Algorithm 1: shift and scale sqrt(alpha_bar)
// so that alpha_bar[T-1] == 0 exactly (zero terminal SNR) while alpha_bar[0] is unchanged.
torch::Tensor rescale_zero_terminal_snr(const torch::Tensor& betas);

// betas, alphas and alphas_cumprod of one schedule (all [T] float32).
struct NoiseSchedule {
    torch::Tensor betas;           // [T]
    torch::Tensor alphas;          // [T] 1 - betas
    torch::Tensor alphas_cumprod;  // [T] alpha_bar_t = prod_{s<=t} alphas_s (float32 cumprod)
};

// The schedule as DDPMScheduler.__init__ builds it: make_betas, then the optional rescale.
NoiseSchedule make_noise_schedule(const std::string& beta_schedule, double beta_start,
                                  double beta_end, int64_t num_train_timesteps,
                                  const std::vector<double>& trained_betas,
                                  bool rescale_betas_zero_snr);

}  // namespace t2i::schedulers
