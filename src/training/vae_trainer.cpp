// Implements: training/vae_trainer.h.
#include "training/vae_trainer.h"

#include <cmath>
#include <stdexcept>
#include <thread>

#include "data/caption_dataset.h"
#include "data/loader.h"
#include "pipeline/model_dir.h"
#include "training/checkpoint.h"
#include "training/optimizer.h"
#include "util/log.h"
#include "util/torch_compat.h"

namespace t2i::training {

namespace {

void check(const VaeTrainConfig& c) {
    auto positive = [](const char* flag, double v) {
        if (!(v > 0) || v > 1e9)
            throw std::invalid_argument(std::string("--") + flag + " must be > 0, got " +
                                        std::to_string(v));
    };
    positive("resolution", double(c.resolution));
    positive("train_batch_size", double(c.train_batch_size));
    positive("max_train_steps", double(c.max_train_steps));
    positive("learning_rate", c.learning_rate);
    if (!(c.kl_weight >= 0) || c.kl_weight > 1)
        throw std::invalid_argument("--kl_weight must be in [0, 1], got " +
                                    std::to_string(c.kl_weight));
    if (c.pretrained_model_name_or_path.empty() || c.train_data_dir.empty() || c.output_dir.empty())
        throw std::invalid_argument(
            "--pretrained_model_name_or_path, --train_data_dir and --output_dir are required");
}

// 1 / std of the posterior means over the dataset (center crops, no flip).
double latent_scaling_factor(models::AutoencoderKL& vae, const data::CaptionDataset& ds) {
    torch::NoGradGuard no_grad;
    vae->eval();
    double sum = 0, sum_sq = 0, n = 0;
    for (int64_t i = 0; i < ds.size(); ++i) {
        const auto mean =
            vae->encode(ds.fixed_pixels(i, false).unsqueeze(0)).mean.to(torch::kFloat64);
        sum += mean.sum().item<double>();
        sum_sq += mean.square().sum().item<double>();
        n += double(mean.numel());
    }
    const double var = sum_sq / n - (sum / n) * (sum / n);
    return var > 0 ? 1.0 / std::sqrt(var) : 1.0;
}

}  // namespace

void train_vae(const VaeTrainConfig& c) {
    check(c);
    set_num_threads(c.num_threads > 0 ? int(c.num_threads)
                                      : std::max(1, int(std::thread::hardware_concurrency())));
    const auto base = pipeline::ModelFolder::open(c.pretrained_model_name_or_path);
    data::DatasetConfig d;
    d.train_data_dir        = c.train_data_dir;
    d.seed                  = uint64_t(c.seed);
    d.transform.resolution  = c.resolution;
    d.transform.center_crop = true;  // fixed_pixels (the scaling factor) needs no crop choice
    d.transform.random_flip = true;
    auto dataset            = std::make_shared<const data::CaptionDataset>(
        data::CaptionDataset::open(d, base.tokenizer()));
    auto vae = base.load_vae(pipeline::LoadOptions{});
    if (c.resolution % vae->config.vae_scale_factor() != 0)  // before the output folder exists
        throw std::invalid_argument("--resolution must be a multiple of the VAE's scale factor " +
                                    std::to_string(vae->config.vae_scale_factor()));
    auto out = open_output_dir(
        c.output_dir, c.pretrained_model_name_or_path, dataset->root(),
        /*resuming=*/false,
        {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"});
    vae->train();
    data::LoaderConfig lc;
    lc.batch_size = c.train_batch_size;
    lc.seed       = uint64_t(c.seed);
    data::DataLoader loader(dataset, lc);
    AdamWOptions o;
    o.lr                              = c.learning_rate;
    o.weight_decay                    = 0;
    auto optimizer                    = make_adamw(vae->named_parameters(), o, /*use_8bit=*/false);
    auto generator                    = at::make_generator<at::CPUGeneratorImpl>(uint64_t(c.seed));
    std::vector<torch::Tensor> params = vae->parameters();
    double logged                     = 0;
    int64_t logged_n                  = 0;
    for (int64_t step = 1; step <= c.max_train_steps;) {
        auto batch = loader.next();
        if (!batch || batch->indices.empty()) continue;
        const auto& x    = batch->pixel_values;
        const auto post  = vae->encode(x);
        const auto eps   = at::randn(post.mean.sizes(), generator, post.mean.options());
        const auto recon = vae->decode(post.sample(eps));
        const auto mse   = torch::mse_loss(recon, x);
        const auto kl    = 0.5 * (post.mean.square() + post.var - 1.0 - post.logvar).mean();
        const auto loss  = mse + c.kl_weight * kl;
        loss.backward();
        const double value = loss.item<double>();
        if (!std::isfinite(value))
            throw std::runtime_error("train-vae: the loss is not finite at step " +
                                     std::to_string(step) +
                                     "; lower --learning_rate (nothing was written)");
        clip_grad_norm(params, 1.0);
        optimizer->step();
        optimizer->zero_grad();
        logged += mse.item<double>();
        ++logged_n;
        if (step % 50 == 0 || step == c.max_train_steps) {
            log_info("train-vae step %lld/%lld reconstruction mse %.5f", (long long)step,
                     (long long)c.max_train_steps, logged / double(logged_n));
            logged = 0, logged_n = 0;
        }
        ++step;
    }
    check_finite(vae->named_parameters(), "train-vae: the trained VAE");  // nothing written then
    const double scaling              = latent_scaling_factor(vae, *dataset);
    vae->config.scaling_factor        = scaling;
    vae->config.raw["scaling_factor"] = scaling;
    log_info("train-vae: scaling_factor %.5f (1 / std of the latents)", scaling);
    // The UNet as it is: its folder copied; a single file's, written from the file.
    const auto unet = base.single_file ? base.load_unet(pipeline::LoadOptions{})
                                       : models::UNet2DConditionModel{nullptr};
    pipeline::save_pipeline_folder(*out, base, unet, base.scheduler_config().json(), "", &vae);
    log_info("saved the model with the trained VAE to %s", c.output_dir.c_str());
}

}  // namespace t2i::training
