// Implements: pipeline/model_dir.h.
#include "pipeline/model_dir.h"

#include <unistd.h>

#include <filesystem>
#include <set>
#include <stdexcept>

#include "io/file_util.h"
#include "models/weights.h"
#include "pipeline/single_file.h"
#include "util/log.h"

namespace t2i::pipeline {

namespace fs = std::filesystem;

void check_model_dir(const std::string& path) {
    if (io::dir_exists(path)) {
        if (!io::file_exists(path + "/model_index.json"))
            throw std::runtime_error(
                "'" + path +
                "' has no model_index.json: it is not a model "
                "folder in diffusers layout (expected model_index.json, unet/, "
                "vae/, text_encoder/, tokenizer/, scheduler/)");
        return;
    }
    std::string msg = "model folder '" + path + "' does not exist.";
    if (path.find('/') != std::string::npos && path.front() != '/' && path.front() != '.')
        msg +=
            " If this is a Hugging Face Hub id: t2i reads local folders only and never uses the "
            "network. Download it first, e.g. `huggingface-cli download " +
            path + " --local-dir models/" + path.substr(path.find('/') + 1) +
            "`, then pass that folder.";
    throw std::runtime_error(msg);
}

ModelIndex read_model_index(const std::string& model_dir) {
    check_model_dir(model_dir);
    return parse_model_index(io::read_json(model_dir + "/model_index.json"), model_dir);
}

namespace {

// A name that stays inside its folder: one path component, not "." or "..". Shard files and
// component folders are such names; "../x" or "/etc/x" would read or write elsewhere.
bool is_plain_name(const std::string& name) {
    return !name.empty() && name.find('/') == std::string::npos && name != "." && name != "..";
}

}  // namespace

ModelIndex parse_model_index(const io::JsonConfig& raw, const std::string& model_dir) {
    ModelIndex index;
    index.raw        = raw;
    index.class_name = index.raw.get<std::string>("_class_name", "");
    for (const auto& [key, value] : index.raw.json().items()) {
        if (key.empty() || key[0] == '_') continue;
        if (!value.is_array() || value.size() != 2) continue;  // e.g. requires_safety_checker
        if (value[0].is_null() || value[1].is_null()) continue;
        if (!value[0].is_string() || !value[1].is_string())
            throw std::runtime_error("'" + model_dir + "/model_index.json': entry '" + key +
                                     "' is " + io::dump_json(value) +
                                     "; expected [library, class], e.g. [\"diffusers\", "
                                     "\"AutoencoderKL\"], or null");
        if (!is_plain_name(key))  // components are folders beside model_index.json
            throw std::runtime_error("'" + model_dir + "/model_index.json': component name " +
                                     io::dump_json(nlohmann::json(key)) +
                                     " is not a folder name inside the model folder");
        index.components[key] = {value[0].get<std::string>(), value[1].get<std::string>()};
    }
    return index;
}

ModelIndex read_pipeline_index(const std::string& model_dir) {
    ModelIndex index = read_model_index(model_dir);
    for (const char* name : {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}) {
        if (!index.components.count(name))
            throw std::runtime_error("'" + model_dir + "/model_index.json' has no '" + name +
                                     "' component; a Stable Diffusion folder needs unet, vae, "
                                     "text_encoder, tokenizer and scheduler entries");
        if (!io::dir_exists(model_dir + "/" + name))
            throw std::runtime_error("'" + model_dir + "/model_index.json' lists '" + name +
                                     "' but the folder '" + model_dir + "/" + name +
                                     "' does not exist (an incomplete download?)");
    }
    return index;
}

void check_components_fit(const models::UNet2DConditionConfig& unet,
                          const models::AutoencoderKLConfig& vae,
                          const models::CLIPTextConfig& text_encoder,
                          const tokenizer::CLIPTokenizer& tokenizer, const std::string& where) {
    auto mismatch = [&](const std::string& what) {
        throw std::runtime_error("model '" + where + "': its components do not fit together: " +
                                 what + " (components from different models?)");
    };
    const int64_t z = vae.latent_channels;
    if (unet.in_channels != z || unet.out_channels != z)
        mismatch("unet in_channels / out_channels are " + std::to_string(unet.in_channels) + " / " +
                 std::to_string(unet.out_channels) + " but vae latent_channels is " +
                 std::to_string(z) +
                 " (inpainting and other UNets with extra inputs cannot be "
                 "trained or sampled as text-to-image)");
    for (const auto dim : unet.cross_attention_dim)
        if (dim != text_encoder.hidden_size)
            mismatch("unet cross_attention_dim is " + std::to_string(dim) +
                     " but text_encoder hidden_size is " +
                     std::to_string(text_encoder.hidden_size));
    if (tokenizer.max_token_id() >= text_encoder.vocab_size)
        mismatch("the tokenizer has token id " + std::to_string(tokenizer.max_token_id()) +
                 " but text_encoder vocab_size is " + std::to_string(text_encoder.vocab_size));
    if (tokenizer.model_max_length() > text_encoder.max_position_embeddings)
        mismatch("tokenizer model_max_length is " + std::to_string(tokenizer.model_max_length()) +
                 " but text_encoder max_position_embeddings is " +
                 std::to_string(text_encoder.max_position_embeddings));
}

namespace {

// "model.safetensors" + "fp16" -> "model.fp16.safetensors" (diffusers / transformers _add_variant).
std::string add_variant(const std::string& name, const std::string& variant) {
    if (variant.empty()) return name;
    const auto dot = name.find_last_of('.');
    return name.substr(0, dot) + "." + variant + name.substr(dot);
}

std::vector<std::string> shards_from_index(const std::string& index_path) {
    const auto index = io::read_json(index_path);
    std::set<std::string> files;
    const auto& map =
        index.json().contains("weight_map") ? index.json()["weight_map"] : nlohmann::json();
    if (!map.is_object())
        throw std::runtime_error("'" + index_path + "': missing object 'weight_map'");
    for (const auto& [key, file] : map.items()) {
        // A shard is a file beside the index, never a path elsewhere ("../../x", "/etc/x").
        const std::string name = file.is_string() ? file.get<std::string>() : "";
        if (!is_plain_name(name))
            throw std::runtime_error("'" + index_path + "': weight_map entry '" + key + "' is " +
                                     io::dump_json(file) +
                                     ", expected the name of a file in the same folder");
        files.insert(name);
    }
    const std::string dir = fs::path(index_path).parent_path().string();
    std::vector<std::string> out;
    for (const auto& f : files) out.push_back(dir + "/" + f);
    return out;
}

// One loader for every component: the module from dir/config.json, then its weights
// (`weights_base` "diffusion_pytorch_model" for diffusers, "model" for transformers).
template <typename Module, typename Config>
Module load_component(const std::string& dir, const std::string& weights_base,
                      const std::string& component, const LoadOptions& options) {
    Module module(Config::from_json(io::read_json(dir + "/config.json")));
    const auto files = find_weight_files(dir, weights_base, options.variant);
    module->to(options.device, options.dtype.value_or(torch::kFloat32));
    models::load_weights(*module, files, component);
    module->eval();
    return module;
}

}  // namespace

std::vector<std::string> find_weight_files(const std::string& dir, const std::string& base,
                                           const std::string& variant) {
    if (!io::dir_exists(dir))
        throw std::runtime_error("component folder '" + dir + "' does not exist");
    const std::string single = dir + "/" + add_variant(base + ".safetensors", variant);
    if (io::file_exists(single)) return {single};
    const std::string index = dir + "/" + add_variant(base + ".safetensors.index.json", variant);
    if (io::file_exists(index)) return shards_from_index(index);
    if (!variant.empty()) {
        // diffusers applies a variant per component: folders without variant files load the
        // plain weights (DiffusionPipeline.from_pretrained, pipeline_utils.py).
        const std::string plain       = dir + "/" + base + ".safetensors";
        const std::string plain_index = dir + "/" + base + ".safetensors.index.json";
        if (io::file_exists(plain) || io::file_exists(plain_index)) {
            log_warn("%s has no '%s' variant weights; loading %s", dir.c_str(), variant.c_str(),
                     io::file_exists(plain) ? plain.c_str() : plain_index.c_str());
            return find_weight_files(dir, base, "");
        }
    }

    std::vector<std::string> present;
    for (const auto& e : fs::directory_iterator(dir))
        present.push_back(e.path().filename().string());
    std::string msg = "no weights '" + fs::path(single).filename().string() + "' in '" + dir + "'";
    msg += " (files present:";
    for (const auto& p : present) msg += " " + p;
    msg += ").";
    for (const auto& p : present) {
        if (variant.empty() && p.size() > 12 && p.rfind(".safetensors") == p.size() - 12 &&
            p.rfind(base + ".", 0) == 0) {
            const std::string v = p.substr(base.size() + 1, p.size() - 12 - base.size() - 1);
            msg += " Hint: this folder has the '" + v + "' variant; pass --variant " + v + ".";
            throw std::runtime_error(msg);
        }
    }
    for (const auto& p : present) {
        if (p.size() > 4 && p.substr(p.size() - 4) == ".bin") {
            msg +=
                " Hint: t2i reads only .safetensors (pickled .bin files can run code); convert "
                "with diffusers: `Pipeline.from_pretrained(dir).save_pretrained(out, "
                "safe_serialization=True)`.";
            break;
        }
    }
    throw std::runtime_error(msg);
}

models::UNet2DConditionModel load_unet(const std::string& dir, const LoadOptions& options) {
    return load_component<models::UNet2DConditionModel, models::UNet2DConditionConfig>(
        dir, "diffusion_pytorch_model", "unet", options);
}

models::AutoencoderKL load_vae(const std::string& dir, const LoadOptions& options) {
    return load_component<models::AutoencoderKL, models::AutoencoderKLConfig>(
        dir, "diffusion_pytorch_model", "vae", options);
}

models::CLIPTextModel load_text_encoder(const std::string& dir, const LoadOptions& options) {
    return load_component<models::CLIPTextModel, models::CLIPTextConfig>(dir, "model",
                                                                         "text_encoder", options);
}

ModelFolder ModelFolder::open(const std::string& model, const std::string& base_model,
                              const std::string& config_dir) {
    ModelFolder f;
    if (is_single_file(model)) {  // throws for a pickle
        if (!base_model.empty())
            throw std::invalid_argument("--base_model is for a checkpoint-N folder; '" + model +
                                        "' is a single file (its other components come from "
                                        "--config DIR)");
        f.single_file = SingleFile::open(model, config_dir);
        f.base        = model;
        f.index       = parse_model_index(
                  io::JsonConfig(f.single_file->configs().model_index, model + " (model index)"), model);
        return f;
    }
    if (!config_dir.empty())
        throw std::invalid_argument("--config is for a single .safetensors file; '" + model +
                                    "' is a model folder and has its own configs");
    if (!io::file_exists(model + "/model_index.json") && io::dir_exists(model + "/unet")) {
        // A checkpoint-N folder: UNet only.
        if (base_model.empty())
            throw std::invalid_argument(
                "--model '" + model +
                "' holds only a UNet (a checkpoint); give --base_model DIR for the VAE, text "
                "encoder, tokenizer and scheduler");
        f.index      = read_pipeline_index(base_model);
        f.checkpoint = true;
        f.ema        = io::dir_exists(model + "/unet_ema");
        f.unet_dir   = model + (f.ema ? "/unet_ema" : "/unet");
        f.base       = base_model;
        return f;
    }
    // A pipeline folder; anything else gets check_model_dir's message (a Hub id, no index).
    f.index    = read_pipeline_index(model);  // names a missing component
    f.unet_dir = model + "/unet";
    f.base     = model;
    return f;
}

models::UNet2DConditionModel ModelFolder::load_unet(const LoadOptions& options) const {
    return single_file ? single_file->load_unet(options) : pipeline::load_unet(unet_dir, options);
}

models::AutoencoderKL ModelFolder::load_vae(const LoadOptions& options) const {
    return single_file ? single_file->load_vae(options)
                       : pipeline::load_vae(component("vae"), options);
}

models::CLIPTextModel ModelFolder::load_text_encoder(const LoadOptions& options) const {
    return single_file ? single_file->load_text_encoder(options)
                       : pipeline::load_text_encoder(component("text_encoder"), options);
}

tokenizer::CLIPTokenizer ModelFolder::tokenizer() const {
    if (single_file) return single_file->tokenizer();
    return tokenizer::CLIPTokenizer::from_pretrained(component("tokenizer"));
}

io::JsonConfig ModelFolder::scheduler_config() const {
    if (single_file)
        return io::JsonConfig(single_file->configs().scheduler, base + " (scheduler config)");
    return io::read_json(component("scheduler") + "/scheduler_config.json");
}

void save_component_folder(const std::string& dir, const nlohmann::json& config,
                           const torch::nn::Module& module, const std::string& weights_file,
                           const io::TensorMap* weights) {
    fs::create_directories(dir);
    io::write_text_atomic(dir + "/config.json", io::dump_json(config, 2) + "\n");
    if (weights)
        io::save_safetensors(dir + "/" + weights_file, *weights);
    else
        models::save_weights(module, dir + "/" + weights_file);
    io::fsync_dir(dir);
}

void save_unet_folder(const std::string& dir, const torch::nn::Module& unet,
                      const nlohmann::json& config, const io::TensorMap* weights_override,
                      const nlohmann::json& extra_config) {
    nlohmann::json cfg = config;
    for (const auto& [k, v] : extra_config.items()) cfg[k] = v;
    save_component_folder(dir, cfg, unet, "diffusion_pytorch_model.safetensors", weights_override);
}

namespace {

// The VAE and text encoder of a single file as component folders, and the other components
// (tokenizer, feature_extractor, ...) of its --config folder copied.
void write_single_file_components(io::OutputFolder& out, const SingleFile& file,
                                  const std::string& pid) {
    const auto tokenizer = file.tokenizer();  // throws without --config, before any write
    (void)tokenizer;
    const LoadOptions fp32;
    auto write = [&](const std::string& name, const nlohmann::json& config,
                     const torch::nn::Module& module, const std::string& weights_file) {
        out.claim(name);
        const std::string tmp = out.file(name + ".tmp-" + pid);
        fs::remove_all(tmp);
        save_component_folder(tmp, config, module, weights_file);
        move_dir_into_place(tmp, out.file(name));
    };
    write("vae", file.configs().vae, *file.load_vae(fp32), "diffusion_pytorch_model.safetensors");
    write("text_encoder", file.configs().text_encoder, *file.load_text_encoder(fp32),
          "model.safetensors");
    for (const auto& [name, lib_cls] :
         parse_model_index(io::JsonConfig(file.configs().model_index, file.path()), file.path())
             .components) {
        const std::string src = file.config_dir() + "/" + name;
        if (name == "unet" || name == "scheduler" || name == "vae" || name == "text_encoder" ||
            !io::dir_exists(src))
            continue;
        out.claim(name);
        copy_component(src, out.file(name));
    }
}

}  // namespace

void save_pipeline_folder(io::OutputFolder& out, const ModelFolder& base,
                          const models::UNet2DConditionModel& unet,
                          const nlohmann::json& scheduler_config, const std::string& variant,
                          const models::AutoencoderKL* vae) {
    const std::string pid = std::to_string(::getpid());
    if (base.single_file) write_single_file_components(out, *base.single_file, pid);
    if (vae) {
        out.claim("vae");
        const std::string tmp = out.file("vae.tmp-" + pid);
        try {
            save_component_folder(tmp, (*vae)->config.raw, **vae,
                                  "diffusion_pytorch_model.safetensors");
        } catch (...) {
            std::error_code ec;
            fs::remove_all(tmp, ec);
            throw;
        }
        move_dir_into_place(tmp, out.file("vae"));
    }
    for (const auto& [name, lib_cls] : base.index.components) {
        if ((name == "unet" && !unet.is_empty()) || name == "scheduler" || (vae && name == "vae") ||
            !io::dir_exists(base.component(name)))
            continue;
        const bool has_weights = name == "vae" || name == "text_encoder" || name == "unet";
        out.claim(name);
        copy_component(base.component(name), out.file(name), has_weights ? variant : "");
    }
    out.claim("scheduler");
    const std::string sched_tmp = out.file("scheduler.tmp-" + pid);
    fs::create_directories(sched_tmp);
    io::write_text_atomic(sched_tmp + "/scheduler_config.json",
                          io::dump_json(scheduler_config, 2) + "\n");
    move_dir_into_place(sched_tmp, out.file("scheduler"));
    if (!unet.is_empty()) {
        out.claim("unet");
        const std::string unet_tmp = out.file("unet.tmp-" + pid);
        try {
            save_unet_folder(unet_tmp, *unet, unet->config.raw);
        } catch (...) {
            std::error_code ec;
            fs::remove_all(unet_tmp, ec);
            throw;
        }
        move_dir_into_place(unet_tmp, out.file("unet"));
    }
    // model_index.json last: its presence means the folder is complete.
    out.claim("model_index.json");
    io::write_text_atomic(out.file("model_index.json"),
                          io::dump_json(base.index.raw.json(), 2) + "\n");
}

void move_dir_into_place(const std::string& tmp, const std::string& dest) {
    const std::string parent = fs::path(dest).parent_path().string();
    if (fs::exists(dest)) {
        const std::string old = dest + ".old-" + std::to_string(::getpid());
        fs::rename(dest, old);
        fs::rename(tmp, dest);
        fs::remove_all(old);
    } else {
        fs::rename(tmp, dest);
    }
    io::fsync_dir(parent.empty() ? "." : parent);
}

void copy_component(const std::string& src_dir, const std::string& dest_dir,
                    const std::string& variant) {
    if (!io::dir_exists(src_dir))
        throw std::runtime_error("component folder '" + src_dir + "' does not exist");
    const std::string tmp = dest_dir + ".tmp-" + std::to_string(::getpid());
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    const std::string tag = variant.empty() ? "" : "." + variant + ".";
    for (const auto& e : fs::directory_iterator(src_dir)) {
        if (!e.is_regular_file()) continue;
        std::string name      = e.path().filename().string();
        const bool is_weights = name.find(".safetensors") != std::string::npos ||
                                name.find(".bin") != std::string::npos;
        const bool is_variant = !tag.empty() && name.find(tag) != std::string::npos;
        if (!tag.empty() && is_weights) {
            if (!is_variant) continue;  // the variant replaces the plain weights
            name.erase(name.find(tag),
                       tag.size() - 1);  // model.fp16.safetensors -> model.safetensors
        } else if (is_weights && name.find(".bin") != std::string::npos) {
            continue;  // pickles are never copied
        }
        fs::copy_file(e.path(), tmp + "/" + name, fs::copy_options::overwrite_existing);
        io::fsync_file(tmp + "/" + name);
    }
    io::fsync_dir(tmp);
    move_dir_into_place(tmp, dest_dir);
}

}  // namespace t2i::pipeline
