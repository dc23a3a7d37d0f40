// Implements: `t2i train-vae` (a t2i addition, not a diffusers script): a brief reconstruction
// fine-tune of a model's VAE on a dataset's images, so that a freshly initialized model (t2i
// init-model) gets a VAE that can encode and decode, and what the UNet then learns can be looked
// at (scripts/demo.sh). Loss: MSE between the image and the decoding of a posterior sample, plus
// kl_weight x the posterior's KL to N(0, I) (the KL-regularized autoencoder of Rombach et al.,
// without its perceptual and adversarial terms). AdamW; centre crops (the scaling factor is
// measured on them), random flips.
// The saved config's scaling_factor becomes 1 / std of the trained posterior means over the
// dataset, the rule by which SD's 0.18215 was chosen, so the UNet sees unit-variance latents.
// Output: a complete pipeline folder, the base model's components with the trained VAE.
#pragma once

#include <cstdint>
#include <string>

namespace t2i::training {

struct VaeTrainConfig {
    std::string pretrained_model_name_or_path;  // a diffusers folder
    std::string train_data_dir;                 // images (+ captions, unused)
    std::string output_dir;                     // the new pipeline folder
    int64_t resolution       = 64;
    int64_t train_batch_size = 8;
    int64_t max_train_steps  = 300;
    double learning_rate     = 5e-4;
    double kl_weight         = 1e-4;
    int64_t seed             = 0;
    int64_t num_threads      = 0;  // 0 = all cores
};

// Trains and writes output_dir; throws std::invalid_argument for bad values, std::runtime_error
// for a loss that is not finite (nothing is written then).
void train_vae(const VaeTrainConfig& config);

}  // namespace t2i::training
