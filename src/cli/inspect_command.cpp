// Implements: `t2i inspect DIR [--variant V]` (CLI.md): one block per component of a diffusers
// model folder with its class, parameter count, stored dtype, files and the config values that
// matter. Every component is fully loaded (weights included), so a broken folder exits 1.
// `t2i inspect FILE.safetensors [--config DIR]` does the same for a single original-layout file.
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "cli/args.h"
#include "cli/commands.h"
#include "io/safetensors.h"
#include "models/weights.h"
#include "pipeline/model_dir.h"
#include "pipeline/single_file.h"
#include "schedulers/ddpm.h"
#include "tokenizer/clip_tokenizer.h"
#include "util/log.h"
#include "util/machine.h"
#include "util/torch_compat.h"

namespace t2i::cli {

namespace {

std::string with_commas(int64_t n) {
    std::string s = std::to_string(n), out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
        out += s[i];
    }
    return out;
}

std::string human_size(uint64_t bytes) {
    const char* units[] = {"B", "KB", "MB", "GB", "TB"};
    double v            = static_cast<double>(bytes);
    int u               = 0;
    while (v >= 1000 && u < 4) v /= 1000, ++u;
    return strformat(u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
}

// Files, sizes and the set of dtypes as stored.
void print_files(const std::vector<std::string>& files) {
    std::set<std::string> dtypes;
    uint64_t total = 0;
    std::string names;
    for (const auto& f : files) {
        io::SafetensorsFile st(f);
        for (const auto& t : st.tensors()) dtypes.insert(t.dtype);
        total += st.file_size();
        names += (names.empty() ? "" : ", ") + std::filesystem::path(f).filename().string();
    }
    std::string dt;
    for (const auto& d : dtypes) dt += (dt.empty() ? "" : ", ") + d;
    std::printf("  stored dtype: %s\n  files: %s (%s)\n", dt.c_str(), names.c_str(),
                human_size(total).c_str());
}

void print_keys(const nlohmann::json& config, const std::vector<std::string>& keys) {
    for (const auto& k : keys)
        if (config.contains(k) && !config[k].is_null())
            std::printf("  %s: %s\n", k.c_str(), config[k].dump().c_str());
}

// `single`: the model is one file (its files are printed once, at the top).
void inspect_component(const std::string& dir, const std::string& name, const std::string& cls,
                       const pipeline::LoadOptions& options, const pipeline::SingleFile* single) {
    const std::string path = dir + "/" + name;
    std::printf("\n%s: %s\n", name.c_str(), cls.c_str());
    if (cls == "UNet2DConditionModel") {
        auto unet = single ? single->load_unet(options) : pipeline::load_unet(path, options);
        std::printf("  parameters: %s\n", with_commas(models::count_parameters(*unet)).c_str());
        if (!single)
            print_files(
                pipeline::find_weight_files(path, "diffusion_pytorch_model", options.variant));
        print_keys(
            unet->config.raw,
            {"sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block",
             "down_block_types", "up_block_types", "attention_head_dim", "num_attention_heads",
             "cross_attention_dim", "use_linear_projection", "upcast_attention"});
    } else if (cls == "AutoencoderKL") {
        auto vae = single ? single->load_vae(options) : pipeline::load_vae(path, options);
        std::printf("  parameters: %s\n", with_commas(models::count_parameters(*vae)).c_str());
        if (!single)
            print_files(
                pipeline::find_weight_files(path, "diffusion_pytorch_model", options.variant));
        print_keys(vae->config.raw, {"block_out_channels", "layers_per_block", "latent_channels",
                                     "sample_size", "scaling_factor", "force_upcast"});
    } else if (cls == "CLIPTextModel" || cls == "CLIPTextModelWithProjection") {
        auto te = single ? single->load_text_encoder(options)
                         : pipeline::load_text_encoder(path, options);
        std::printf("  parameters: %s\n", with_commas(models::count_parameters(*te)).c_str());
        if (!single) print_files(pipeline::find_weight_files(path, "model", options.variant));
        print_keys(
            single ? single->configs().text_encoder : io::read_json(path + "/config.json").json(),
            {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "hidden_act", "vocab_size", "max_position_embeddings", "projection_dim",
             "bos_token_id", "eos_token_id"});
    } else if (cls == "CLIPTokenizer" || cls == "CLIPTokenizerFast") {
        if (single && single->config_dir().empty()) {
            std::printf("  (not in a single file: pass --config DIR for its tokenizer)\n");
            return;
        }
        auto tok =
            tokenizer::CLIPTokenizer::from_pretrained(single ? single->tokenizer_dir() : path);
        std::printf(
            "  vocab_size: %lld\n  model_max_length: %lld\n  bos/eos/pad ids: %lld / %lld / %lld\n",
            (long long)tok.vocab_size(), (long long)tok.model_max_length(),
            (long long)tok.bos_token_id(), (long long)tok.eos_token_id(),
            (long long)tok.pad_token_id());
    } else if (name == "scheduler") {
        const auto json   = single ? io::JsonConfig(single->configs().scheduler, single->path())
                                   : io::read_json(path + "/scheduler_config.json");
        const auto config = schedulers::SchedulerConfig::from_json(json);
        schedulers::DDPMScheduler check(config);  // validates the beta schedule
        print_keys(json.json(), {"num_train_timesteps", "beta_schedule", "beta_start", "beta_end",
                                 "prediction_type", "timestep_spacing", "steps_offset",
                                 "rescale_betas_zero_snr"});
    } else {
        std::printf("  (not used by t2i)\n");
    }
}

}  // namespace

int inspect_command(const std::vector<std::string>& args) {
    std::vector<std::string> dirs;
    std::string variant;
    int num_threads = 0;
    std::string config;
    ArgParser parser("t2i inspect DIR|FILE.safetensors [--variant fp16] [--config DIR]",
                     "Summarize a model folder in diffusers layout (or one original-layout "
                     "checkpoint file): one block per\ncomponent with its class, parameter count, "
                     "stored dtype, files and main config values. Loads every\nweight, so exit 0 "
                     "means the model is usable.");
    parser.add_positionals(&dirs, "DIR",
                           "Model folder (model_index.json, unet/, vae/, ...) or single file.", 1);
    parser.add_option("config", &config, "DIR",
                      "With a single file: a diffusers folder of the same model family whose "
                      "configs, tokenizer and scheduler are used.");
    parser.add_option("variant", &variant, "NAME",
                      "Weight file variant, e.g. fp16 (*.fp16.safetensors).");
    parser.add_option("num_threads", &num_threads, "N", "CPU threads (0 = all cores).");
    if (!parser.parse(args)) return 0;
    if (dirs.size() != 1)
        throw UsageError("expected exactly one DIR, got " + std::to_string(dirs.size()));
    if (num_threads < 0 || num_threads > max_useful_threads())
        throw UsageError("--num_threads must be in [0, " + std::to_string(max_useful_threads()) +
                         "] (0 = all cores), got " + std::to_string(num_threads));
    set_num_threads(num_threads);

    const std::string dir = dirs[0];
    std::shared_ptr<const pipeline::SingleFile> single;
    pipeline::ModelIndex index;
    if (pipeline::is_single_file(dir)) {
        const auto folder = pipeline::ModelFolder::open(dir, "", config);
        single            = folder.single_file;
        index             = folder.index;
    } else if (!config.empty()) {
        throw UsageError("--config is for a single .safetensors file; '" + dir +
                         "' is a model folder");
    } else {
        index = pipeline::read_model_index(dir);
    }
    std::printf("model: %s (%s)\n", dir.c_str(), index.class_name.c_str());
    if (single) {
        std::printf("  single file in original (LDM) layout, %s text encoder%s\n",
                    single->configs().open_clip ? "SD 2.x OpenCLIP" : "SD 1.x CLIP",
                    config.empty() ? "; configs inferred from the weights" : "");
        print_files({dir});
    }
    pipeline::LoadOptions options;
    options.variant = variant;
    int failures    = 0;
    for (const auto& [name, lib_cls] : index.components) {
        try {
            inspect_component(dir, name, lib_cls.second, options, single.get());
        } catch (const std::exception& e) {
            std::fflush(stdout);
            std::fprintf(stderr, "t2i inspect: error: %s: %s\n", name.c_str(), e.what());
            ++failures;
        }
    }
    std::fflush(stdout);
    return failures ? 1 : 0;
}

}  // namespace t2i::cli
