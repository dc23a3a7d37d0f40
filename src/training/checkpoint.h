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
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "data/loader.h"
#include "io/output_folder.h"
#include "io/safetensors.h"
#include "models/lora.h"
#include "models/unet.h"
#include "models/weights.h"
#include "training/ema.h"
#include "training/lr_schedule.h"
#include "training/optimizer.h"
#include "training/train_config.h"
#include "util/grad_scaler.h"

namespace t2i::training {

// Everything a resumed run needs besides tensors.
struct TrainerState {
    int64_t global_step = 0;
    data::LoaderPosition loader;  // the next batch to train on
    nlohmann::json lr_schedule;   // LRSchedule::state()
    nlohmann::json extra;         // e.g. grad scaler state, skipped-sample count
    nlohmann::json config;        // the effective TrainConfig, for provenance
};

// Saves checkpoint-<state.global_step> in the output folder, then prunes the oldest checkpoints
// t2i wrote there to `total_limit` + 1 (the original prunes first, which leaves no checkpoint at
// all when a save with a limit of 1 is interrupted or fails). The one extra, the previous newest,
// goes at confirm time: weights that diverge still give a finite loss on their last step and a
// NaN only on the next one, so a checkpoint is trusted once a later step's loss was finite
// (then prune_checkpoints(out, total_limit)); if that step's loss is not finite, the checkpoint
// is set aside (quarantine_checkpoint) and the previous one, still there, stays `latest`.
// Refuses, before writing anything, weights (UNet or EMA) that hold NaN or infinity. A failed
// save removes its temporary folder and throws naming the last complete checkpoint. Returns
// the path. `lora`: the checkpoint holds the UNet's LoRA parameters as
// pytorch_lora_weights.safetensors (diffusers' layout) instead of unet/.
// `optimizer_state`: AdamW::state_dict() (or, under ZeRO-1, the shards merged on rank 0).
std::string save_checkpoint(io::OutputFolder& out, const models::UNet2DConditionModel& unet,
                            const EMAModel* ema, const TensorMap& optimizer_state,
                            const at::Generator& generator, const TrainerState& state,
                            std::optional<int64_t> total_limit, bool lora = false);

using models::kLoraWeightsName;  // models/lora.h

// Deletes the oldest checkpoint-N folders t2i wrote in `out` until `keep` remain.
void prune_checkpoints(io::OutputFolder& out, int64_t keep);

// Renames checkpoint-<step> to checkpoint-<step>-diverged (kept for inspection, no longer
// `latest`); returns the new path, or "" when there is no such checkpoint of t2i's.
std::string quarantine_checkpoint(io::OutputFolder& out, int64_t step);

using models::check_finite;  // models/weights.h

// Complete checkpoint folders (checkpoint-<N>) in output_dir, oldest first.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& output_dir);

// Opens --output_dir for a training run (rank 0): refuses the base model folder, the dataset
// folder or a folder inside either; locks it (io::OutputFolder); refuses files there that t2i
// would write over but did not write; and refuses to start a new run (no
// --resume_from_checkpoint) over an earlier run's checkpoints or saved model.
// `names`: the top-level entries the run will write besides checkpoint-N folders.
std::unique_ptr<io::OutputFolder> open_output_dir(const std::string& output_dir,
                                                  const std::string& base_model,
                                                  const std::string& dataset_root, bool resuming,
                                                  const std::set<std::string>& names);

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

// Reads a checkpoint's training_state.json, checking every value's type and range (a damaged
// or hand-edited file is an error naming the file and key, never a crash later in resume).
TrainerState read_trainer_state(const std::string& file);

// Restores weights, EMA, optimizer, generator; returns the trainer state.
TrainerState load_checkpoint(const std::string& path, models::UNet2DConditionModel& unet,
                             EMAModel* ema, AdamW& optimizer, at::Generator& generator,
                             const OptimizerStateFilter& optimizer_filter = {}, bool lora = false);

class DataParallel;  // training/data_parallel.h

// What a checkpoint holds besides the step count: what save_training_state writes and
// resume_training restores.
struct TrainingState {
    models::UNet2DConditionModel& unet;
    EMAModel* ema;  // null without --use_ema (or on ranks other than 0)
    AdamW& optimizer;
    at::Generator& generator;
    LRSchedule& schedule;
    GradScaler& scaler;
    data::DataLoader& loader;
};

// --resume_from_checkpoint: rank 0 picks the checkpoint (resolve_checkpoint), every rank reads it
// (a shared --output_dir, as accelerate needs) and restores weights, optimizer, EMA, LR step,
// grad scaler, generator and the loader at the exact next batch (converted through the samples
// already seen when the number of processes or the batch size changed). Returns the global step:
// 0 when there is no checkpoint yet (a new run starts).
int64_t resume_training(const TrainConfig& c, DataParallel& dp, const TrainingState& t,
                        int64_t dataset_size);

// checkpoint-<global_step>/ of the run (save_checkpoint), with the loader position, LR schedule,
// grad scaler and the flags; older checkpoints pruned to --checkpoints_total_limit. Collective
// under ZeRO-1 (the optimizer state shards are gathered on rank 0, which alone writes). Returns
// the folder written; "" on the other ranks.
std::string save_training_state(const TrainConfig& c, DataParallel& dp, io::OutputFolder* out,
                                const TrainingState& t, int64_t global_step);

}  // namespace t2i::training
