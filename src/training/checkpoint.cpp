// Implements: training/checkpoint.h.
#include "training/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <regex>
#include <stdexcept>

#include "io/file_util.h"
#include "io/json_config.h"
#include "io/safetensors.h"
#include "models/lora.h"
#include "models/weights.h"
#include "pipeline/model_dir.h"
#include "training/data_parallel.h"
#include "training/train_config.h"
#include "util/log.h"

namespace t2i::training {

namespace fs = std::filesystem;

namespace {

// checkpoint-<N> with N a step count that fits in int64 (longer digit strings are not ours).
std::optional<int64_t> checkpoint_step(const std::string& name) {
    static const std::regex kName("checkpoint-([0-9]{1,18})");
    std::smatch m;
    if (!std::regex_match(name, m, kName)) return std::nullopt;
    return std::stoll(m[1]);
}

// Whether `path` is inside `root` (both canonical), or is it.
bool is_within(const fs::path& path, const fs::path& root) {
    auto r = root.begin();
    auto p = path.begin();
    for (; r != root.end() && p != path.end() && *r == *p; ++r, ++p) {
    }
    return r == root.end();
}

}  // namespace

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& output_dir) {
    std::vector<std::pair<int64_t, std::string>> out;
    if (!io::dir_exists(output_dir)) return out;
    for (const auto& e : fs::directory_iterator(output_dir)) {
        const auto step = checkpoint_step(e.path().filename().string());
        if (step && e.is_directory()) out.emplace_back(*step, e.path().string());
    }
    std::sort(out.begin(), out.end());
    return out;
}

std::string save_checkpoint(io::OutputFolder& out, const models::UNet2DConditionModel& unet,
                            const EMAModel* ema, const TensorMap& optimizer_state,
                            const at::Generator& generator, const TrainerState& state,
                            std::optional<int64_t> total_limit, bool lora) {
    const std::string step = std::to_string(state.global_step);
    const std::string name = "checkpoint-" + step;
    const auto previous    = list_checkpoints(out.path());
    const std::string last = previous.empty() ? "none" : previous.back().second;
    // A user's work is never replaced by NaN: check before anything is written.
    const auto trained = lora ? models::lora_parameters(unet) : unet->named_parameters();
    check_finite(trained, "step " + step + (lora ? ": the LoRA weights" : ": the UNet weights"));
    if (ema) check_finite(ema->shadow_map(), "step " + step + ": the EMA weights");
    out.claim(name);
    const std::string dest = out.file(name);
    const std::string tmp  = out.file("." + name + ".tmp-" + std::to_string(::getpid()));
    try {
        fs::remove_all(tmp);
        fs::create_directories(tmp);
        if (lora)  // as the LoRA script's save_model_hook: save_lora_weights
            io::save_safetensors(tmp + "/" + kLoraWeightsName,
                                 models::lora_state_dict_for_saving(trained));
        else
            pipeline::save_unet_folder(tmp + "/unet", *unet, unet->config.raw);
        if (ema) {
            const auto shadow = ema->shadow_map();
            pipeline::save_unet_folder(tmp + "/unet_ema", *unet, unet->config.raw, &shadow,
                                       ema->config_json());
        }
        io::save_safetensors(tmp + "/optimizer.safetensors", optimizer_state);
        io::save_safetensors(tmp + "/random_states.safetensors",
                             {{"generator", generator.get_state()}});
        nlohmann::json js{
            {"global_step", state.global_step},
            {"loader", {{"epoch", state.loader.epoch}, {"batch", state.loader.batch}}},
            {"lr_schedule", state.lr_schedule},
            {"extra", state.extra},
            {"config", state.config},
            {"format", "t2i-checkpoint-1"}};
        // Written last: a folder with training_state.json has everything else.
        io::write_text_atomic(tmp + "/training_state.json", io::dump_json(js, 2) + "\n");
        io::fsync_dir(tmp);
        pipeline::move_dir_into_place(tmp, dest);
    } catch (const std::exception& e) {
        std::error_code ec;
        fs::remove_all(tmp, ec);  // a failed save never leaves its half-written folder behind
        throw std::runtime_error("writing checkpoint '" + dest + "' failed: " + e.what() +
                                 "; the last complete checkpoint is " + last +
                                 " (resume from it with --resume_from_checkpoint latest)");
    }
    // Prune only now that the new checkpoint is whole; the previous newest stays until a later
    // step confirms this one (confirm_checkpoints).
    if (total_limit) prune_checkpoints(out, *total_limit + 1);
    return dest;
}

void prune_checkpoints(io::OutputFolder& out, int64_t keep) {
    std::vector<std::pair<int64_t, std::string>> ours;
    for (const auto& c : list_checkpoints(out.path()))
        if (out.owns(fs::path(c.second).filename())) ours.push_back(c);
    const int64_t excess = static_cast<int64_t>(ours.size()) - keep;
    for (int64_t i = 0; i < excess; ++i) {
        log_info("removing old checkpoint %s (--checkpoints_total_limit)", ours[i].second.c_str());
        // Rename first: a kill during the deletion must not leave a partial checkpoint-N (the
        // leftover name is swept when the folder is opened next).
        const std::string name   = fs::path(ours[i].second).filename();
        const std::string doomed = out.file("." + name + ".deleting-" + std::to_string(::getpid()));
        fs::rename(ours[i].second, doomed);
        fs::remove_all(doomed);
        out.forget(name);
    }
}

std::string quarantine_checkpoint(io::OutputFolder& out, int64_t step) {
    const std::string name      = "checkpoint-" + std::to_string(step);
    const std::string set_aside = name + "-diverged";
    if (!io::dir_exists(out.file(name)) || !out.owns(name)) return "";
    out.claim(set_aside);
    fs::rename(out.file(name), out.file(set_aside));
    io::fsync_dir(out.path());
    out.forget(name);
    return out.file(set_aside);
}

namespace {

// A folder that t2i wrote before it kept a manifest: its train_config.json is t2i's (it holds
// the flags, pretrained_model_name_or_path first), and so are the run's entries beside it and
// every checkpoint-N whose training_state.json has t2i's format tag. Adopted, so that such a run
// can be resumed; anything else stays foreign.
void adopt_earlier_t2i_output(io::OutputFolder& folder, const std::set<std::string>& names) {
    try {
        const auto config = io::read_json(folder.file("train_config.json"));
        if (!config.json().contains("pretrained_model_name_or_path")) return;
    } catch (const std::exception&) {
        return;
    }
    std::vector<std::string> adopted;
    for (const auto& name : names)
        if (fs::exists(folder.file(name))) adopted.push_back(name);
    for (const auto& [step, path] : list_checkpoints(folder.path())) {
        try {
            if (io::read_json(path + "/training_state.json").get<std::string>("format", "") ==
                "t2i-checkpoint-1")
                adopted.push_back(fs::path(path).filename());
        } catch (const std::exception&) {
        }
    }
    for (const auto& name : adopted) folder.adopt(name);
    if (!adopted.empty())
        log_info("'%s' was written by an earlier t2i (no manifest): %zu entries recorded as t2i's",
                 folder.path().c_str(), adopted.size());
}

}  // namespace

std::unique_ptr<io::OutputFolder> open_output_dir(const std::string& output_dir,
                                                  const std::string& base_model,
                                                  const std::string& dataset_root, bool resuming,
                                                  const std::set<std::string>& names) {
    const fs::path out = fs::weakly_canonical(fs::absolute(output_dir));
    for (const auto& [what, folder] :
         {std::pair<std::string, std::string>{"the base model folder", base_model},
          {"the dataset folder", dataset_root}}) {
        if (folder.empty()) continue;
        const fs::path other = fs::weakly_canonical(fs::absolute(folder));
        if (is_within(out, other))
            throw FlagError("--output_dir '" + output_dir + "' is " +
                            (out == other ? "" : "inside ") + what + " '" + folder +
                            "'; t2i writes checkpoints and the trained model there and never "
                            "writes into its inputs: choose another --output_dir");
    }
    auto folder = std::make_unique<io::OutputFolder>(output_dir);
    if (!folder->had_manifest()) adopt_earlier_t2i_output(*folder, names);
    const std::string hint =
        "t2i never replaces files it did not write: move it away or choose another --output_dir";
    folder->check_not_foreign(names, hint);
    std::vector<std::string> earlier;
    for (const auto& [step, path] : list_checkpoints(output_dir)) {
        const std::string name = fs::path(path).filename();
        folder->check_not_foreign({name}, hint);
        earlier.push_back(name);
    }
    // A finished run: its pipeline folder (t2i train) or its LoRA file (t2i train-lora).
    bool saved_model = false;
    for (const char* result : {"model_index.json", kLoraWeightsName})
        saved_model =
            saved_model || (folder->owns(result) && io::file_exists(folder->file(result)));
    if (resuming && earlier.empty() && saved_model)
        throw FlagError("--output_dir '" + output_dir +
                        "' holds a finished run's model but no checkpoint to resume from; a new "
                        "run there would overwrite it: choose another --output_dir");
    if (saved_model) earlier.push_back("a saved model");
    if (!resuming && !earlier.empty())
        throw FlagError("--output_dir '" + output_dir + "' holds the work of an earlier run (" +
                        earlier.back() + (earlier.size() > 1 ? ", " + earlier.front() : "") +
                        (earlier.size() > 2 ? ", ..." : "") +
                        "); continue it with --resume_from_checkpoint latest, or choose another "
                        "--output_dir (a new run never overwrites earlier work)");
    return folder;
}

std::optional<std::string> resolve_checkpoint(const std::string& spec,
                                              const std::string& output_dir) {
    if (spec == "latest") {
        const auto all = list_checkpoints(output_dir);
        if (all.empty()) return std::nullopt;
        return all.back().second;
    }
    // An existing path wins (the original only looks inside output_dir; t2i accepts both).
    if (io::dir_exists(spec)) return spec;
    const std::string inside = output_dir + "/" + fs::path(spec).filename().string();
    if (io::dir_exists(inside)) return inside;
    throw std::invalid_argument("--resume_from_checkpoint: checkpoint '" + spec +
                                "' does not exist (looked for '" + spec + "' and '" + inside +
                                "'); use 'latest' or a checkpoint-N folder");
}

int64_t convert_loader_batch(int64_t batch, int64_t saved_world, int64_t saved_batch, int64_t world,
                             int64_t batch_size, int64_t dataset_size, int64_t batches_per_epoch) {
    if (saved_world == world && saved_batch == batch_size) return batch;
    const int64_t seen = std::min(dataset_size, batch * saved_world * saved_batch);
    if (seen >= dataset_size) return batches_per_epoch;
    return std::min(batches_per_epoch, seen / (world * batch_size));
}

TrainerState load_checkpoint(const std::string& path, models::UNet2DConditionModel& unet,
                             EMAModel* ema, AdamW& optimizer, at::Generator& generator,
                             const OptimizerStateFilter& optimizer_filter, bool lora) {
    const std::string state_file = path + "/training_state.json";
    if (!io::file_exists(state_file))
        throw std::runtime_error("checkpoint '" + path +
                                 "' has no training_state.json: it was not "
                                 "written by t2i or is incomplete");
    TrainerState state = read_trainer_state(state_file);

    if (lora) {
        auto params = models::lora_parameters(unet);
        models::load_lora_parameters(params, path + "/" + kLoraWeightsName);
    } else {
        models::load_weights(*unet, {path + "/unet/diffusion_pytorch_model.safetensors"},
                             "checkpoint unet");
    }
    if (ema) {
        const std::string ema_dir = path + "/unet_ema";
        if (!io::dir_exists(ema_dir))
            throw std::runtime_error("checkpoint '" + path +
                                     "' has no unet_ema/ but --use_ema is "
                                     "set; resume without --use_ema or from another checkpoint");
        ema->load_shadow(io::load_safetensors(ema_dir + "/diffusion_pytorch_model.safetensors"));
        const auto ema_config = io::read_json(ema_dir + "/config.json");
        ema->load_config_json(ema_config.json(), ema_config.path());
    }
    // Views of the mapped file: the optimizer copies only the entries it keeps (under ZeRO-1
    // a process holds its own share, never the whole state).
    io::SafetensorsFile optimizer_file(path + "/optimizer.safetensors");
    TensorMap optimizer_state;
    for (const auto& info : optimizer_file.tensors())
        optimizer_state[info.name] = optimizer_file.view(info.name);
    optimizer.load_state_dict(optimizer_filter ? optimizer_filter(optimizer_state)
                                               : optimizer_state);
    const std::string rng_file = path + "/random_states.safetensors";
    const auto rng             = io::load_safetensors(rng_file);
    const auto expected        = generator.get_state();
    if (!rng.count("generator") || rng.at("generator").scalar_type() != torch::kUInt8 ||
        rng.at("generator").sizes() != expected.sizes())
        throw std::runtime_error("'" + rng_file + "' must hold 'generator', a U8 tensor of shape " +
                                 c10::str(expected.sizes()) +
                                 " (the training generator's state); the file is damaged");
    generator.set_state(rng.at("generator"));
    return state;
}

TrainerState read_trainer_state(const std::string& file) {
    const auto js = io::read_json(file);
    auto object   = [&](const char* key) {
        const auto& v = js.has(key) ? js.json().at(key) : nlohmann::json::object();
        if (!v.is_object()) js.fail(key, "must be an object, found " + io::dump_json(v));
        return io::JsonConfig(v, file + " (" + key + ")");
    };
    auto count = [&](const io::JsonConfig& j, const char* key) {
        const auto v = j.get<int64_t>(key);
        j.check_range(key, static_cast<double>(v), 0, 1e15);
        return v;
    };
    TrainerState state;
    state.global_step  = count(js, "global_step");
    const auto loader  = object("loader");
    state.loader.epoch = count(loader, "epoch");
    state.loader.batch = count(loader, "batch");
    const auto lr      = object("lr_schedule");
    state.lr_schedule  = lr.json();
    lr.get<std::string>("name");
    count(lr, "step_count");
    const auto extra = object("extra");
    state.extra      = extra.json();
    for (const char* key : {"skipped_samples", "world_size", "train_batch_size"})
        if (extra.has(key)) count(extra, key);
    if (extra.has("world_size") && extra.get<int64_t>("world_size") < 1)
        extra.fail("world_size", "must be >= 1");
    if (extra.has("train_batch_size") && extra.get<int64_t>("train_batch_size") < 1)
        extra.fail("train_batch_size", "must be >= 1");
    if (extra.has("grad_scaler")) {
        const auto& g = extra.json().at("grad_scaler");
        if (!g.is_object()) extra.fail("grad_scaler", "must be an object");
        if (!g.empty()) {
            const io::JsonConfig scaler(g, file + " (extra.grad_scaler)");
            scaler.check_range("scale", scaler.get<double>("scale"), 1e-30, 1e38);
            scaler.check_range("growth_factor", scaler.get<double>("growth_factor"), 1, 1e6);
            scaler.check_range("backoff_factor", scaler.get<double>("backoff_factor"), 1e-6, 1);
            scaler.check_range("growth_interval",
                               static_cast<double>(scaler.get<int64_t>("growth_interval")), 1, 1e9);
            count(scaler, "_growth_tracker");
        }
    }
    state.config = object("config").json();
    return state;
}

int64_t resume_training(const TrainConfig& c, DataParallel& dp, const TrainingState& t,
                        int64_t dataset_size) {
    const auto path = dp.shared_path(
        dp.is_main() ? resolve_checkpoint(*c.resume_from_checkpoint, c.output_dir) : std::nullopt,
        "resume");
    if (!path) {
        log_info("no checkpoint in '%s'; starting a new run", c.output_dir.c_str());
        return 0;
    }
    const auto state = load_checkpoint(*path, t.unet, t.ema, t.optimizer, t.generator,
                                       dp.optimizer_state_filter(), c.lora);
    t.schedule.load_state(state.lr_schedule);
    if (state.extra.contains("grad_scaler") && !state.extra["grad_scaler"].empty())
        t.scaler.load_state_dict(state.extra["grad_scaler"]);
    // The loader position counts this world's batches: convert a checkpoint written by another
    // number of processes or batch size through the samples already seen.
    const int64_t W       = dp.world_size();
    const int64_t saved_w = state.extra.value("world_size", int64_t(1));
    const int64_t saved_b = state.extra.value("train_batch_size", c.train_batch_size);
    const int64_t B       = c.train_batch_size;
    int64_t batch = convert_loader_batch(state.loader.batch, saved_w, saved_b, W, B, dataset_size,
                                         t.loader.batches_per_epoch());
    if (t.loader.bucketed()) {
        // Bucketed step batches hold W x B images of one bucket: the same W x B gives the same
        // batches; another cuts the buckets differently, so the epoch starts again.
        batch = saved_w * saved_b == W * B ? state.loader.batch : 0;
        if (batch == 0 && state.loader.batch > 0)
            log_warn(
                "the checkpoint was written by %lld process(es) x batch %lld; with "
                "--enable_bucket another processes x batch cuts the buckets into other batches, "
                "so epoch %lld starts again from its first batch",
                (long long)saved_w, (long long)saved_b, (long long)state.loader.epoch);
    }
    const int64_t seen = state.loader.batch * saved_w * saved_b;
    if (!t.loader.bucketed() && batch < t.loader.batches_per_epoch() && batch * W * B != seen)
        log_warn(
            "the checkpoint was written by %lld process(es) x batch %lld: this epoch continues at "
            "sample %lld, the checkpoint had seen %lld (%lld samples are seen again)",
            (long long)saved_w, (long long)saved_b, (long long)(batch * W * B), (long long)seen,
            (long long)(seen - batch * W * B));
    try {
        t.loader.seek(state.loader.epoch, batch);
    } catch (const std::exception& e) {
        throw std::runtime_error("checkpoint '" + *path + "/training_state.json': " + e.what() +
                                 "; was the dataset changed since the checkpoint?");
    }
    log_info("resumed from %s at step %lld", path->c_str(), (long long)state.global_step);
    return state.global_step;
}

std::string save_training_state(const TrainConfig& c, DataParallel& dp, io::OutputFolder* out,
                                const TrainingState& t, int64_t global_step) {
    const TensorMap optimizer_state = dp.checkpoint_optimizer_state(t.optimizer);
    if (!dp.is_main()) return "";
    TrainerState s;
    s.global_step = global_step;
    s.loader      = t.loader.position();
    s.lr_schedule = t.schedule.state();
    s.extra       = {{"skipped_samples", t.loader.skipped()},
                     {"grad_scaler", t.scaler.state_dict()},
                     {"world_size", dp.world_size()},
                     {"train_batch_size", c.train_batch_size}};
    s.config      = c.to_json();
    return save_checkpoint(*out, t.unet, t.ema, optimizer_state, t.generator, s,
                           c.checkpoints_total_limit, c.lora);
}

}  // namespace t2i::training
