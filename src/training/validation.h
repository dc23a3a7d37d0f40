// Implements: validation images during training, as train_text_to_image.py's log_validation:
// EMA weights swapped in (store / copy_to / restore), the base model's inference scheduler (with
// the prediction type trained for), 20 steps, one generator seeded with --seed shared
// sequentially across prompts, under autocast. Images go to
// output_dir/validation/step-<N>/<i>-<prompt>.png and to TensorBoard as "validation".
#pragma once

#include <string>
#include <vector>

#include "io/tensorboard.h"
#include "pipeline/text_to_image.h"
#include "training/ema.h"
#include "training/train_config.h"

namespace t2i::training {

// Returns the [N, H, W, 3] uint8 images (one per prompt). `scheduler_config`: the base model's
// (pipeline/model_dir read it once for the run).
torch::Tensor log_validation(const TrainConfig& config, pipeline::StableDiffusionPipeline& pipe,
                             const io::JsonConfig& scheduler_config, EMAModel* ema,
                             const std::string& prediction_type, uint64_t seed, int64_t step,
                             int64_t tensorboard_step, torch::ScalarType autocast_dtype,
                             io::EventWriter* tensorboard);

// What log_validation needs besides the step, set up once per run: whether this rank makes the
// images (rank 0), the pipeline over the training modules, the scheduler config and prediction
// type, the seed, the autocast dtype, the EMA (may be null) and the TensorBoard writer (may be
// null).
struct Validation {
    bool on_this_rank;
    const TrainConfig& config;
    pipeline::StableDiffusionPipeline pipe;
    io::JsonConfig scheduler_config;
    std::string prediction_type;
    uint64_t seed;
    torch::ScalarType autocast_dtype;
    EMAModel* ema;
    io::EventWriter* tensorboard;

    // Images for every TrainConfig::validation_images() prompt (none without prompts). TensorBoard
    // step: the epoch for per-epoch validation (as the original), else the step.
    void operator()(int64_t step, int64_t tensorboard_step) {
        if (!on_this_rank || config.validation_images().empty()) return;
        log_validation(config, pipe, scheduler_config, ema, prediction_type, seed, step,
                       tensorboard_step, autocast_dtype, tensorboard);
    }
};

// "a red fox, 4k!" -> "a-red-fox-4k": safe in a file name, at most 60 characters.
std::string prompt_slug(const std::string& prompt);

}  // namespace t2i::training
