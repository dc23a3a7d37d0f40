// Implements: training/train_setup.h.
#include "training/train_setup.h"

#include <filesystem>
#include <set>
#include <thread>

#include "io/file_util.h"
#include "models/weights.h"
#include "training/checkpoint.h"
#include "util/device.h"
#include "util/log.h"
#include "util/torch_compat.h"

namespace t2i::training {

namespace fs = std::filesystem;

torch::ScalarType weight_dtype_of(const TrainConfig& c) {
    // validate() checked the value; unset = "no" (accelerate's default without a config).
    return parse_dtype(c.mixed_precision.value_or("no"), "--mixed_precision");
}

data::DatasetConfig dataset_config(const TrainConfig& c, uint64_t seed) {
    data::DatasetConfig d;
    d.dataset_name                = c.dataset_name.value_or("");
    d.train_data_dir              = c.dataset_name ? "" : c.train_data_dir.value_or("");
    d.image_column                = c.image_column;
    d.caption_column              = c.caption_column;
    d.max_train_samples           = c.max_train_samples.value_or(-1);
    d.seed                        = seed;
    d.transform.resolution        = c.resolution.width;  // the square path (W,H: buckets)
    d.transform.center_crop       = c.center_crop;
    d.transform.random_flip       = c.random_flip;
    d.transform.interpolation     = data::parse_interpolation_mode(c.image_interpolation_mode);
    d.text_clean                  = tokenizer::parse_clean_mode(c.text_clean);
    d.allow_paths_outside_dataset = c.allow_paths_outside_dataset;
    d.captions.dropout_rate       = c.proportion_empty_prompts.value_or(c.caption_dropout_rate);
    d.captions.shuffle            = c.shuffle_caption;
    d.captions.keep_tokens        = c.keep_tokens;
    return d;
}

LossConfig loss_config(const TrainConfig& c) {
    LossConfig l;
    l.prediction_type           = c.prediction_type.value_or("");
    l.noise_offset              = c.noise_offset;
    l.input_perturbation        = c.input_perturbation;
    l.snr_gamma                 = c.snr_gamma.value_or(0.0);
    l.dream_training            = c.dream_training;
    l.dream_detail_preservation = c.dream_detail_preservation;
    return l;
}

models::UNet2DConditionModel load_trainable_unet(const pipeline::ModelFolder& folder,
                                                 const TrainConfig& c, torch::Device device) {
    pipeline::LoadOptions o;
    o.device = device;
    try {
        return folder.load_unet(o);
    } catch (const std::exception&) {
        if (!c.variant || folder.single_file) throw;
        o.variant = *c.variant;
        return folder.load_unet(o);
    }
}

torch::Device setup_threads_and_device(const TrainConfig& c, const dist::WorldInfo& world) {
    set_num_threads(c.num_threads > 0
                        ? static_cast<int>(c.num_threads)
                        : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) /
                                          world.local_world_size));
    const torch::Device device = [&] {
        try {
            return resolve_device(c.device, world.distributed() ? world.local_rank : 0);
        } catch (const DeviceError& e) {
            throw FlagError(e.what());
        }
    }();
    if (device.is_cpu() && c.mixed_precision == "fp16")
        throw FlagError(
            "--mixed_precision fp16 needs a CUDA device (--device cuda); on CPU use bf16");
    return device;
}

void warn_ineffective_flags(const TrainConfig& c, const DataParallel& dp) {
    if (!dp.is_main()) return;
    if (c.lr_scheduler == "constant" && c.lr_warmup_steps > 0 && c.lr_warmup_steps_given)
        log_warn(
            "--lr_warmup_steps %lld is ignored by --lr_scheduler constant (as in diffusers); "
            "use constant_with_warmup to warm up",
            (long long)c.lr_warmup_steps);
    if ((c.offload_ema || c.foreach_ema) && !c.use_ema)
        log_warn("--offload_ema / --foreach_ema have no effect without --use_ema");
    const TrainConfig defaults;
    if (!c.enable_bucket &&
        (c.min_bucket_reso != defaults.min_bucket_reso ||
         c.max_bucket_reso != defaults.max_bucket_reso ||
         c.bucket_reso_steps != defaults.bucket_reso_steps || c.bucket_no_upscale))
        log_warn(
            "--min_bucket_reso / --max_bucket_reso / --bucket_reso_steps / --bucket_no_upscale "
            "have no effect without --enable_bucket");
    if (c.enable_bucket && c.bucket_no_upscale &&
        (c.min_bucket_reso != defaults.min_bucket_reso ||
         c.max_bucket_reso != defaults.max_bucket_reso))
        log_warn(
            "--min_bucket_reso / --max_bucket_reso are ignored with --bucket_no_upscale: each "
            "bucket comes from its image's size (as kohya)");
    if (c.zero_stage == 1 && !dp.active())
        log_warn("--zero_stage 1 has no effect with one process");
}

data::LoaderConfig loader_config(const TrainConfig& c, uint64_t seed, torch::Device device,
                                 const DataParallel& dp, const FeatureCache& cache,
                                 std::shared_ptr<const data::BucketPlan> buckets) {
    data::LoaderConfig lc;
    lc.batch_size       = c.train_batch_size;
    lc.num_workers      = static_cast<int>(c.dataloader_num_workers);
    lc.seed             = seed;
    lc.skip_bad_samples = c.skip_bad_samples;
    lc.pin_memory       = device.is_cuda();
    lc.rank             = dp.rank();
    lc.world_size       = dp.world_size();
    lc.decode_images    = !cache.has_latents();
    lc.bad_samples      = cache.bad_samples;
    lc.buckets          = std::move(buckets);
    return lc;
}

std::shared_ptr<const data::BucketPlan> plan_buckets(const TrainConfig& c,
                                                     const data::CaptionDataset& dataset) {
    // --resolution W,H without --enable_bucket is the plan of one bucket, W x H.
    if (!c.enable_bucket && c.resolution.square()) return nullptr;
    data::BucketConfig bc;
    bc.width      = c.resolution.width;
    bc.height     = c.resolution.height;
    bc.single     = !c.enable_bucket;
    bc.min_reso   = c.min_bucket_reso;
    bc.max_reso   = c.max_bucket_reso;
    bc.reso_steps = c.bucket_reso_steps;
    bc.no_upscale = c.bucket_no_upscale;
    return std::make_shared<const data::BucketPlan>(
        data::plan_buckets(dataset, bc, c.skip_bad_samples));
}

std::string single_file_name(const TrainConfig& c) {
    const fs::path dir = fs::absolute(c.output_dir).lexically_normal();
    std::string name   = dir.filename().string();
    if (name.empty()) name = dir.parent_path().filename().string();  // "out/"
    return (name.empty() ? std::string("model") : name) + ".safetensors";
}

std::unique_ptr<io::OutputFolder> prepare_output(const TrainConfig& c, DataParallel& dp,
                                                 const data::CaptionDataset& dataset) {
    std::unique_ptr<io::OutputFolder> out;
    const std::string logs_entry = fs::path(c.logging_dir).lexically_normal().begin()->string();
    const bool cache_to_disk     = c.cache_latents_to_disk || c.cache_text_encoder_outputs_to_disk;
    dist::main_process_first(
        dp.group(),
        [&] {
            if (!dp.is_main()) return;
            // A dataset folder is walked for images: writing inside it would feed the run's own
            // outputs back as data. A record file lists its images; its folder may hold outputs.
            const std::string data_folder =
                io::dir_exists(dataset.source()) ? dataset.root() : std::string();
            std::set<std::string> names = {"model_index.json",  "unet",       "vae",
                                           "text_encoder",      "tokenizer",  "scheduler",
                                           "train_config.json", "validation", logs_entry};
            if (cache_to_disk) names.insert("cache");
            if (c.lora) names.insert(kLoraWeightsName);
            if (c.save_single_file) names.insert(single_file_name(c));
            out = open_output_dir(c.output_dir, c.pretrained_model_name_or_path, data_folder,
                                  c.resume_from_checkpoint.has_value(), names);
            for (const auto& name :
                 {std::string("train_config.json"), logs_entry, std::string("validation")})
                out->claim(name);
            io::write_text_atomic(out->file("train_config.json"),
                                  io::dump_json(c.to_json(), 2) + "\n");
        },
        "preparing --output_dir");
    return out;
}

TrainingModels load_models(const TrainConfig& c, const pipeline::ModelFolder& folder,
                           const io::JsonConfig& scheduler_config,
                           const tokenizer::CLIPTokenizer& tokenizer, torch::Device device) {
    TrainingModels m;
    m.noise_scheduler =
        schedulers::DDPMScheduler(schedulers::SchedulerConfig::from_json(scheduler_config));
    m.weight_dtype = weight_dtype_of(c);
    pipeline::LoadOptions frozen;
    frozen.variant = c.variant.value_or("");
    frozen.dtype   = m.weight_dtype;
    frozen.device  = device;
    m.text_encoder = folder.load_text_encoder(frozen);
    m.vae          = folder.load_vae(frozen);
    for (auto& p : m.text_encoder->parameters()) p.requires_grad_(false);
    for (auto& p : m.vae->parameters()) p.requires_grad_(false);
    // The frozen VAE's convolutions run at full image resolution, where oneDNN's channels-last
    // CPU kernels are faster (encode of 2 x 256x256 on 2 cores: 88 -> 78 ms, bench_train.sh's
    // vae_s); the same values up to float rounding (tests/test_vae.cpp).
    if (device.is_cpu()) models::to_channels_last(*m.vae);
    m.unet = load_trainable_unet(folder, c, device);
    // train-lora: the base UNet is frozen in the weight dtype, as the LoRA script casts it;
    // the LoRA parameters added later stay fp32 (the script keeps them fp32 only for fp16).
    if (c.lora) m.unet->to(m.weight_dtype);
    pipeline::check_components_fit(m.unet->config, m.vae->config, m.text_encoder->config(),
                                   tokenizer, folder.base);
    m.unet->train();
    if (c.gradient_checkpointing) m.unet->enable_gradient_checkpointing(true);
    if (c.allow_tf32 && device.is_cuda()) {
        at::globalContext().setAllowTF32CuBLAS(true);
        at::globalContext().setAllowTF32CuDNN(true);
    }
    const int64_t scale = m.vae->config.vae_scale_factor();
    if (c.resolution.width % scale != 0 || c.resolution.height % scale != 0)
        throw FlagError("--resolution " + c.resolution.str() +
                        ": each side must be a multiple of the VAE's scale factor " +
                        std::to_string(scale));
    if (c.enable_bucket && c.bucket_reso_steps % m.vae->config.vae_scale_factor() != 0)
        throw FlagError("--bucket_reso_steps " + std::to_string(c.bucket_reso_steps) +
                        " is not a multiple of the VAE's scale factor " +
                        std::to_string(m.vae->config.vae_scale_factor()));
    m.prediction_type = effective_prediction_type(m.noise_scheduler, loss_config(c));
    if (c.dream_training && m.prediction_type != "epsilon")
        throw FlagError("--dream_training supports epsilon prediction only; the model predicts " +
                        m.prediction_type);
    return m;
}

StepPlan plan_steps(const TrainConfig& c, int64_t batches_per_epoch, int world_size) {
    StepPlan p;
    p.accumulation      = c.gradient_accumulation_steps;
    p.steps_per_epoch   = (batches_per_epoch + p.accumulation - 1) / p.accumulation;
    int64_t epoch_steps = 0;
    if (__builtin_mul_overflow(c.num_train_epochs, p.steps_per_epoch, &epoch_steps))
        throw FlagError("--num_train_epochs " + std::to_string(c.num_train_epochs) + " x " +
                        std::to_string(p.steps_per_epoch) +
                        " steps per epoch is too many steps; give --max_train_steps");
    p.max_steps  = c.max_train_steps.value_or(epoch_steps);
    p.num_epochs = (p.max_steps + p.steps_per_epoch - 1) / p.steps_per_epoch;
    p.lr         = c.learning_rate *
           (c.scale_lr ? double(p.accumulation * c.train_batch_size * world_size) : 1.0);
    return p;
}

std::unique_ptr<io::EventWriter> open_tensorboard(const TrainConfig& c, bool is_main,
                                                  int64_t global_step) {
    if (!is_main || (c.report_to != "tensorboard" && c.report_to != "all")) return nullptr;
    // accelerate's TensorBoardTracker: logging_dir/<init_trackers' project name>/.
    auto tensorboard = std::make_unique<io::EventWriter>(c.output_dir + "/" + c.logging_dir + "/" +
                                                         c.tracker_project_name);
    auto config_json = c.to_json();
    config_json.erase("validation_prompts");  // as the original's init_trackers
    tensorboard->add_text(c.tracker_project_name, "```\n" + io::dump_json(config_json, 2) + "\n```",
                          global_step);
    return tensorboard;
}

void log_plan(const TrainConfig& c, const StepPlan& plan, int64_t samples,
              int64_t batches_per_epoch, int world_size, uint64_t seed) {
    log_info(
        "%lld samples, %lld batches/epoch, %lld epochs, %lld optimizer steps, batch %lld x "
        "accumulation %lld x %d process(es), seed %llu",
        (long long)samples, (long long)batches_per_epoch, (long long)plan.num_epochs,
        (long long)plan.max_steps, (long long)c.train_batch_size, (long long)plan.accumulation,
        world_size, (unsigned long long)seed);
}

std::unique_ptr<ProgressReporter> open_progress(const TrainConfig& c, bool is_main,
                                                int64_t max_steps, int64_t global_step) {
    if (!is_main) return nullptr;
    const std::string metrics =
        c.report_to == "none" ? "" : c.output_dir + "/" + c.logging_dir + "/metrics.jsonl";
    return std::make_unique<ProgressReporter>(max_steps, global_step, c.logging_steps, metrics);
}

Validation make_validation(const TrainConfig& c, bool is_main, const TrainingModels& m,
                           const tokenizer::CLIPTokenizer& tokenizer,
                           const io::JsonConfig& scheduler_config, uint64_t seed, EMAModel* ema,
                           io::EventWriter* tensorboard) {
    return Validation{is_main,
                      c,
                      {m.unet, m.vae, m.text_encoder, tokenizer},
                      scheduler_config,
                      m.prediction_type,
                      seed,
                      m.weight_dtype,
                      ema,
                      tensorboard};
}

Optimization make_optimization(const TrainConfig& c, DataParallel& dp,
                               const torch::OrderedDict<std::string, torch::Tensor>& params,
                               const StepPlan& plan, torch::ScalarType weight_dtype,
                               uint64_t seed) {
    Optimization o;
    o.optimizer =
        make_adamw(dp.optimizer_parameters(params),
                   {plan.lr, c.adam_beta1, c.adam_beta2, c.adam_weight_decay, c.adam_epsilon},
                   c.use_8bit_adam);
    LRScheduleConfig sc;
    sc.name         = c.lr_scheduler;
    sc.warmup_steps = c.lr_warmup_steps;
    sc.total_steps  = plan.max_steps;
    o.schedule      = std::make_unique<LRSchedule>(sc, plan.lr);
    if (c.use_ema && dp.is_main()) {
        EMAConfig ec;
        ec.foreach = c.foreach_ema;
        ec.offload = c.offload_ema;
        o.ema      = std::make_unique<EMAModel>(params, ec);
    }
    GradScalerOptions scaler_options;
    scaler_options.enabled = weight_dtype == torch::kFloat16;
    o.scaler               = std::make_unique<GradScaler>(scaler_options);
    o.generator            = at::make_generator<at::CPUGeneratorImpl>(seed);
    return o;
}

}  // namespace t2i::training
