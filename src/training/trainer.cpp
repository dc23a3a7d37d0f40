// Implements: training/trainer.h. Mirrors the body of diffusers'
// examples/text_to_image/train_text_to_image.py main(): load, prepare data, then the loop; the
// numbered stages follow the script. Differences (REFERENCE.md section 5): resume continues with
// the exact next batch, checkpoints are written whole, the saved VAE / text encoder keep their
// original precision and the saved scheduler gets the effective prediction_type.
// Several processes (torchrun's environment; training/data_parallel.h) train as accelerate's DDP:
// rank r takes batches r, r + W, ... (data/loader.h), every random draw is made for the whole
// step's W x B samples from the shared seed and each rank uses its slice (so W ranks x batch B
// train exactly like one process with batch W x B; accelerate instead gives every rank the
// same noise), gradients are summed over ranks weighted by each rank's share of the samples,
// and rank 0 alone writes checkpoints, logs, validation images and the model.
#include "training/trainer.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <random>
#include <thread>

#include "data/loader.h"
#include "io/file_util.h"
#include "io/json_config.h"
#include "io/tensorboard.h"
#include "pipeline/model_dir.h"
#include "pipeline/text_to_image.h"
#include "schedulers/ddpm.h"
#include "tokenizer/clip_tokenizer.h"
#include "training/checkpoint.h"
#include "training/data_parallel.h"
#include "training/divergence.h"
#include "training/ema.h"
#include "training/loss.h"
#include "training/lr_schedule.h"
#include "training/optimizer.h"
#include "training/progress.h"
#include "training/validation.h"
#include "util/autocast.h"
#include "util/device.h"
#include "util/grad_scaler.h"
#include "util/log.h"
#include "util/torch_compat.h"

namespace t2i::training {

namespace fs = std::filesystem;

namespace {

std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
    g_stop_signal = sig;
    std::signal(sig, SIG_DFL);  // a second Ctrl-C stops immediately
}

// Ctrl-C / SIGTERM finish the current optimizer step, write a checkpoint and return.
struct StopSignals {
    StopSignals() {
        g_stop_signal = 0;
        std::signal(SIGINT, on_stop_signal);
        std::signal(SIGTERM, on_stop_signal);
    }
    ~StopSignals() {
        std::signal(SIGINT, SIG_DFL);
        std::signal(SIGTERM, SIG_DFL);
    }
};

torch::ScalarType weight_dtype_of(const TrainConfig& c) {
    if (c.mixed_precision == "fp16") return torch::kFloat16;
    if (c.mixed_precision == "bf16") return torch::kBFloat16;
    return torch::kFloat32;
}

data::DatasetConfig dataset_config(const TrainConfig& c, uint64_t seed) {
    data::DatasetConfig d;
    d.dataset_name                = c.dataset_name.value_or("");
    d.train_data_dir              = c.dataset_name ? "" : c.train_data_dir.value_or("");
    d.image_column                = c.image_column;
    d.caption_column              = c.caption_column;
    d.max_train_samples           = c.max_train_samples.value_or(-1);
    d.seed                        = seed;
    d.transform.resolution        = c.resolution;
    d.transform.center_crop       = c.center_crop;
    d.transform.random_flip       = c.random_flip;
    d.transform.interpolation     = data::parse_interpolation_mode(c.image_interpolation_mode);
    d.text_clean                  = tokenizer::parse_clean_mode(c.text_clean);
    d.allow_paths_outside_dataset = c.allow_paths_outside_dataset;
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

// The trained UNet comes without --variant, as in the script; a folder with only variant files
// falls back to them.
models::UNet2DConditionModel load_trainable_unet(const std::string& dir, const TrainConfig& c,
                                                 torch::Device device) {
    pipeline::LoadOptions o;
    o.device = device;
    try {
        return pipeline::load_unet(dir, o);
    } catch (const std::exception&) {
        if (!c.variant) throw;
        o.variant = *c.variant;
        return pipeline::load_unet(dir, o);
    }
}

// Final pipeline folder (pipeline/model_dir): the trained (EMA) UNet, the base model's other
// components copied unchanged (original precision), the scheduler config with the effective
// prediction_type. Only entries t2i may write (io::OutputFolder) are replaced; NaN weights are
// never saved.
void save_final_model(const TrainConfig& c, io::OutputFolder& out,
                      const pipeline::ModelFolder& base, const models::UNet2DConditionModel& unet,
                      const io::JsonConfig& scheduler_config, const std::string& prediction_type) {
    std::vector<std::pair<std::string, torch::Tensor>> weights;
    for (const auto& p : unet->named_parameters()) weights.emplace_back(p.key(), p.value());
    check_finite(weights, "the trained UNet");
    auto sched               = scheduler_config.json();
    sched["prediction_type"] = prediction_type;
    pipeline::save_pipeline_folder(out, base, unet, sched, c.variant.value_or(""));
}

}  // namespace

namespace {

// --num_threads 0: all cores, shared among the processes a launcher started on this machine. One
// GPU per process: a plain --device cuda means cuda:LOCAL_RANK, as accelerate does.
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

// Flags that do nothing in this combination: said once, as the script (or accelerate) would.
void warn_ineffective_flags(const TrainConfig& c, const DataParallel& dp) {
    if (!dp.is_main()) return;
    if (c.lr_scheduler == "constant" && c.lr_warmup_steps > 0)
        log_warn(
            "--lr_warmup_steps %lld is ignored by --lr_scheduler constant (as in diffusers); "
            "use constant_with_warmup to warm up",
            (long long)c.lr_warmup_steps);
    if ((c.offload_ema || c.foreach_ema) && !c.use_ema)
        log_warn("--offload_ema / --foreach_ema have no effect without --use_ema");
    if (c.zero_stage == 1 && !dp.active())
        log_warn("--zero_stage 1 has no effect with one process");
}

data::LoaderConfig loader_config(const TrainConfig& c, uint64_t seed, torch::Device device,
                                 const DataParallel& dp) {
    data::LoaderConfig lc;
    lc.batch_size       = c.train_batch_size;
    lc.num_workers      = static_cast<int>(c.dataloader_num_workers);
    lc.seed             = seed;
    lc.skip_bad_samples = c.skip_bad_samples;
    lc.pin_memory       = device.is_cuda();
    lc.rank             = dp.rank();
    lc.world_size       = dp.world_size();
    return lc;
}

// The output folder (rank 0 writes it, the others wait): locked for this run, never the inputs,
// no file t2i did not write in its way, no earlier run's work overwritten. Null on other ranks.
std::unique_ptr<io::OutputFolder> prepare_output(const TrainConfig& c, DataParallel& dp,
                                                 const data::CaptionDataset& dataset) {
    std::unique_ptr<io::OutputFolder> out;
    const std::string logs_entry = fs::path(c.logging_dir).lexically_normal().begin()->string();
    dist::main_process_first(
        dp.group(),
        [&] {
            if (!dp.is_main()) return;
            // A dataset folder is walked for images: writing inside it would feed the run's own
            // outputs back as data. A record file lists its images; its folder may hold outputs.
            const std::string data_folder =
                io::dir_exists(dataset.source()) ? dataset.root() : std::string();
            out = open_output_dir(c.output_dir, c.pretrained_model_name_or_path, data_folder,
                                  c.resume_from_checkpoint.has_value(),
                                  {"model_index.json", "unet", "vae", "text_encoder", "tokenizer",
                                   "scheduler", "train_config.json", "validation", logs_entry});
            for (const auto& name :
                 {std::string("train_config.json"), logs_entry, std::string("validation")})
                out->claim(name);
            io::write_text_atomic(out->file("train_config.json"),
                                  io::dump_json(c.to_json(), 2) + "\n");
        },
        "preparing --output_dir");
    return out;
}

// What a run computes with: the frozen VAE and text encoder in the weight dtype, the trained UNet
// in fp32, the noise scheduler and the prediction type, decided (and checked against DREAM) once.
struct TrainingModels {
    models::UNet2DConditionModel unet{nullptr};
    models::AutoencoderKL vae{nullptr};
    models::CLIPTextModel text_encoder{nullptr};
    schedulers::DDPMScheduler noise_scheduler;
    std::string prediction_type;
    torch::ScalarType weight_dtype = torch::kFloat32;
};

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
    m.text_encoder = pipeline::load_text_encoder(folder.component("text_encoder"), frozen);
    m.vae          = pipeline::load_vae(folder.component("vae"), frozen);
    for (auto& p : m.text_encoder->parameters()) p.requires_grad_(false);
    for (auto& p : m.vae->parameters()) p.requires_grad_(false);
    m.unet = load_trainable_unet(folder.unet_dir, c, device);
    pipeline::check_components_fit(m.unet->config, m.vae->config, m.text_encoder->config(),
                                   tokenizer, folder.base);
    m.unet->train();
    if (c.gradient_checkpointing) m.unet->enable_gradient_checkpointing(true);
    if (c.allow_tf32 && device.is_cuda()) {
        at::globalContext().setAllowTF32CuBLAS(true);
        at::globalContext().setAllowTF32CuDNN(true);
    }
    if (c.resolution % m.vae->config.vae_scale_factor() != 0)
        throw FlagError("--resolution " + std::to_string(c.resolution) +
                        " is not a multiple of "
                        "the VAE's scale factor " +
                        std::to_string(m.vae->config.vae_scale_factor()));
    m.prediction_type = effective_prediction_type(m.noise_scheduler, loss_config(c));
    if (c.dream_training && m.prediction_type != "epsilon")
        throw FlagError("--dream_training supports epsilon prediction only; the model predicts " +
                        m.prediction_type);
    return m;
}

// Step accounting as the script (per process, in optimizer steps): epochs are recomputed from
// max_train_steps; --scale_lr counts the processes.
struct StepPlan {
    int64_t accumulation    = 1;  // GA
    int64_t steps_per_epoch = 0;
    int64_t max_steps       = 0;
    int64_t num_epochs      = 0;
    double lr               = 0;
};

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

// TensorBoard event files (the original's tags), with the run's config as text first, as the
// original's init_trackers. Rank 0, --report_to tensorboard | all; else null.
std::unique_ptr<io::EventWriter> open_tensorboard(const TrainConfig& c, bool is_main,
                                                  int64_t global_step) {
    if (!is_main || (c.report_to != "tensorboard" && c.report_to != "all")) return nullptr;
    auto tensorboard = std::make_unique<io::EventWriter>(c.output_dir + "/" + c.logging_dir);
    auto config_json = c.to_json();
    config_json.erase("validation_prompts");  // as the original's init_trackers
    tensorboard->add_text(c.tracker_project_name, "```\n" + io::dump_json(config_json, 2) + "\n```",
                          global_step);
    return tensorboard;
}

// One micro-batch: this rank's draws, forward under autocast, the loss divided by GA (and
// weighted by the rank's share of the step's samples), backward through the grad scaler.
// Returns the unscaled loss times the share, for the step's mean, as a device tensor.
torch::Tensor micro_step(TrainingModels& m, const data::Batch& batch, const StepDraws& draws,
                         const LossConfig& loss_cfg, DataParallel& dp, GradScaler& scaler,
                         int64_t accumulation, torch::Device device) {
    // From pinned memory on a GPU (the loader pins its batches): no host stop.
    auto pixels = batch.pixel_values.to(device, m.weight_dtype, /*non_blocking=*/true);
    auto ids    = batch.input_ids.to(device, /*non_blocking=*/true);
    StepOutputs out;
    {
        AutocastGuard autocast(device, m.weight_dtype);  // no-op for fp32
        out = compute_step(m.unet, m.vae, m.text_encoder, m.noise_scheduler, pixels, ids, draws,
                           loss_cfg);
    }
    // accelerate divides by GA; with several ranks each loss is also weighted by the rank's
    // share of the step's samples (the sum over ranks is the mean over all).
    const double share = dp.loss_share(batch);
    auto loss          = out.loss / static_cast<double>(accumulation);
    if (dp.active()) loss = loss * share;
    scaler.scale(loss).backward();  // fp16 scales the loss (GradScaler); others pass through
    return out.loss.detach().to(torch::kFloat64) * share;
}

// The step's one read of device values: the clipped gradients' norm, the loss sum (one process;
// several read theirs for the all-reduce) and the fp16 overflow flag, together (on a GPU each
// separate read would wait for the device once more).
double clip_and_read(const std::vector<torch::Tensor>& params, double max_grad_norm,
                     const torch::Tensor& loss_acc, bool distributed, GradScaler& scaler,
                     double& loss_sum) {
    std::vector<torch::Tensor> parts{
        clip_grad_norm(params, max_grad_norm).to(torch::kFloat64).reshape({1})};
    if (!distributed) parts.push_back(loss_acc.reshape({1}).to(parts[0].device()));
    if (scaler.is_enabled())
        parts.push_back(scaler.found_inf_tensor().to(parts[0].device(), torch::kFloat64));
    const auto host = torch::cat(parts).to(torch::kCPU);
    const auto* v   = host.data_ptr<double>();
    if (!distributed) loss_sum = v[1];
    if (scaler.is_enabled()) scaler.set_found_inf(v[parts.size() - 1] != 0);
    return v[0];
}

void log_loss_summary(const std::vector<double>& losses) {
    if (losses.size() < 2) return;
    const size_t n = std::max<size_t>(1, losses.size() / 10);
    double first = 0, last = 0;
    for (size_t i = 0; i < n; ++i)
        first += losses[i] / n, last += losses[losses.size() - 1 - i] / n;
    log_info("train_loss: mean of the first %zu steps %.4f -> last %zu steps %.4f", n, first, n,
             last);
}

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

// One optimizer step after the micro-batches, as accelerate runs it: gradients (and the loss and
// sample count) summed over ranks, unscaled (fp16), clipped; AdamW at the schedule's LR unless
// the loss or a gradient is not finite (training/divergence.h) or fp16 overflowed, then the LR
// and EMA steps. A signal on any rank stops all of them at this step.
struct StepResult {
    double loss_sum  = 0;  // sum of the micro-batch losses (mean over ranks)
    double grad_norm = 0;  // before clipping
    double lr        = 0;  // the LR this update used
    bool finite      = true;
    bool stop_signal = false;
    int64_t samples  = 0;  // over all ranks
};

StepResult optimizer_step(const TrainConfig& c, DataParallel& dp, Optimization& o,
                          const std::vector<torch::Tensor>& param_list,
                          const torch::OrderedDict<std::string, torch::Tensor>& params,
                          const torch::Tensor& loss_acc, int64_t samples, int64_t global_step) {
    StepResult r;
    r.samples     = samples;
    r.stop_signal = g_stop_signal.load() != 0;
    // Several processes: the loss goes through a CPU all-reduce with the sample count.
    r.loss_sum = dp.active() ? loss_acc.item<double>() : 0.0;
    dp.sync_gradients(r.loss_sum, r.samples, r.stop_signal, global_step);
    auto& scaler = *o.scaler;
    if (scaler.is_enabled()) scaler.unscale_(param_list);
    r.grad_norm =
        clip_and_read(param_list, c.max_grad_norm, loss_acc, dp.active(), scaler, r.loss_sum);
    r.lr = o.schedule->get_lr();
    o.optimizer->set_lr(r.lr);
    r.finite = DivergenceGuard::finite(r.loss_sum, r.grad_norm, scaler.is_enabled());
    // An fp16 step with inf/nan gradients is skipped, and so is the LR step (accelerate).
    if (r.finite && scaler.step([&] { o.optimizer->step(); }, param_list)) o.schedule->step();
    scaler.update();
    o.optimizer->zero_grad();
    dp.after_optimizer_step(param_list);  // ZeRO-1: owners broadcast their parameters
    if (o.ema && r.finite) o.ema->step(params);
    return r;
}

}  // namespace

TrainResult train(const TrainConfig& c) {
    // 0. Setup: validate everything before any work, threads, seed, device, the process group.
    c.validate();
    StopSignals signals;  // from here on, Ctrl-C / SIGTERM end the run after a step + checkpoint
    const auto world           = dist::WorldInfo::from_env();
    const torch::Device device = setup_threads_and_device(c, world);
    const uint64_t seed0       = c.seed ? static_cast<uint64_t>(*c.seed) : std::random_device{}();
    // A complete Stable Diffusion folder, and its scheduler config, read once for the run.
    const auto model_folder     = pipeline::ModelFolder::open(c.pretrained_model_name_or_path);
    const auto scheduler_config = model_folder.scheduler_config();
    DataParallel dp(c, world, device);  // one process, or the torchrun world
    const int W         = dp.world_size();
    const bool is_main  = dp.is_main();
    const uint64_t seed = dp.shared_seed(seed0);  // every rank draws from rank 0's seed
    warn_ineffective_flags(c, dp);

    // 1. Tokenizer and data first, so a bad column or folder fails before the models load; then
    //    the output folder.
    auto tokenizer = model_folder.tokenizer();
    auto dataset   = std::make_shared<const data::CaptionDataset>(
        data::CaptionDataset::open(dataset_config(c, seed), tokenizer));
    data::DataLoader loader(dataset, loader_config(c, seed, device, dp));
    dp.check_dataset_size(dataset->size());  // else the ranks disagree on steps per epoch
    std::unique_ptr<io::OutputFolder> out = prepare_output(c, dp, *dataset);

    // 2. Scheduler and models. VAE and text encoder are frozen and cast to the weight dtype; the
    //    UNet trains in fp32.
    auto models               = load_models(c, model_folder, scheduler_config, tokenizer, device);
    auto& unet                = models.unet;
    auto& vae                 = models.vae;
    const LossConfig loss_cfg = loss_config(c);
    const std::string& prediction_type = models.prediction_type;

    // 3. Step accounting as the script.
    const StepPlan plan      = plan_steps(c, loader.batches_per_epoch(), W);
    const int64_t GA         = plan.accumulation;
    const int64_t max_steps  = plan.max_steps;
    const int64_t num_epochs = plan.num_epochs;

    // 4. Optimizer, LR schedule, EMA, grad scaler, the generator of every draw.
    const auto params = unet->named_parameters();
    auto opt          = make_optimization(c, dp, params, plan, models.weight_dtype, seed);
    auto& optimizer   = opt.optimizer;
    auto& schedule    = *opt.schedule;
    auto& ema         = opt.ema;
    auto& scaler      = *opt.scaler;
    auto& generator   = opt.generator;

    // 5. Resume: weights, optimizer, EMA, LR step, generator and the exact next batch
    //    (training/checkpoint).
    const int64_t global_start =
        c.resume_from_checkpoint
            ? resume_training(c, dp,
                              {unet, ema.get(), *optimizer, generator, schedule, scaler, loader},
                              dataset->size())
            : 0;
    int64_t global_step = global_start;
    std::vector<torch::Tensor> param_list;
    for (const auto& p : params) param_list.push_back(p.value());
    // Identical initial weights everywhere (DDP broadcasts rank 0's module state), then the
    // gradient hooks.
    dp.broadcast_and_hook(param_list, c.ddp_bucket_cap_mb);
    log_info(
        "%lld samples, %lld batches/epoch, %lld epochs, %lld optimizer steps, batch %lld x "
        "accumulation %lld x %d process(es), seed %llu",
        (long long)dataset->size(), (long long)loader.batches_per_epoch(), (long long)num_epochs,
        (long long)max_steps, (long long)c.train_batch_size, (long long)GA, W,
        (unsigned long long)seed);

    // TensorBoard (rank 0) and the pipeline used for validation images, sharing the training
    // modules.
    auto tensorboard = open_tensorboard(c, is_main, global_step);
    pipeline::StableDiffusionPipeline validation_pipe(unet, vae, models.text_encoder, tokenizer);
    // TensorBoard step: the epoch for per-epoch validation (as the original), else the step.
    auto validate = [&](int64_t step, int64_t tensorboard_step) {
        if (c.validation_prompts.empty() || !is_main) return;
        log_validation(c, validation_pipe, scheduler_config, ema.get(), prediction_type, seed, step,
                       tensorboard_step, models.weight_dtype, tensorboard.get());
    };

    const std::string metrics =
        c.report_to == "none" ? "" : c.output_dir + "/" + c.logging_dir + "/metrics.jsonl";
    std::unique_ptr<ProgressReporter> progress;
    if (is_main)
        progress =
            std::make_unique<ProgressReporter>(max_steps, global_step, c.logging_steps, metrics);
    // Steps whose loss is not finite: skipped, no checkpoint, and the run stops after a few.
    DivergenceGuard divergence(c, out.get());
    // A checkpoint; collective under ZeRO-1 (the state shards are gathered on rank 0).
    auto save = [&] {
        if (!divergence.may_checkpoint(global_step)) return;  // every rank agrees
        const TensorMap optimizer_state = dp.checkpoint_optimizer_state(*optimizer);
        if (!is_main) return;
        TrainerState s;
        s.global_step   = global_step;
        s.loader        = loader.position();
        s.lr_schedule   = schedule.state();
        s.extra         = {{"skipped_samples", loader.skipped()},
                           {"grad_scaler", scaler.state_dict()},
                           {"world_size", W},
                           {"train_batch_size", c.train_batch_size}};
        s.config        = c.to_json();
        const auto path = save_checkpoint(*out, unet, ema.get(), optimizer_state, generator, s,
                                          c.checkpoints_total_limit);
        divergence.checkpoint_written(global_step);
        progress->message("saved " + path);
    };

    const int64_t start_step = global_step;
    std::vector<double> losses;  // for the end-of-run summary
    const auto pixel_shape =
        std::vector<int64_t>{0, 3, int64_t(c.resolution), int64_t(c.resolution)};
    // 6. The loop: one iteration = one optimizer step of GA micro-batches (fewer at the end of
    //    an epoch, where accelerate syncs too).
    while (global_step < max_steps) {
        const auto t0 = std::chrono::steady_clock::now();
        int64_t micro = 0, samples = 0, epoch = loader.position().epoch;
        bool epoch_done = false;  // this step consumed the epoch's last batch
        auto loss_acc   = torch::zeros({}, torch::dtype(torch::kFloat64).device(device));
        while (micro < GA) {
            auto batch = loader.next();
            if (!batch) {
                if (micro > 0) break;  // end of epoch: sync with what was accumulated
                continue;              // the next call starts the next epoch
            }
            epoch                 = batch->epoch;
            epoch_done            = loader.position().batch >= loader.batches_per_epoch();
            const bool last_micro = micro + 1 == GA || epoch_done;
            const int64_t n       = batch->size();
            // One process: the draws of this batch. Several: the draws of the step's global
            // batch (the same generator state on every rank), of which this rank uses its rows.
            auto shape = pixel_shape;
            shape[0]   = dp.active() ? batch->global_size : n;
            auto draws = draw_step_randoms(latent_shape(vae->config, shape),
                                           models.noise_scheduler.config().num_train_timesteps,
                                           generator, loss_cfg, device.is_cuda());
            if (last_micro) dp.before_last_backward();
            ++micro;
            if (n == 0) {  // a rank past the end of the epoch: no samples, zero gradient share
                if (epoch_done) break;
                continue;
            }
            draws = dp.local_draws(draws, *batch);  // this rank's rows
            loss_acc.add_(micro_step(models, *batch, draws, loss_cfg, dp, scaler, GA, device));
            samples += n;
            if (epoch_done) break;  // accelerate syncs at the end of the dataloader
        }
        // ---- optimizer step (a NaN / infinite loss or gradient never reaches the weights) ----
        const auto step =
            optimizer_step(c, dp, opt, param_list, params, loss_acc, samples, global_step);
        ++global_step;
        divergence.after_step(global_step, step.finite, step.loss_sum / double(GA), step.grad_norm);
        const double dt =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        losses.push_back(step.loss_sum / static_cast<double>(GA));
        report_step(progress.get(), tensorboard.get(),
                    {global_step, epoch, losses.back(), step.lr, step.grad_norm, dt,
                     step.samples / dt, double(optimizer->state_bytes()) / (1 << 20),
                     dp.comm_wait_seconds(), peak_device_memory_mb(device)});

        // Once in a while: validation images (per epoch as the original, and per step).
        if (epoch_done && epoch % c.validation_epochs == 0)
            validate(global_step, epoch);
        else if (c.validation_steps > 0 && global_step % c.validation_steps == 0)
            validate(global_step, global_step);

        // Once in a while: checkpoint. A signal or --stop_after_steps ends the run after one.
        const bool stop = step.stop_signal ||
                          (c.stop_after_steps && global_step - start_step >= *c.stop_after_steps);
        if (global_step % c.checkpointing_steps == 0 || (stop && global_step < max_steps)) save();
        if (stop && global_step < max_steps) {
            divergence.finish(/*stopping=*/true);
            if (progress) progress->finish();
            log_warn(
                "stopped at step %lld (%s); continue with: t2i train <same flags> "
                "--resume_from_checkpoint latest",
                (long long)global_step, step.stop_signal ? "signal" : "--stop_after_steps");
            return TrainResult::kInterrupted;
        }
    }
    if (progress) progress->finish();
    log_loss_summary(losses);
    if (loader.skipped() > 0)
        log_warn("skipped %lld unreadable samples", (long long)loader.skipped());

    // 7. Save (rank 0): EMA weights into the UNet, then the pipeline folder.
    divergence.finish(/*stopping=*/false);  // throws after a non-finite last step
    if (!is_main) return TrainResult::kFinished;
    if (ema) ema->copy_to(params);
    save_final_model(c, *out, model_folder, unet, scheduler_config, prediction_type);
    log_info("saved the trained model to %s", c.output_dir.c_str());
    return TrainResult::kFinished;
}

}  // namespace t2i::training
