// Implements: TrainConfig, every flag of diffusers' examples/text_to_image/train_text_to_image.py
// (same names, same defaults; REFERENCE.md section 1) plus t2i's additions, declared ONCE in
// visit_flags(). That one table drives parsing, --help, validation messages and the saved
// train_config.json (gemma.cpp's visitor pattern).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace t2i::training {

// A bad flag value or combination; the CLI reports it with exit code 2.
struct FlagError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// --resolution: N (the script's N x N square) or W,H (kohya's "width,height": every image is
// resized to cover W x H and cropped to it; with --enable_bucket, buckets of about W x H pixels).
struct Resolution {
    int64_t width = 512, height = 512;
    Resolution() = default;
    Resolution(int64_t side) : width(side), height(side) {}  // NOLINT: `resolution = 512`
    Resolution(int64_t w, int64_t h) : width(w), height(h) {}
    bool square() const { return width == height; }
    // "512" or "512,768"; parse() takes both and throws std::invalid_argument for anything else.
    std::string str() const;
    static Resolution parse(const std::string& text);
    static const char* metavar() { return "N|W,H"; }
    bool operator==(const Resolution& o) const { return width == o.width && height == o.height; }
};
// train_config.json: an integer for a square (as the script's), "W,H" otherwise.
void to_json(nlohmann::json& j, const Resolution& r);

struct TrainConfig {
    // Model
    std::string pretrained_model_name_or_path;
    std::optional<std::string> single_file_config;  // --config: a single file's diffusers folder
    std::optional<std::string> revision;
    std::optional<std::string> variant;
    std::optional<std::string> non_ema_revision;
    std::optional<std::string> prediction_type;
    bool enable_xformers_memory_efficient_attention = false;
    // Data
    std::optional<std::string> dataset_name;
    std::optional<std::string> dataset_config_name;
    std::optional<std::string> train_data_dir;
    std::string image_column   = "image";
    std::string caption_column = "text";
    std::optional<int64_t> max_train_samples;
    std::optional<std::string> cache_dir;
    int64_t dataloader_num_workers = 0;
    // Preprocessing
    Resolution resolution                = 512;
    bool center_crop                     = false;
    bool random_flip                     = false;
    std::string image_interpolation_mode = "lanczos";
    // Training loop
    int64_t train_batch_size = 16;
    int64_t num_train_epochs = 100;
    std::optional<int64_t> max_train_steps;
    int64_t gradient_accumulation_steps = 1;
    bool gradient_checkpointing         = false;
    std::optional<int64_t> seed;
    double input_perturbation = 0.0;
    double noise_offset       = 0.0;
    std::optional<double> snr_gamma;
    bool dream_training              = false;
    double dream_detail_preservation = 1.0;
    bool allow_tf32                  = false;
    // Optimizer
    double learning_rate     = 1e-4;
    bool scale_lr            = false;
    bool use_8bit_adam       = false;
    double adam_beta1        = 0.9;
    double adam_beta2        = 0.999;
    double adam_weight_decay = 1e-2;
    double adam_epsilon      = 1e-8;
    double max_grad_norm     = 1.0;
    // LR schedule
    std::string lr_scheduler = "constant";
    int64_t lr_warmup_steps  = 500;
    // EMA
    bool use_ema     = false;
    bool offload_ema = false;
    bool foreach_ema = false;
    // Mixed precision / hardware
    std::optional<std::string> mixed_precision;
    int64_t local_rank = -1;
    // Checkpointing
    std::string output_dir      = "sd-model-finetuned";
    int64_t checkpointing_steps = 500;
    std::optional<int64_t> checkpoints_total_limit;
    std::optional<std::string> resume_from_checkpoint;
    // Validation
    std::vector<std::string> validation_prompts;
    int64_t validation_epochs = 5;
    // train_text_to_image_lora.py (`t2i train-lora`; `lora` is the command, not a flag)
    bool lora    = false;
    int64_t rank = 4;
    std::optional<std::string> validation_prompt;
    int64_t num_validation_images = 4;
    int64_t validation_steps      = 0;  // t2i: 0 = off
    // Logging / Hub
    std::string report_to            = "tensorboard";
    std::string logging_dir          = "logs";
    std::string tracker_project_name = "text2image-fine-tune";
    bool push_to_hub                 = false;
    std::optional<std::string> hub_token;
    std::optional<std::string> hub_model_id;
    // t2i additions
    int64_t num_threads              = 0;  // 0 = all cores
    std::string device               = "cpu";
    bool skip_bad_samples            = false;
    bool allow_paths_outside_dataset = false;
    int64_t logging_steps            = 1;
    std::string text_clean           = "ftfy";
    // t2i: kohya's caption options (data/caption_dataset.h CaptionOptions)
    double caption_dropout_rate = 0.0;
    std::optional<double> proportion_empty_prompts;  // diffusers' SDXL script's name for it
    bool shuffle_caption = false;
    int64_t keep_tokens  = 0;
    // Not a flag: false when the command line did not give --lr_warmup_steps (then the
    // "ignored by constant" warning is not said about the default).
    bool lr_warmup_steps_given = true;
    std::optional<int64_t> stop_after_steps;
    // t2i: several processes (dist/process_group.h)
    std::string ddp_backend  = "";  // "" = gloo on CPU, nccl on CUDA
    double ddp_timeout       = 1800;
    double ddp_bucket_cap_mb = 25;
    int64_t zero_stage       = 0;
    // t2i: cached VAE latents and text encoder outputs (kohya's flag names)
    bool cache_latents                      = false;
    bool cache_latents_to_disk              = false;
    bool cache_text_encoder_outputs         = false;
    bool cache_text_encoder_outputs_to_disk = false;
    // t2i: aspect-ratio buckets (kohya's flag names and defaults; data/buckets.h)
    bool enable_bucket        = false;
    int64_t min_bucket_reso   = 256;
    int64_t max_bucket_reso   = 1024;
    int64_t bucket_reso_steps = 64;
    bool bucket_no_upscale    = false;
    bool profile              = false;  // t2i: per-stage step times
    bool save_single_file     = false;  // t2i: also OUTPUT_DIR/<name>.safetensors

    // Rejects bad values and impossible combinations before any work starts; each message names
    // the flag, the accepted values and what was given.
    void validate() const;
    void validate_buckets() const;  // the --enable_bucket flags
    // `t2i train-lora`: the LoRA script's defaults (output_dir, validation_epochs).
    static TrainConfig lora_defaults();
    // Every flag with its effective value (the saved train_config.json).
    nlohmann::json to_json() const;
    // The prompts of the validation images: --validation_prompts, then --num_validation_images
    // copies of --validation_prompt (the LoRA / SDXL scripts' form; one generator runs through
    // them in sequence, as those scripts' loop does).
    std::vector<std::string> validation_images() const;
};

// Whether flag `name` belongs to `t2i train` (lora false) or `t2i train-lora` (lora true): the
// LoRA script has no EMA, DREAM, input perturbation, tracker name or --validation_prompts, and
// adds --rank. Both take its --validation_prompt and --num_validation_images.
bool flag_in_command(const std::string& name, bool lora);

// Calls `visit(field, name, help)` for every flag in declaration order. `field` is a reference to
// the member: std::string, int64_t, double, bool (switch), std::optional<...> or
// std::vector<std::string> (one or more values).
template <typename Config, typename Visitor>
void visit_flags(Config& c, Visitor&& v) {
    // Model
    v(c.pretrained_model_name_or_path, "pretrained_model_name_or_path",
      "Local folder of a model in diffusers layout (model_index.json, unet/, vae/, text_encoder/, "
      "tokenizer/, scheduler/), or one original-layout SD 1.x / 2.x .safetensors file (then "
      "give --config). Required. Hub ids are not downloaded: t2i works offline.");
    v(c.single_file_config, "config",
      "t2i: with a single .safetensors file as --pretrained_model_name_or_path, a diffusers "
      "folder of the same model family (e.g. stable-diffusion-v1-5) whose configs, tokenizer and "
      "scheduler are used, as diffusers' from_single_file(config=...).");
    v(c.revision, "revision", "Hub revision. Not supported (t2i reads local folders).");
    v(c.variant, "variant",
      "Weight file variant of the model files, e.g. fp16 (*.fp16.safetensors).");
    v(c.non_ema_revision, "non_ema_revision", "Hub revision of the non-EMA UNet. Not supported.");
    v(c.prediction_type, "prediction_type",
      "epsilon or v_prediction. Default: the model scheduler's prediction_type. t2i also writes it "
      "into the saved scheduler config (the original does not).");
    v(c.enable_xformers_memory_efficient_attention, "enable_xformers_memory_efficient_attention",
      "Accepted: t2i's default attention is already libtorch's fused scaled-dot-product "
      "attention (flash / memory-efficient kernels on CUDA), what xformers gave.");
    // Data
    v(c.dataset_name, "dataset_name",
      "A local dataset: a downloaded Hub dataset repository (Parquet shards, split train), a "
      "folder written by datasets' save_to_disk (Arrow), an imagefolder (metadata.jsonl/.csv, "
      "or images with .txt/.caption sidecars) or a .json/.jsonl file of records. Hub ids are "
      "not downloaded.");
    v(c.dataset_config_name, "dataset_config_name", "Config of a Hub dataset. Not supported.");
    v(c.train_data_dir, "train_data_dir",
      "Folder of training images with metadata.jsonl / metadata.csv (file_name + caption column) "
      "or .txt / .caption sidecar captions. Ignored when --dataset_name is given.");
    v(c.image_column, "image_column", "Column holding the image (path).");
    v(c.caption_column, "caption_column", "Column holding the caption (a string or a list).");
    v(c.max_train_samples, "max_train_samples",
      "Use only the first N samples after a seeded shuffle.");
    v(c.cache_dir, "cache_dir", "Hub cache folder. Unused (no downloads).");
    v(c.dataloader_num_workers, "dataloader_num_workers",
      "Threads that decode and transform images (0 = in the training thread).");
    // Preprocessing
    v(c.resolution, "resolution",
      "Images are resized (shorter side) and cropped to this square size. t2i (kohya): W,H "
      "(width,height) resizes each image to cover W x H and crops it to that (--center_crop or "
      "random); with --enable_bucket, buckets hold at most W x H pixels.");
    v(c.center_crop, "center_crop", "Center crop instead of a random crop.");
    v(c.random_flip, "random_flip", "Flip images horizontally with probability 0.5.");
    v(c.image_interpolation_mode, "image_interpolation_mode",
      "Resize filter: nearest, nearest_exact, bilinear, bicubic, box, hamming, lanczos.");
    // Training loop
    v(c.train_batch_size, "train_batch_size", "Batch size per device.");
    v(c.num_train_epochs, "num_train_epochs",
      "Epochs (recomputed when --max_train_steps is given).");
    v(c.max_train_steps, "max_train_steps", "Total optimizer steps; overrides --num_train_epochs.");
    v(c.gradient_accumulation_steps, "gradient_accumulation_steps",
      "Micro-batches per optimizer step.");
    v(c.gradient_checkpointing, "gradient_checkpointing",
      "Recompute activations in backward: less memory, same gradients, slower.");
    v(c.seed, "seed", "Seed for reproducible training (default: random).");
    v(c.input_perturbation, "input_perturbation", "Input perturbation scale (recommended 0.1).");
    v(c.noise_offset, "noise_offset", "Offset noise scale.");
    v(c.snr_gamma, "snr_gamma", "Min-SNR-gamma loss weighting (recommended 5.0).");
    v(c.dream_training, "dream_training", "DREAM training (one extra UNet forward per step).");
    v(c.dream_detail_preservation, "dream_detail_preservation", "DREAM exponent p.");
    v(c.allow_tf32, "allow_tf32", "Allow TF32 matmuls on Ampere+ GPUs.");
    // Optimizer
    v(c.learning_rate, "learning_rate", "Peak learning rate.");
    v(c.scale_lr, "scale_lr", "Multiply the LR by accumulation steps x batch size x processes.");
    v(c.use_8bit_adam, "use_8bit_adam",
      "Block-wise 8-bit AdamW state (t2i's own; ~2 bytes of state per parameter).");
    v(c.adam_beta1, "adam_beta1", "AdamW beta1.");
    v(c.adam_beta2, "adam_beta2", "AdamW beta2.");
    v(c.adam_weight_decay, "adam_weight_decay", "Decoupled weight decay (all UNet parameters).");
    v(c.adam_epsilon, "adam_epsilon", "AdamW epsilon.");
    v(c.max_grad_norm, "max_grad_norm", "Clip the gradient norm to this value.");
    // LR schedule
    v(c.lr_scheduler, "lr_scheduler",
      "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial.");
    v(c.lr_warmup_steps, "lr_warmup_steps",
      "Warmup steps (ignored by 'constant', with a warning).");
    // EMA
    v(c.use_ema, "use_ema",
      "Keep an exponential moving average of the UNet; it is the saved model.");
    v(c.offload_ema, "offload_ema", "Keep the EMA weights in CPU memory.");
    v(c.foreach_ema, "foreach_ema", "Fused multi-tensor EMA update.");
    // Mixed precision / hardware
    v(c.mixed_precision, "mixed_precision",
      "no, fp16 or bf16: autocast for the UNet, VAE and text encoder cast to that dtype.");
    v(c.local_rank, "local_rank", "Set by launchers; LOCAL_RANK from the environment wins.");
    // Checkpointing
    v(c.output_dir, "output_dir", "Where checkpoints and the final model are written.");
    v(c.checkpointing_steps, "checkpointing_steps",
      "Write checkpoint-<step>/ every N optimizer steps.");
    v(c.checkpoints_total_limit, "checkpoints_total_limit", "Keep at most N checkpoints.");
    v(c.resume_from_checkpoint, "resume_from_checkpoint",
      "latest, checkpoint-N (inside --output_dir) or a path to a checkpoint folder.");
    // Validation
    v(c.validation_prompts, "validation_prompts", "Prompts for validation images (one or more).");
    v(c.validation_epochs, "validation_epochs", "Validate every N epochs.");
    v(c.validation_steps, "validation_steps",
      "t2i: also validate every N optimizer steps (0 = only per --validation_epochs).");
    v(c.validation_prompt, "validation_prompt",
      "The prompt of --num_validation_images validation images (the LoRA and SDXL scripts' "
      "flag; train adds them to --validation_prompts).");
    v(c.num_validation_images, "num_validation_images",
      "Validation images of --validation_prompt, one generator in sequence.");
    v(c.rank, "rank", "train-lora: the dimension r of the LoRA update matrices (lora_alpha = r).");
    // Logging / Hub
    v(c.report_to, "report_to", "tensorboard, jsonl or none (wandb / comet_ml need the network).");
    v(c.logging_dir, "logging_dir", "Log folder, relative to --output_dir.");
    v(c.tracker_project_name, "tracker_project_name", "Run name in the logs.");
    v(c.push_to_hub, "push_to_hub", "Not supported (t2i works offline).");
    v(c.hub_token, "hub_token", "Not supported (t2i works offline).");
    v(c.hub_model_id, "hub_model_id", "Not supported (t2i works offline).");
    // t2i additions
    v(c.num_threads, "num_threads",
      "t2i: CPU threads for tensor math (0 = all cores, divided among the processes that a "
      "launcher started on this machine).");
    v(c.device, "device", "t2i: cpu or cuda[:N].");
    v(c.skip_bad_samples, "skip_bad_samples",
      "t2i: skip unreadable images (and report how many) instead of stopping.");
    v(c.allow_paths_outside_dataset, "allow_paths_outside_dataset",
      "t2i: let metadata name images outside the dataset folder (absolute paths, '..', links "
      "that leave it); by default such a path is an error.");
    v(c.logging_steps, "logging_steps",
      "t2i: one log line every N optimizer steps off a terminal.");
    v(c.caption_dropout_rate, "caption_dropout_rate",
      "t2i (kohya): train with an empty caption with this probability, so the model also learns "
      "the unconditional prediction that classifier-free guidance uses.");
    v(c.proportion_empty_prompts, "proportion_empty_prompts",
      "diffusers' SDXL script's name for --caption_dropout_rate.");
    v(c.shuffle_caption, "shuffle_caption",
      "t2i (kohya): shuffle a caption's comma-separated tags each time it is drawn.");
    v(c.keep_tokens, "keep_tokens",
      "t2i (kohya): with --shuffle_caption, keep the first N tags in place.");
    v(c.text_clean, "text_clean",
      "t2i: caption cleaning like transformers with ftfy installed (ftfy) or without (basic).");
    v(c.stop_after_steps, "stop_after_steps",
      "t2i: stop after this many optimizer steps in this process, as Ctrl-C does (checkpoint, "
      "then resume with --resume_from_checkpoint latest); for time-limited job slots.");
    v(c.ddp_backend, "ddp_backend",
      "t2i: c10d backend with several processes: gloo or nccl (default: nccl on CUDA, else "
      "gloo).");
    v(c.ddp_timeout, "ddp_timeout",
      "t2i: seconds a collective (or the rendezvous) may wait for the other ranks before the "
      "run stops, naming the rank that died or hangs (accelerate's InitProcessGroupKwargs).");
    v(c.ddp_bucket_cap_mb, "ddp_bucket_cap_mb",
      "t2i: gradient bucket size in MB; buckets are all-reduced while backward goes on (DDP's "
      "bucket_cap_mb).");
    v(c.zero_stage, "zero_stage",
      "t2i: 1 = shard the AdamW / 8-bit AdamW state across processes (ZeRO stage 1); 0 = off.");
    v(c.cache_latents, "cache_latents",
      "t2i: encode every image (both flips with --random_flip) once with the frozen VAE before "
      "training and keep the posterior's mean and std; each step still samples from it. Needs "
      "--center_crop unless every image already has the --resolution size.");
    v(c.cache_latents_to_disk, "cache_latents_to_disk",
      "t2i: --cache_latents, kept in --output_dir/cache/latents.safetensors for the next run "
      "and a resume; rebuilt for images, VAE weights or transform flags that changed.");
    v(c.cache_text_encoder_outputs, "cache_text_encoder_outputs",
      "t2i: encode every caption (each alternative of a list) once with the frozen text "
      "encoder before training.");
    v(c.cache_text_encoder_outputs_to_disk, "cache_text_encoder_outputs_to_disk",
      "t2i: --cache_text_encoder_outputs, kept in --output_dir/cache/"
      "text_encoder_outputs.safetensors for the next run and a resume.");
    v(c.enable_bucket, "enable_bucket",
      "t2i (kohya's flag): aspect-ratio buckets: each image is resized (aspect kept) to cover "
      "the bucket of the nearest aspect ratio and cropped to it (--center_crop or random), "
      "instead of the --resolution square; a batch holds one bucket. Buckets: sides multiples "
      "of --bucket_reso_steps in [--min_bucket_reso, --max_bucket_reso] of at most "
      "--resolution^2 (or W x H) pixels (kohya's make_bucket_resolutions).");
    v(c.min_bucket_reso, "min_bucket_reso",
      "t2i (kohya): the smallest bucket side with --enable_bucket; a multiple of "
      "--bucket_reso_steps, <= --resolution (the shorter of W,H).");
    v(c.max_bucket_reso, "max_bucket_reso",
      "t2i (kohya): the largest bucket side with --enable_bucket; a multiple of "
      "--bucket_reso_steps, >= --resolution (the longer of W,H).");
    v(c.bucket_reso_steps, "bucket_reso_steps",
      "t2i (kohya): bucket sides are multiples of this (a multiple of 8, the VAE's scale; kohya "
      "asks 64 for SD 1.x / 2.x, the UNet's total downsampling).");
    v(c.bucket_no_upscale, "bucket_no_upscale",
      "t2i (kohya): with --enable_bucket, no image is enlarged: an image above --resolution^2 (W x "
      "H) "
      "pixels is scaled down to that area, a smaller one keeps its size, and its bucket is its "
      "size rounded down to --bucket_reso_steps (--min/--max_bucket_reso are ignored).");
    v(c.save_single_file, "save_single_file",
      "t2i: after the final model folder, also write OUTPUT_DIR/<name of OUTPUT_DIR>.safetensors, "
      "the whole pipeline as one original-layout (LDM) checkpoint in fp32 (as diffusers' "
      "convert_diffusers_to_original_stable_diffusion.py writes; `t2i convert --half` makes "
      "an fp16 copy). train-lora: the LoRA in kohya / A1111 layout there, for ComfyUI and "
      "A1111.");
    v(c.profile, "profile",
      "t2i: where each step's time goes, in metrics.jsonl as \"profile\": data, vae, text, "
      "unet_fwd, bwd, sync, optim, ema, log (the step before) seconds. Waits for the GPU at "
      "each stage, so GPU steps get slower.");
}

}  // namespace t2i::training
