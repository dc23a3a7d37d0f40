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
#include "models/weights.h"
#include "pipeline/model_dir.h"
#include "util/log.h"

namespace t2i::training {

namespace fs = std::filesystem;

void save_unet_folder(const std::string& dir, const torch::nn::Module& unet,
                      const nlohmann::json& config, const io::TensorMap* weights_override,
                      const nlohmann::json& extra_config) {
    fs::create_directories(dir);
    nlohmann::json cfg = config;
    for (const auto& [k, v] : extra_config.items()) cfg[k] = v;
    io::write_text_atomic(dir + "/config.json", cfg.dump(2) + "\n");
    if (weights_override) {
        io::save_safetensors(dir + "/diffusion_pytorch_model.safetensors", *weights_override);
    } else {
        models::save_weights(unet, dir + "/diffusion_pytorch_model.safetensors");
    }
    io::fsync_dir(dir);
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& output_dir) {
    std::vector<std::pair<int64_t, std::string>> out;
    if (!io::dir_exists(output_dir)) return out;
    static const std::regex kName("checkpoint-([0-9]+)");
    for (const auto& e : fs::directory_iterator(output_dir)) {
        std::smatch m;
        const std::string name = e.path().filename().string();
        if (e.is_directory() && std::regex_match(name, m, kName))
            out.emplace_back(std::stoll(m[1]), e.path().string());
    }
    std::sort(out.begin(), out.end());
    return out;
}

std::string save_checkpoint(const std::string& output_dir, const models::UNet2DConditionModel& unet,
                            const EMAModel* ema, const TensorMap& optimizer_state,
                            const at::Generator& generator, const TrainerState& state,
                            std::optional<int64_t> total_limit) {
    fs::create_directories(output_dir);
    // Leftovers of a run killed while writing a checkpoint are never picked up: remove them.
    for (const auto& e : fs::directory_iterator(output_dir)) {
        const std::string name = e.path().filename().string();
        if (name.rfind(".checkpoint-", 0) == 0) fs::remove_all(e.path());
    }
    // Prune before saving, as the original: afterwards at most `total_limit` remain.
    if (total_limit) {
        auto existing      = list_checkpoints(output_dir);
        const int64_t step = state.global_step;
        existing.erase(std::remove_if(existing.begin(), existing.end(),
                                      [&](const auto& c) { return c.first == step; }),
                       existing.end());
        const int64_t excess = static_cast<int64_t>(existing.size()) - *total_limit + 1;
        for (int64_t i = 0; i < excess; ++i) {
            log_info("removing old checkpoint %s (--checkpoints_total_limit %lld)",
                     existing[i].second.c_str(), (long long)*total_limit);
            // Rename first: a kill during the deletion must not leave a partial checkpoint-N
            // (the leftover .checkpoint-* name is removed by the next save).
            const std::string doomed = output_dir + "/.checkpoint-" +
                                       std::to_string(existing[i].first) + ".deleting-" +
                                       std::to_string(::getpid());
            fs::rename(existing[i].second, doomed);
            fs::remove_all(doomed);
        }
    }
    const std::string name = "checkpoint-" + std::to_string(state.global_step);
    const std::string dest = output_dir + "/" + name;
    const std::string tmp  = output_dir + "/." + name + ".tmp-" + std::to_string(::getpid());
    fs::remove_all(tmp);
    fs::create_directories(tmp);

    save_unet_folder(tmp + "/unet", *unet, unet->config.raw);
    if (ema) {
        const auto shadow = ema->shadow_map();
        save_unet_folder(tmp + "/unet_ema", *unet, unet->config.raw, &shadow, ema->config_json());
    }
    io::save_safetensors(tmp + "/optimizer.safetensors", optimizer_state);
    io::save_safetensors(tmp + "/random_states.safetensors",
                         {{"generator", generator.get_state()}});
    nlohmann::json js{{"global_step", state.global_step},
                      {"loader", {{"epoch", state.loader.epoch}, {"batch", state.loader.batch}}},
                      {"lr_schedule", state.lr_schedule},
                      {"extra", state.extra},
                      {"config", state.config},
                      {"format", "t2i-checkpoint-1"}};
    // Written last: a folder with training_state.json has everything else.
    io::write_text_atomic(tmp + "/training_state.json", js.dump(2) + "\n");
    io::fsync_dir(tmp);
    pipeline::move_dir_into_place(tmp, dest);
    return dest;
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
                             const OptimizerStateFilter& optimizer_filter) {
    const std::string state_file = path + "/training_state.json";
    if (!io::file_exists(state_file))
        throw std::runtime_error("checkpoint '" + path +
                                 "' has no training_state.json: it was not "
                                 "written by t2i or is incomplete");
    const auto js = io::read_json(state_file);
    TrainerState state;
    state.global_step  = js.get<int64_t>("global_step");
    state.loader.epoch = js.json().at("loader").at("epoch").get<int64_t>();
    state.loader.batch = js.json().at("loader").at("batch").get<int64_t>();
    state.lr_schedule  = js.json().value("lr_schedule", nlohmann::json());
    state.extra        = js.json().value("extra", nlohmann::json::object());
    state.config       = js.json().value("config", nlohmann::json::object());

    models::load_weights(*unet, {path + "/unet/diffusion_pytorch_model.safetensors"},
                         "checkpoint unet");
    if (ema) {
        const std::string ema_dir = path + "/unet_ema";
        if (!io::dir_exists(ema_dir))
            throw std::runtime_error("checkpoint '" + path +
                                     "' has no unet_ema/ but --use_ema is "
                                     "set; resume without --use_ema or from another checkpoint");
        ema->load_shadow(io::load_safetensors(ema_dir + "/diffusion_pytorch_model.safetensors"));
        ema->load_config_json(io::read_json(ema_dir + "/config.json").json());
    }
    // Views of the mapped file: the optimizer copies only the entries it keeps (under ZeRO-1
    // a process holds its own share, never the whole state).
    io::SafetensorsFile optimizer_file(path + "/optimizer.safetensors");
    TensorMap optimizer_state;
    for (const auto& info : optimizer_file.tensors())
        optimizer_state[info.name] = optimizer_file.view(info.name);
    optimizer.load_state_dict(optimizer_filter ? optimizer_filter(optimizer_state)
                                               : optimizer_state);
    const auto rng = io::load_safetensors(path + "/random_states.safetensors");
    generator.set_state(rng.at("generator"));
    return state;
}

}  // namespace t2i::training
