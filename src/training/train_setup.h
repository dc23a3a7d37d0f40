// Implements: the setup stages of train() (training/trainer.cpp), one function per stage of
// train_text_to_image.py's main() before its loop: threads and device, the data and output
// folder, the models (frozen and trained, with the noise scheduler and the prediction type), the
// step plan, the optimization state (AdamW, LR schedule, EMA, grad scaler, generator) and the
// TensorBoard writer. train() calls them in order; each throws FlagError for a bad flag value.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>

#include "data/caption_dataset.h"
#include "data/loader.h"
#include "dist/process_group.h"
#include "io/json_config.h"
#include "io/output_folder.h"
#include "io/tensorboard.h"
#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"
#include "pipeline/model_dir.h"
#include "schedulers/ddpm.h"
#include "tokenizer/clip_tokenizer.h"
#include "training/data_parallel.h"
#include "training/ema.h"
#include "training/feature_cache.h"
#include "training/loss.h"
#include "training/lr_schedule.h"
#include "training/optimizer.h"
#include "training/progress.h"
#include "training/train_config.h"
#include "training/validation.h"
#include "util/grad_scaler.h"

namespace t2i::training {

// --mixed_precision as the weight dtype of the frozen models (fp32 for "no").
torch::ScalarType weight_dtype_of(const TrainConfig& c);

// The flags of the dataset and its transform.
data::DatasetConfig dataset_config(const TrainConfig& c, uint64_t seed);

// The flags of the loss (prediction type, noise offset, perturbation, min-SNR, DREAM).
LossConfig loss_config(const TrainConfig& c);

// --save_single_file's name inside --output_dir: the output folder's name + ".safetensors".
std::string single_file_name(const TrainConfig& c);

// The trained UNet comes without --variant, as in the script; a folder with only variant files
// falls back to them.
models::UNet2DConditionModel load_trainable_unet(const pipeline::ModelFolder& folder,
                                                 const TrainConfig& c, torch::Device device);

// --num_threads 0: all cores, shared among the processes a launcher started on this machine. One
// GPU per process: a plain --device cuda means cuda:LOCAL_RANK, as accelerate does.
torch::Device setup_threads_and_device(const TrainConfig& c, const dist::WorldInfo& world);

// Flags that do nothing in this combination: said once, as the script (or accelerate) would.
void warn_ineffective_flags(const TrainConfig& c, const DataParallel& dp);

// The loader of this rank: batches r, r + W, ... in pinned memory for a GPU run.
// With cached latents no image is decoded (the cache names the unreadable ones).
// --enable_bucket: batches of one aspect-ratio bucket each (`buckets`; null without).
data::LoaderConfig loader_config(const TrainConfig& c, uint64_t seed, torch::Device device,
                                 const DataParallel& dp, const FeatureCache& cache,
                                 std::shared_ptr<const data::BucketPlan> buckets = nullptr);

// --enable_bucket, or --resolution W,H (one bucket): every image's bucket, from the image
// headers (data/buckets.h); null for the --resolution square.
std::shared_ptr<const data::BucketPlan> plan_buckets(const TrainConfig& c,
                                                     const data::CaptionDataset& dataset);

// The output folder (rank 0 writes it, the others wait): locked for this run, never the inputs,
// no file t2i did not write in its way, no earlier run's work overwritten. Null on other ranks.
std::unique_ptr<io::OutputFolder> prepare_output(const TrainConfig& c, DataParallel& dp,
                                                 const data::CaptionDataset& dataset);

// What a run computes with: the frozen VAE and text encoder in the weight dtype, the trained UNet
// in fp32, the noise scheduler and the prediction type, decided (and checked against DREAM) once.
struct TrainingModels : StepModels {
    std::string prediction_type;
    torch::ScalarType weight_dtype = torch::kFloat32;
};

TrainingModels load_models(const TrainConfig& c, const pipeline::ModelFolder& folder,
                           const io::JsonConfig& scheduler_config,
                           const tokenizer::CLIPTokenizer& tokenizer, torch::Device device);

// Step accounting as the script (per process, in optimizer steps): epochs are recomputed from
// max_train_steps; --scale_lr counts the processes.
struct StepPlan {
    int64_t accumulation    = 1;  // GA
    int64_t steps_per_epoch = 0;
    int64_t max_steps       = 0;
    int64_t num_epochs      = 0;
    double lr               = 0;
};

StepPlan plan_steps(const TrainConfig& c, int64_t batches_per_epoch, int world_size);

// The run's plan in one log line: samples, batches, epochs, steps, batch x GA x processes, seed.
void log_plan(const TrainConfig& c, const StepPlan& plan, int64_t samples,
              int64_t batches_per_epoch, int world_size, uint64_t seed);

// TensorBoard event files (the original's tags), with the run's config as text first, as the
// original's init_trackers. Rank 0, --report_to tensorboard | all; else null.
std::unique_ptr<io::EventWriter> open_tensorboard(const TrainConfig& c, bool is_main,
                                                  int64_t global_step);

// The progress bar and logging_dir/metrics.jsonl (none with --report_to none). Rank 0; else null.
std::unique_ptr<ProgressReporter> open_progress(const TrainConfig& c, bool is_main,
                                                int64_t max_steps, int64_t global_step);

// Validation images over the training modules (they share the UNet, VAE and text encoder) with
// the base model's scheduler config and the trained prediction type.
Validation make_validation(const TrainConfig& c, bool is_main, const TrainingModels& m,
                           const tokenizer::CLIPTokenizer& tokenizer,
                           const io::JsonConfig& scheduler_config, uint64_t seed, EMAModel* ema,
                           io::EventWriter* tensorboard);

// What updates the weights: AdamW (under ZeRO-1 over this rank's parameters only), the LR
// schedule (in optimizer steps), the EMA (rank 0 alone: the others never use it), the fp16 grad
// scaler (accelerate's GradScaler; bf16 and fp32 need none) and the generator of every draw.
struct Optimization {
    std::unique_ptr<AdamW> optimizer;
    std::unique_ptr<LRSchedule> schedule;
    std::unique_ptr<EMAModel> ema;
    std::unique_ptr<GradScaler> scaler;
    at::Generator generator;
};

Optimization make_optimization(const TrainConfig& c, DataParallel& dp,
                               const torch::OrderedDict<std::string, torch::Tensor>& params,
                               const StepPlan& plan, torch::ScalarType weight_dtype, uint64_t seed);

}  // namespace t2i::training
