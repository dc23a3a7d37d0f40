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
#include <csignal>
#include <random>

#include "data/loader.h"
#include "io/json_config.h"
#include "models/lora.h"
#include "pipeline/model_dir.h"
#include "pipeline/single_file.h"
#include "training/checkpoint.h"
#include "training/data_parallel.h"
#include "training/divergence.h"
#include "training/feature_cache.h"
#include "training/loss.h"
#include "training/optimizer.h"
#include "training/progress.h"
#include "training/train_setup.h"
#include "util/autocast.h"
#include "util/device.h"
#include "util/grad_scaler.h"
#include "util/log.h"

namespace t2i::training {

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

// Final pipeline folder (pipeline/model_dir): the trained (EMA) UNet, the base model's other
// components copied unchanged (original precision), the scheduler config with the effective
// prediction_type. Only entries t2i may write (io::OutputFolder) are replaced; NaN weights are
// never saved.
void save_final_model(const TrainConfig& c, io::OutputFolder& out,
                      const pipeline::ModelFolder& base, const models::UNet2DConditionModel& unet,
                      const io::JsonConfig& scheduler_config, const std::string& prediction_type) {
    check_finite(unet->named_parameters(), "the trained UNet");
    auto sched               = scheduler_config.json();
    sched["prediction_type"] = prediction_type;
    pipeline::save_pipeline_folder(out, base, unet, sched, c.variant.value_or(""));
}

// The LoRA script's output: StableDiffusionPipeline.save_lora_weights(output_dir,
// unet_lora_layers) = OUT/pytorch_lora_weights.safetensors, fp32, keys "unet.<module>.lora_A.
// weight" / "lora_B.weight". Never NaN.
// --save_single_file: also the kohya / A1111 layout (what ComfyUI and A1111 load) as
// OUT/<name of OUT>.safetensors.
void save_lora_weights(const TrainConfig& c, io::OutputFolder& out,
                       const torch::OrderedDict<std::string, torch::Tensor>& params) {
    check_finite(params, "the trained LoRA");
    out.claim(kLoraWeightsName);
    io::save_safetensors(out.file(kLoraWeightsName), models::lora_state_dict_for_saving(params));
    if (!c.save_single_file) return;
    const std::string name = single_file_name(c);
    out.claim(name);
    io::save_safetensors(out.file(name),
                         models::to_kohya(models::lora_file_from_parameters(params)));
    log_info("saved the LoRA in kohya / A1111 layout to %s", out.file(name).c_str());
}

// train-lora: rank-r LoRA on the UNet's attention projections (models/lora.h), initialized from
// the run's seed (its own stream, apart from the training draws).
torch::OrderedDict<std::string, torch::Tensor> add_lora(const TrainConfig& c,
                                                        TrainingModels& models, uint64_t seed) {
    auto generator = at::make_generator<at::CPUGeneratorImpl>(data::mix_seed(seed, 0x4c6f5241));
    return models::add_trainable_lora(models.unet, c.rank, generator);
}

// What every optimizer step works with, set up once by train(): the models, the optimization
// state, the processes, the loader, the loss flags and the UNet's parameters in order.
struct StepContext {
    const TrainConfig& c;
    TrainingModels& models;
    Optimization& opt;
    DataParallel& dp;
    data::DataLoader& loader;
    const FeatureCache& cache;  // --cache_latents / --cache_text_encoder_outputs
    StepProfile& profile;       // --profile
    LossConfig loss;
    int64_t accumulation;  // GA
    torch::Device device;
    torch::OrderedDict<std::string, torch::Tensor> params;
    std::vector<torch::Tensor> param_list;  // the same tensors, in order
};

// One micro-batch: this rank's draws, forward under autocast, the loss divided by GA (and
// weighted by the rank's share of the step's samples), backward through the grad scaler.
// Returns the unscaled loss times the share, for the step's mean, as a device tensor.
torch::Tensor micro_step(StepContext& s, const data::Batch& batch, const StepDraws& draws) {
    auto& m = s.models;
    // From pinned memory on a GPU (the loader pins its batches): no host stop.
    StepInputs in;
    if (!s.cache.has_latents())
        in.pixel_values = batch.pixel_values.to(s.device, m.weight_dtype, /*non_blocking=*/true);
    if (!s.cache.has_text()) in.input_ids = batch.input_ids.to(s.device, /*non_blocking=*/true);
    s.cache.fill(batch, s.device, &in);
    in.profile = &s.profile;
    StepOutputs out;
    {
        AutocastGuard autocast(s.device, m.weight_dtype);  // no-op for fp32
        out = compute_step(m, in, draws, s.loss);
    }
    // accelerate divides by GA; with several ranks each loss is also weighted by the rank's
    // share of the step's samples (the sum over ranks is the mean over all).
    const double share = s.dp.loss_share(batch);
    auto loss          = out.loss / static_cast<double>(s.accumulation);
    if (s.dp.active()) loss = loss * share;
    s.opt.scaler->scale(loss).backward();  // fp16 scales the loss (GradScaler); others pass
    s.profile.mark(StepProfile::kBackward);
    return out.loss.detach().to(torch::kFloat64) * share;
}

// The micro-batches of one optimizer step (accelerator.accumulate): GA of them, fewer at the end
// of an epoch, where accelerate syncs too.
struct Accumulated {
    torch::Tensor loss_sum;  // device float64: the sum of the micro-batch losses (x share)
    int64_t samples = 0;     // of this rank
    int64_t epoch   = 0;
    bool epoch_done = false;  // this step consumed the epoch's last batch
};

Accumulated accumulate_gradients(StepContext& s) {
    const auto& c = s.c;
    Accumulated a;
    a.epoch       = s.loader.position().epoch;
    a.loss_sum    = torch::zeros({}, torch::dtype(torch::kFloat64).device(s.device));
    int64_t micro = 0;
    while (micro < s.accumulation) {
        auto batch = s.loader.next();
        if (!batch) {
            if (micro > 0) break;  // end of epoch: sync with what was accumulated
            continue;              // the next call starts the next epoch
        }
        a.epoch               = batch->epoch;
        a.epoch_done          = s.loader.position().batch >= s.loader.batches_per_epoch();
        const bool last_micro = micro + 1 == s.accumulation || a.epoch_done;
        const int64_t n       = batch->size();
        // One process: the draws of this batch. Several: the draws of the step's global batch
        // (the same generator state on every rank), of which this rank uses its rows.
        // The batch's pixel size: its bucket's (--enable_bucket, --resolution W,H), else the
        // --resolution square.
        const std::vector<int64_t> pixel_shape{
            s.dp.active() ? batch->global_size : n, 3,
            batch->height > 0 ? batch->height : c.resolution.height,
            batch->width > 0 ? batch->width : c.resolution.width};
        auto draws = draw_step_randoms(latent_shape(s.models.vae->config, pixel_shape),
                                       s.models.noise_scheduler.config().num_train_timesteps,
                                       s.opt.generator, s.loss, s.device.is_cuda());
        if (last_micro) s.dp.before_last_backward();
        ++micro;
        if (n == 0) {  // a rank past the end of the epoch: no samples, zero gradient share
            if (a.epoch_done) break;
            continue;
        }
        draws = s.dp.local_draws(draws, *batch);  // this rank's rows
        s.profile.mark(StepProfile::kData);
        a.loss_sum.add_(micro_step(s, *batch, draws));
        a.samples += n;
        if (a.epoch_done) break;  // accelerate syncs at the end of the dataloader
    }
    return a;
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

StepResult optimizer_step(StepContext& s, const Accumulated& a, int64_t global_step) {
    auto& o = s.opt;
    StepResult r;
    r.samples     = a.samples;
    r.stop_signal = g_stop_signal.load() != 0;
    // Several processes: the loss goes through a CPU all-reduce with the sample count.
    r.loss_sum = s.dp.active() ? a.loss_sum.item<double>() : 0.0;
    s.dp.sync_gradients(r.loss_sum, r.samples, r.stop_signal, global_step);
    s.profile.mark(StepProfile::kSync);
    auto& scaler = *o.scaler;
    if (scaler.is_enabled()) scaler.unscale_(s.param_list);
    r.grad_norm = clip_and_read(s.param_list, s.c.max_grad_norm, a.loss_sum, s.dp.active(), scaler,
                                r.loss_sum);
    r.lr        = o.schedule->get_lr();
    o.optimizer->set_lr(r.lr);
    r.finite = DivergenceGuard::finite(r.loss_sum, r.grad_norm, scaler.is_enabled());
    // An fp16 step with inf/nan gradients is skipped, and so is the LR step (accelerate).
    if (r.finite && scaler.step([&] { o.optimizer->step(); }, s.param_list)) o.schedule->step();
    scaler.update();
    o.optimizer->zero_grad();
    s.dp.after_optimizer_step(s.param_list);  // ZeRO-1: owners broadcast their parameters
    s.profile.mark(StepProfile::kOptimizer);
    if (o.ema && r.finite) o.ema->step(s.params);
    s.profile.mark(StepProfile::kEma);
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
    const auto model_folder     = pipeline::ModelFolder::open(c.pretrained_model_name_or_path, "",
                                                              c.single_file_config.value_or(""));
    const auto scheduler_config = model_folder.scheduler_config();
    DataParallel dp(c, world, device);            // one process, or the torchrun world
    const uint64_t seed = dp.shared_seed(seed0);  // every rank draws from rank 0's seed
    warn_ineffective_flags(c, dp);

    // 1. Tokenizer and data first, so a bad column or folder fails before the models load; then
    //    the output folder.
    auto tokenizer = model_folder.tokenizer();
    auto dataset   = std::make_shared<const data::CaptionDataset>(
        data::CaptionDataset::open(dataset_config(c, seed), tokenizer));
    dp.check_dataset_size(dataset->size());          // else the ranks disagree on steps per epoch
    const auto buckets = plan_buckets(c, *dataset);  // --enable_bucket: from image headers
    if (buckets) dp.check_dataset_size(buckets->images());  // readable on every rank alike
    std::unique_ptr<io::OutputFolder> out = prepare_output(c, dp, *dataset);

    // 2. Scheduler and models: the frozen VAE and text encoder in the weight dtype, the UNet in
    //    fp32, the prediction type decided once. Then (t2i) the cached latents and text encoder
    //    outputs, and the loader (which decodes no image when the latents are cached).
    auto models              = load_models(c, model_folder, scheduler_config, tokenizer, device);
    const FeatureCache cache = build_feature_cache(c, dp, *dataset, models, models.weight_dtype,
                                                   out.get(), device, buckets.get());
    release_cached_encoders(c, cache, models);
    data::DataLoader loader(dataset, loader_config(c, seed, device, dp, cache, buckets));

    // 3. Step accounting as the script; 4. optimizer, LR schedule, EMA, grad scaler, generator.
    const StepPlan plan = plan_steps(c, loader.batches_per_epoch(), dp.world_size());
    // train-lora: the UNet frozen, rank-r adapters on its attention projections are what trains.
    const auto params = c.lora ? add_lora(c, models, seed) : models.unet->named_parameters();
    auto opt          = make_optimization(c, dp, params, plan, models.weight_dtype, seed);
    const TrainingState state{models.unet,   opt.ema.get(), *opt.optimizer, opt.generator,
                              *opt.schedule, *opt.scaler,   loader};

    // 5. Resume: weights, optimizer, EMA, LR step, generator and the exact next batch.
    const int64_t global_start =
        c.resume_from_checkpoint ? resume_training(c, dp, state, dataset->size()) : 0;
    int64_t global_step = global_start;
    StepProfile profile(c.profile, device);
    StepContext step{
        c,      models, opt, dp, loader, cache, profile, loss_config(c), plan.accumulation,
        device, params, {}};
    for (const auto& p : step.params) step.param_list.push_back(p.value());
    // Identical initial weights everywhere (DDP broadcasts rank 0's module state), then the
    // gradient hooks.
    dp.broadcast_and_hook(step.param_list, c.ddp_bucket_cap_mb);
    log_plan(c, plan, dataset->size(), loader.batches_per_epoch(), dp.world_size(), seed);

    // TensorBoard, progress bar, validation over the training modules (rank 0); the guard that
    // skips steps whose loss is not finite and stops the run after a few.
    auto tensorboard    = open_tensorboard(c, dp.is_main(), global_step);
    auto progress       = open_progress(c, dp.is_main(), plan.max_steps, global_step);
    Validation validate = make_validation(c, dp.is_main(), models, tokenizer, scheduler_config,
                                          seed, opt.ema.get(), tensorboard.get());
    DivergenceGuard divergence(c, out.get());
    auto save = [&] {                                         // collective under ZeRO-1
        if (!divergence.may_checkpoint(global_step)) return;  // every rank agrees
        const auto path = save_training_state(c, dp, out.get(), state, global_step);
        if (path.empty()) return;  // not rank 0
        divergence.checkpoint_written(global_step);
        progress->message("saved " + path);
    };

    // 6. The loop: one iteration = one optimizer step of GA micro-batches.
    std::vector<double> losses;  // for the end-of-run summary
    while (global_step < plan.max_steps) {
        const auto t0 = std::chrono::steady_clock::now();
        profile.start();
        const auto micro   = accumulate_gradients(step);                // forward, loss, backward
        const auto updated = optimizer_step(step, micro, global_step);  // never with a NaN
        ++global_step;
        const double loss = updated.loss_sum / double(plan.accumulation);
        divergence.after_step(global_step, updated.finite, loss, updated.grad_norm);
        const double dt =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        losses.push_back(loss);
        report_step(progress.get(), tensorboard.get(),
                    {global_step, micro.epoch, loss, updated.lr, updated.grad_norm, dt,
                     updated.samples / dt, double(opt.optimizer->state_bytes()) / (1 << 20),
                     dp.comm_wait_seconds(), peak_device_memory_mb(device), profile.report()});
        profile.mark(StepProfile::kLog);  // reported with the next step

        // Once in a while: validation images (per epoch as the original, and per step).
        if (micro.epoch_done && micro.epoch % c.validation_epochs == 0)
            validate(global_step, micro.epoch);
        else if (c.validation_steps > 0 && global_step % c.validation_steps == 0)
            validate(global_step, global_step);

        // Once in a while: checkpoint. A signal or --stop_after_steps ends the run after one.
        const bool stop = updated.stop_signal ||
                          (c.stop_after_steps && global_step - global_start >= *c.stop_after_steps);
        if (global_step % c.checkpointing_steps == 0 || (stop && global_step < plan.max_steps))
            save();
        if (stop && global_step < plan.max_steps) {
            divergence.finish(/*stopping=*/true);
            if (progress) progress->finish();
            log_warn(
                "stopped at step %lld (%s); continue with: t2i train <same flags> "
                "--resume_from_checkpoint latest",
                (long long)global_step, updated.stop_signal ? "signal" : "--stop_after_steps");
            return TrainResult::kInterrupted;
        }
    }
    if (progress) progress->finish();
    log_loss_summary(losses);
    if (loader.skipped() > 0)
        log_warn("skipped %lld unreadable samples", (long long)loader.skipped());

    // 7. Save (rank 0): EMA weights into the UNet, then the pipeline folder.
    divergence.finish(/*stopping=*/false);  // throws after a non-finite last step
    if (!dp.is_main()) return TrainResult::kFinished;
    if (opt.ema) opt.ema->copy_to(step.params);
    if (c.lora)
        save_lora_weights(c, *out, step.params);
    else
        save_final_model(c, *out, model_folder, models.unet, scheduler_config,
                         models.prediction_type);
    log_info("saved the trained model to %s", c.output_dir.c_str());
    if (c.save_single_file && !c.lora) {  // from the folder just written: the two agree
        const std::string name = single_file_name(c);
        out->claim(name);
        pipeline::save_single_file(pipeline::ModelFolder::open(out->path()), out->file(name),
                                   /*half=*/false);
        log_info("saved the model as one file to %s", out->file(name).c_str());
    }
    return TrainResult::kFinished;
}

}  // namespace t2i::training
