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
#include "training/train_setup.h"
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
        out = compute_step(m, pixels, ids, draws, loss_cfg);
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
    Validation validate{is_main,
                        c,
                        {unet, vae, models.text_encoder, tokenizer},
                        scheduler_config,
                        prediction_type,
                        seed,
                        models.weight_dtype,
                        ema.get(),
                        tensorboard.get()};

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
                          (c.stop_after_steps && global_step - global_start >= *c.stop_after_steps);
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
