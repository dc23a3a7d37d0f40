// Implements: the micro-step forward and loss of train_text_to_image.py (see loss.h), numbered as
// the script's stages.
#include "training/loss.h"

#include <stdexcept>

namespace t2i::training {

std::string effective_prediction_type(const schedulers::DDPMScheduler& scheduler,
                                      const LossConfig& config) {
    // The script's `noise_scheduler.register_to_config(prediction_type=...)` override.
    const std::string type = config.prediction_type.empty() ? scheduler.config().prediction_type
                                                            : config.prediction_type;
    if (type != "epsilon" && type != "v_prediction")
        throw std::runtime_error("Unknown prediction type '" + type +
                                 "': training supports epsilon and v_prediction "
                                 "(--prediction_type or scheduler/scheduler_config.json)");
    return type;
}

std::vector<int64_t> latent_shape(const models::AutoencoderKLConfig& vae_config,
                                  at::IntArrayRef pixel_shape) {
    TORCH_CHECK(pixel_shape.size() == 4, "pixel_values must be [B, 3, H, W], got ", pixel_shape);
    const int64_t f = vae_config.vae_scale_factor();
    return {pixel_shape[0], vae_config.latent_channels, pixel_shape[2] / f, pixel_shape[3] / f};
}

StepDraws draw_step_randoms(at::IntArrayRef shape, int64_t num_train_timesteps,
                            at::Generator& generator, const LossConfig& config, bool pinned) {
    TORCH_CHECK(shape.size() == 4, "latent shape must be [B, Z, h, w], got ", shape);
    // Page-locked host memory for a GPU run: the copies to the device then do not stop the host.
    // randn / randint fill the buffer with the same numbers either way.
    const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).pinned_memory(pinned);
    StepDraws d;
    d.vae_eps = at::randn(shape, generator, f32);
    d.noise   = at::randn(shape, generator, f32);
    if (config.noise_offset != 0)
        d.offset_noise = at::randn({shape[0], shape[1], 1, 1}, generator, f32);
    if (config.input_perturbation != 0) d.perturb_noise = at::randn(shape, generator, f32);
    d.timesteps = at::randint(0, num_train_timesteps, {shape[0]}, generator,
                              torch::TensorOptions().dtype(torch::kInt64).pinned_memory(pinned));
    return d;
}

torch::Tensor diffusion_loss(const torch::Tensor& model_pred, const torch::Tensor& target,
                             const torch::Tensor& timesteps,
                             const schedulers::DDPMScheduler& scheduler,
                             const std::string& prediction_type, double snr_gamma,
                             StepOutputs* out) {
    const auto pred = model_pred.to(torch::kFloat32);
    const auto tgt  = target.to(torch::kFloat32);
    if (!(snr_gamma > 0)) return torch::mse_loss(pred, tgt, at::Reduction::Mean);
    // Min-SNR-gamma: per-sample mean over C, H, W, times min(snr, gamma) / snr (eps) or
    // / (snr + 1) (v); compute_snr and the weights live with the scheduler (SNR = 0 safe).
    const auto snr     = schedulers::compute_snr(scheduler, timesteps);                      // [B]
    const auto weights = schedulers::min_snr_loss_weights(snr, snr_gamma, prediction_type);  // [B]
    auto loss          = torch::mse_loss(pred, tgt, at::Reduction::None);  // [B, Z, h, w]
    std::vector<int64_t> dims;
    for (int64_t d = 1; d < loss.dim(); ++d) dims.push_back(d);
    loss = loss.mean(dims) * weights;  // [B]
    if (out) {
        out->snr              = snr;
        out->mse_loss_weights = weights;
    }
    return loss.mean();
}

// diffusers training_utils.compute_dream_and_update_latents (epsilon only): a no-grad UNet pass
// predicts the noise; its error, scaled by lambda = sqrt(1 - abar_t)^p, is added to the target
// and (times sqrt(1 - abar_t)) to the noisy latents.
static void dream_update(models::UNet2DConditionModel& unet,
                         const schedulers::DDPMScheduler& scheduler, const torch::Tensor& timesteps,
                         const torch::Tensor& noise, const torch::Tensor& ehs, double p,
                         torch::Tensor& noisy_latents, torch::Tensor& target) {
    const auto alphas_cumprod =
        scheduler.alphas_cumprod_on(timesteps.device()).index({timesteps}).view({-1, 1, 1, 1});
    const auto sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).pow(0.5);  // [B, 1, 1, 1]
    const auto dream_lambda                  = sqrt_one_minus_alphas_cumprod.pow(p);
    torch::Tensor pred;
    {
        torch::NoGradGuard no_grad;
        pred = unet->forward(noisy_latents, timesteps, ehs);
    }
    auto delta_noise = (noise - pred).detach();
    delta_noise.mul_(dream_lambda);
    noisy_latents = noisy_latents.add(sqrt_one_minus_alphas_cumprod * delta_noise);
    target        = target.add(delta_noise);
}

StepOutputs compute_step(StepModels& m, const torch::Tensor& pixel_values,
                         const torch::Tensor& input_ids, const StepDraws& draws,
                         const LossConfig& config) {
    StepInputs in;
    in.pixel_values = pixel_values;
    in.input_ids    = input_ids;
    return compute_step(m, in, draws, config);
}

StepOutputs compute_step(StepModels& m, const StepInputs& in, const StepDraws& draws,
                         const LossConfig& config) {
    auto& unet                        = m.unet;
    auto& vae                         = m.vae;
    auto& text_encoder                = m.text_encoder;
    const auto& scheduler             = m.noise_scheduler;
    const std::string prediction_type = effective_prediction_type(scheduler, config);
    if (config.dream_training && prediction_type != "epsilon")
        throw std::runtime_error(
            "--dream_training is implemented for epsilon prediction only "
            "(diffusers raises NotImplementedError for " +
            prediction_type + ")");
    StepOutputs out;
    // 1. Latents: vae.encode(pixels).latent_dist.sample() * scaling_factor.
    torch::Tensor encoder_hidden_states;
    {
        torch::NoGradGuard no_grad;
        if (in.latent_mean.defined()) {  // cached posterior: DiagonalGaussianDistribution::sample
            const auto like = in.latent_mean.options();
            out.latents     = (in.latent_mean + in.latent_std * draws.vae_eps.to(like, true)) *
                          vae->config.scaling_factor;
        } else {
            const auto vae_param = vae->parameters().front();
            const auto dist =
                vae->encode(in.pixel_values.to(vae_param.device(), vae_param.scalar_type()));
            const auto like = dist.mean.options();
            out.latents     = dist.sample(draws.vae_eps.to(like, /*non_blocking=*/true)) *
                          vae->config.scaling_factor;  // [B, Z, h, w]
        }
        mark(in.profile, StepProfile::kVae);
        // 4. Text conditioning: last_hidden_state (no clip skip). [B, S, D]
        if (in.encoder_hidden_states.defined()) {
            encoder_hidden_states = in.encoder_hidden_states;
        } else {
            const auto te_device = text_encoder->parameters().front().device();
            encoder_hidden_states =
                text_encoder->forward(in.input_ids.to(te_device, true)).last_hidden_state;
        }
        mark(in.profile, StepProfile::kText);
    }
    out.latents         = out.latents.contiguous();  // the VAE may run channels-last
    const auto& latents = out.latents;
    const auto opts     = latents.options();
    // 2. Noise (+ offset noise, drawn in fp32 as the script's torch.randn; the in-place add keeps
    //    the noise's dtype), input perturbation for the noisy input only.
    auto noise = draws.noise.to(opts, /*non_blocking=*/true);
    if (config.noise_offset != 0) {
        TORCH_CHECK(draws.offset_noise.defined(), "noise_offset set but no offset_noise drawn");
        noise = noise + (config.noise_offset *
                         draws.offset_noise.to(latents.device(), /*non_blocking=*/true))
                            .to(opts);
    }
    torch::Tensor input_noise = noise;
    if (config.input_perturbation != 0) {
        TORCH_CHECK(draws.perturb_noise.defined(), "input_perturbation set but no perturb_noise");
        input_noise =
            noise + config.input_perturbation * draws.perturb_noise.to(opts, /*non_blocking=*/true);
    }
    // 3. Forward diffusion at the drawn timesteps.
    const auto timesteps =
        draws.timesteps.to(latents.device(), torch::kInt64, /*non_blocking=*/true);  // [B]
    out.noisy_latents = scheduler.add_noise(latents, input_noise, timesteps);
    // 5. Target by prediction type (input perturbation does not touch it).
    out.target =
        prediction_type == "epsilon" ? noise : scheduler.get_velocity(latents, noise, timesteps);
    if (config.dream_training)
        dream_update(unet, scheduler, timesteps, noise, encoder_hidden_states,
                     config.dream_detail_preservation, out.noisy_latents, out.target);
    // 6. Prediction and loss.
    out.model_pred = unet->forward(out.noisy_latents, timesteps, encoder_hidden_states);
    out.loss = diffusion_loss(out.model_pred, out.target, timesteps, scheduler, prediction_type,
                              config.snr_gamma, &out);
    mark(in.profile, StepProfile::kUnetForward);
    return out;
}

}  // namespace t2i::training
