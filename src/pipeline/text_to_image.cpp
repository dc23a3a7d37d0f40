// Implements: pipeline/text_to_image.h.
#include "pipeline/text_to_image.h"

#include <chrono>
#include <stdexcept>

#include "util/log.h"

namespace t2i::pipeline {

StableDiffusionPipeline::StableDiffusionPipeline(models::UNet2DConditionModel unet,
                                                 models::AutoencoderKL vae,
                                                 models::CLIPTextModel text_encoder,
                                                 tokenizer::CLIPTokenizer tokenizer)
    : unet_(std::move(unet)),
      vae_(std::move(vae)),
      text_encoder_(std::move(text_encoder)),
      tokenizer_(std::move(tokenizer)) {}

torch::Tensor StableDiffusionPipeline::encode_prompt(const std::vector<std::string>& prompts) {
    torch::NoGradGuard no_grad;
    const auto device = unet_->parameters().front().device();
    auto ids          = tokenizer_.batch_input_ids(prompts).to(device);  // [B, L]
    return text_encoder_->forward(ids).last_hidden_state;                // [B, L, D]
}

torch::Tensor to_uint8_images(const torch::Tensor& decoded) {
    auto x = (decoded.to(torch::kFloat32) / 2 + 0.5).clamp(0, 1);
    // numpy_to_pil: (images * 255).round().astype("uint8") on NHWC.
    return (x.permute({0, 2, 3, 1}) * 255).round().to(torch::kUInt8).contiguous();
}

GenerateResult StableDiffusionPipeline::operator()(const GenerateOptions& o,
                                                   schedulers::Scheduler& scheduler) {
    torch::NoGradGuard no_grad;
    using Clock        = std::chrono::steady_clock;
    const auto t_start = Clock::now();
    if (o.prompts.empty()) throw std::invalid_argument("no prompt given");
    const auto device = unet_->parameters().front().device();
    const auto dtype  = unet_->parameters().front().scalar_type();
    const int64_t f   = vae_scale_factor();
    // 0. Default height and width to unet
    const int64_t height = o.height > 0 ? o.height : unet_->config.sample_size * f;
    const int64_t width  = o.width > 0 ? o.width : unet_->config.sample_size * f;
    if (height % f != 0 || width % f != 0)
        throw std::invalid_argument(
            strformat("--height and --width must be multiples of %lld "
                      "(the VAE's scale factor); got %lldx%lld",
                      (long long)f, (long long)height, (long long)width));
    const auto B   = static_cast<int64_t>(o.prompts.size());
    const auto n   = o.num_images_per_prompt;
    const bool cfg = o.guidance_scale > 1.0;

    // 3. Encode input prompt: [B*n, L, D], negatives first when guiding.
    auto prompt_embeds = encode_prompt(o.prompts).repeat_interleave(n, 0);
    if (cfg) {
        std::vector<std::string> neg = o.negative_prompts;
        if (neg.empty()) neg.assign(o.prompts.size(), "");
        if (neg.size() == 1 && B > 1) neg.assign(o.prompts.size(), neg[0]);
        if (static_cast<int64_t>(neg.size()) != B)
            throw std::invalid_argument("give one negative prompt, or one per prompt");
        auto negative_embeds = encode_prompt(neg).repeat_interleave(n, 0);
        prompt_embeds        = torch::cat({negative_embeds, prompt_embeds});  // [2Bn, L, D]
    }
    prompt_embeds = prompt_embeds.to(dtype);

    // 4. Prepare timesteps
    scheduler.set_timesteps(o.num_inference_steps);
    const auto timesteps = scheduler.timesteps();

    // 5. Prepare latent variables: drawn on the CPU generator as diffusers' randn_tensor does.
    c10::optional<at::Generator> gen;
    if (o.generator)
        gen = *o.generator;  // shares the generator's state
    else if (o.seed)
        gen = at::make_generator<at::CPUGeneratorImpl>(*o.seed);
    const int64_t Z       = unet_->config.in_channels;
    torch::Tensor latents = o.latents.defined() ? o.latents
                                                : at::randn({B * n, Z, height / f, width / f}, gen,
                                                            torch::TensorOptions().dtype(dtype));
    latents = (latents.to(device, dtype) * scheduler.init_noise_sigma());  // [Bn, Z, h, w]

    // 7. Denoising loop
    const auto t_loop      = Clock::now();
    at::Generator* gen_ptr = o.generator ? o.generator : gen ? &*gen : nullptr;
    for (int64_t i = 0; i < timesteps.size(0); ++i) {
        const auto t    = timesteps[i];
        auto input      = cfg ? torch::cat({latents, latents}) : latents;  // [2Bn | Bn, Z, h, w]
        input           = scheduler.scale_model_input(input, t);
        auto noise_pred = unet_->forward(input, t, prompt_embeds);
        if (cfg) {
            auto chunks = noise_pred.chunk(2);
            noise_pred  = chunks[0] + o.guidance_scale * (chunks[1] - chunks[0]);
        }
        latents = scheduler.step(noise_pred, t, latents, gen_ptr);
        if (o.show_progress)
            std::fprintf(stderr, "\r\033[Kdenoising %lld/%lld", (long long)(i + 1),
                         (long long)timesteps.size(0));
    }
    if (o.show_progress) std::fputc('\n', stderr);
    GenerateResult result;
    result.denoise_seconds = std::chrono::duration<double>(Clock::now() - t_loop).count();
    result.latents         = latents;
    if (o.decode) {
        // diffusers' needs_upcasting: an fp16 VAE with force_upcast decodes in float32 (SD's VAE
        // overflows in fp16), then goes back to fp16.
        const auto vae_dtype = vae_->parameters().front().scalar_type();
        const bool upcast    = vae_dtype == torch::kFloat16 && vae_->config.force_upcast;
        struct Upcast {  // back to fp16 also when decoding throws
            models::AutoencoderKL& vae;
            bool on;
            torch::ScalarType dtype;
            ~Upcast() {
                if (on) vae->to(dtype);
            }
        } upcast_guard{vae_, upcast, vae_dtype};
        if (upcast) vae_->to(torch::kFloat32);
        auto decoded  = vae_->decode(latents.to(upcast ? torch::kFloat32 : vae_dtype) /
                                     vae_->config.scaling_factor);  // [N, 3, H, W]
        result.images = to_uint8_images(decoded);
    }
    result.total_seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
    return result;
}

}  // namespace t2i::pipeline
