// Implements: output_dir/checkpoint-<step>/ folders: what a checkpoint holds, writing it whole
// (temporary folder, fsync, rename), pruning to --checkpoints_total_limit, finding `latest`, and
// loading it back. Mirrors the layout of train_text_to_image.py's accelerator.save_state
// (REFERENCE.md "Checkpoints") with non-pickle formats:
//   unet/                 config.json + diffusion_pytorch_model.safetensors (fp32, diffusers
//   layout) unet_ema/             same, EMA weights; config.json carries the EMA state as diffusers
//   writes optimizer.safetensors AdamW / 8-bit AdamW state (exp_avg.<param>, exp_avg_sq.<param>,
//   steps) random_states.safetensors  the training generator's state (U8) training_state.json
//   global step, loader position, LR schedule, grad scaler, config
#pragma once

#include <torch/torch.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/loader.h"
#include "io/safetensors.h"
#include "models/unet.h"
#include "training/ema.h"
#include "training/lr_schedule.h"
#include "training/optimizer.h"

namespace t2i::training {

// Everything a resumed run needs besides tensors.
struct TrainerState {
    int64_t global_step = 0;
    data::LoaderPosition loader;  // the next batch to train on
    nlohmann::json lr_schedule;   // LRSchedule::state()
    nlohmann::json extra;         // e.g. grad scaler state, skipped-sample count
    nlohmann::json config;        // the effective TrainConfig, for provenance
};

// Writes the UNet as a diffusers folder: config.json (`config` plus `extra_config` keys) and
// diffusion_pytorch_model.safetensors in the parameters' dtype. Files are written atomically.
void save_unet_folder(const std::string& dir, const torch::nn::Module& unet,
                      const nlohmann::json& config, const io::TensorMap* weights_override = nullptr,
                      const nlohmann::json& extra_config = nlohmann::json::object());

// Saves checkpoint-<state.global_step> under output_dir. Prunes first so that at most
// `total_limit` checkpoints exist afterwards. Returns the checkpoint path.
// `optimizer_state`: AdamW::state_dict() (or, under ZeRO-1, the shards merged on rank 0).
std::string save_checkpoint(const std::string& output_dir, const models::UNet2DConditionModel& unet,
                            const EMAModel* ema, const TensorMap& optimizer_state,
                            const at::Generator& generator, const TrainerState& state,
                            std::optional<int64_t> total_limit);

// Complete checkpoint folders (checkpoint-<N>) in output_dir, oldest first.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& output_dir);

// `latest` (newest in output_dir, or nullopt when there is none), `checkpoint-N` (inside
// output_dir) or a path. A named checkpoint that does not exist is an error.
std::optional<std::string> resolve_checkpoint(const std::string& spec,
                                              const std::string& output_dir);

// The loader position of a checkpoint written by `saved_world` processes x batch `saved_batch`,
// for `world` processes x batch `batch_size`: the batch index that continues the epoch at the
// same sample, rounded down to a whole step (so at most one step's samples are seen again);
// a complete epoch stays complete.
int64_t convert_loader_batch(int64_t batch, int64_t saved_world, int64_t saved_batch, int64_t world,
                             int64_t batch_size, int64_t dataset_size, int64_t batches_per_epoch);

// Picks this process's part of a full optimizer state (ZeRO-1); empty = all of it.
using OptimizerStateFilter = std::function<TensorMap(const TensorMap&)>;

// Restores weights, EMA, optimizer, generator; returns the trainer state.
TrainerState load_checkpoint(const std::string& path, models::UNet2DConditionModel& unet,
                             EMAModel* ema, AdamW& optimizer, at::Generator& generator,
                             const OptimizerStateFilter& optimizer_filter = {});

}  // namespace t2i::training
