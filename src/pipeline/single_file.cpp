// Implements: pipeline/single_file.h (reading and writing; the config inference is in
// single_file_config.cpp). Mirrors: diffusers loaders/single_file_utils.py and
// scripts/convert_diffusers_to_original_stable_diffusion.py.
#include "pipeline/single_file.h"

#include <filesystem>
#include <stdexcept>

#include "io/file_util.h"
#include "models/weights.h"
#include "util/log.h"

namespace t2i::pipeline {

namespace fs = std::filesystem;

namespace {

std::string lower_extension(const std::string& path) {
    std::string ext = fs::path(path).extension().string();
    for (auto& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return ext;
}

std::string first_keys(const std::vector<std::string>& keys, size_t shown = 8) {
    std::string out;
    for (size_t i = 0; i < keys.size() && i < shown; ++i) out += "\n    " + keys[i];
    if (keys.size() > shown) out += strformat("\n    ... and %zu more", keys.size() - shown);
    return out;
}

// A component config: --config's config.json when there is one (checked against the weights),
// else the inferred one.
nlohmann::json pick_config(const std::string& config_dir, const std::string& component,
                           const nlohmann::json& inferred, const std::string& weights_file) {
    const std::string file = config_dir + "/" + component + "/config.json";
    if (config_dir.empty() || !io::file_exists(file)) return inferred;
    const auto given = io::read_json(file);
    check_config_fits_weights(component, inferred, given, weights_file);
    return given.json();
}

}  // namespace

bool is_single_file(const std::string& path) {
    if (!io::file_exists(path) || io::dir_exists(path)) return false;
    const std::string ext = lower_extension(path);
    if (ext == ".ckpt" || ext == ".pt" || ext == ".pth" || ext == ".bin")
        throw std::invalid_argument(
            "'" + path + "' is a pickled PyTorch checkpoint (" + ext +
            "): loading a pickle can run arbitrary code, so t2i reads .safetensors only. Convert "
            "it once in a trusted Python environment, e.g. `python -c \"import torch, "
            "safetensors.torch as st; sd = torch.load('" +
            path +
            "', map_location='cpu', weights_only=True); sd = sd.get('state_dict', sd); "
            "st.save_file({k: v.contiguous() for k, v in sd.items() if hasattr(v, 'contiguous')}, "
            "'model.safetensors')\"`, then pass model.safetensors");
    if (ext != ".safetensors")
        throw std::invalid_argument("'" + path +
                                    "' is a file but not a .safetensors checkpoint; give a "
                                    "diffusers model folder or an original-layout .safetensors "
                                    "file");
    return true;
}

std::shared_ptr<const SingleFile> SingleFile::open(const std::string& path,
                                                   const std::string& config_dir) {
    if (!is_single_file(path))
        throw std::runtime_error("single file '" + path + "' does not exist");
    if (!config_dir.empty() && !io::file_exists(config_dir + "/model_index.json"))
        throw std::invalid_argument("--config '" + config_dir +
                                    "' is not a diffusers model folder (no model_index.json); "
                                    "give the folder of a model of the same family, e.g. "
                                    "stable-diffusion-v1-5, whose configs, tokenizer/ and "
                                    "scheduler/ are used");
    auto sf              = std::shared_ptr<SingleFile>(new SingleFile());
    sf->path_            = path;
    sf->config_dir_      = config_dir;
    sf->file_            = std::make_unique<io::SafetensorsFile>(path);
    const auto inferred  = infer_single_file_configs(*sf->file_);
    SingleFileConfigs& c = sf->configs_;
    c                    = inferred;
    c.unet               = pick_config(config_dir, "unet", inferred.unet, path);
    c.vae                = pick_config(config_dir, "vae", inferred.vae, path);
    c.text_encoder       = pick_config(config_dir, "text_encoder", inferred.text_encoder, path);
    if (!config_dir.empty()) {
        c.model_index           = io::read_json(config_dir + "/model_index.json").json();
        const std::string sched = config_dir + "/scheduler/scheduler_config.json";
        if (io::file_exists(sched)) c.scheduler = io::read_json(sched).json();
    }

    // Every key of the file: a component's tensor, a tolerated extra, or an error.
    const auto unet_config = models::UNet2DConditionConfig::from_json(io::JsonConfig(c.unet, path));
    const auto vae_config  = models::AutoencoderKLConfig::from_json(io::JsonConfig(c.vae, path));
    const auto text_layers =
        models::CLIPTextConfig::from_json(io::JsonConfig(c.text_encoder, path)).num_hidden_layers;
    std::vector<std::string> unknown;
    for (const auto& t : sf->file_->tensors()) {
        if (is_skipped_ldm_key(t.name, text_layers)) continue;
        Sources* into = &sf->unet_;
        auto keys     = ldm_key_to_unet(t.name, unet_config);
        if (keys.empty()) keys = ldm_key_to_vae(t.name, vae_config), into = &sf->vae_;
        if (keys.empty())
            keys = ldm_key_to_text_encoder(t.name, c.open_clip), into = &sf->text_encoder_;
        if (keys.empty()) unknown.push_back(t.name);
        for (const auto& k : keys) {
            if (into->count(k.name))
                throw std::runtime_error("single file '" + path + "': '" + t.name + "' and '" +
                                         into->at(k.name).name + "' both hold '" + k.name +
                                         "'; keep one of them");
            (*into)[k.name] = {t.name, k.storage, k.part};
        }
    }
    if (!unknown.empty())
        throw std::runtime_error(strformat(
            "single file '%s': %zu key(s) are not part of a Stable Diffusion 1.x / 2.x "
            "checkpoint in the original (LDM) layout:%s\n  hint: t2i reads SD 1.x / 2.x "
            "text-to-image checkpoints (UNet model.diffusion_model.*, VAE first_stage_model.*, "
            "text encoder cond_stage_model.*); SDXL, inpainting, LoRA and other files are not "
            "of that kind",
            path.c_str(), unknown.size(), first_keys(unknown).c_str()));
    return sf;
}

void SingleFile::load_into(torch::nn::Module& module, const Sources& sources,
                           const std::string& component, const LoadOptions& options) const {
    module.to(options.device, options.dtype.value_or(torch::kFloat32));
    io::TensorMap targets = models::state_dict(module);
    std::vector<std::string> missing, unexpected;
    torch::NoGradGuard no_grad;
    for (auto& [key, dst] : targets) {
        const auto it = sources.find(key);
        if (it == sources.end()) {
            missing.push_back(key);
            continue;
        }
        const LdmKey& src = it->second;
        torch::Tensor t   = file_->view(src.name);
        if (src.storage == LdmStorage::kConv1x1 && t.dim() > 2 && t.numel() == dst.numel())
            t = t.reshape(dst.sizes());  // [C, C, 1, 1] (conv) -> [C, C] (Linear)
        if (src.storage == LdmStorage::kQkvPart) {
            if (t.dim() < 1 || t.size(0) % 3 != 0)
                throw std::runtime_error("single file '" + path_ + "': '" + src.name +
                                         "' has shape " + c10::str(t.sizes()) +
                                         ", expected cat(q, k, v) with 3 x hidden_size rows");
            const int64_t rows = t.size(0) / 3;
            t                  = t.narrow(0, src.part * rows, rows);
        }
        if (t.sizes() != dst.sizes())
            throw std::runtime_error(strformat(
                "single file '%s': %s weight '%s' (from '%s') has shape %s but the model built "
                "from its config expects %s; %s",
                path_.c_str(), component.c_str(), key.c_str(), src.name.c_str(),
                c10::str(t.sizes()).c_str(), c10::str(dst.sizes()).c_str(),
                config_dir_.empty() ? "the inferred config does not fit; pass --config DIR, a "
                                      "diffusers folder of the same model"
                                    : "--config is of another model family"));
        dst.copy_(t);
    }
    for (const auto& [key, src] : sources)
        if (!targets.count(key)) unexpected.push_back(src.name + " (as " + key + ")");
    if (!missing.empty() || !unexpected.empty()) {
        std::string msg = "single file '" + path_ + "': the " + component +
                          " weights do not match the model built from its config.";
        if (!missing.empty())
            msg += strformat("\n  missing (%zu):", missing.size()) + first_keys(missing);
        if (!unexpected.empty())
            msg += strformat("\n  unexpected (%zu):", unexpected.size()) + first_keys(unexpected);
        throw std::runtime_error(msg);
    }
    module.eval();
}

models::UNet2DConditionModel SingleFile::load_unet(const LoadOptions& options) const {
    models::UNet2DConditionModel unet(
        models::UNet2DConditionConfig::from_json(io::JsonConfig(configs_.unet, path_)));
    load_into(*unet, unet_, "unet", options);
    return unet;
}

models::AutoencoderKL SingleFile::load_vae(const LoadOptions& options) const {
    models::AutoencoderKL vae(
        models::AutoencoderKLConfig::from_json(io::JsonConfig(configs_.vae, path_)));
    load_into(*vae, vae_, "vae", options);
    return vae;
}

models::CLIPTextModel SingleFile::load_text_encoder(const LoadOptions& options) const {
    models::CLIPTextModel text_encoder(
        models::CLIPTextConfig::from_json(io::JsonConfig(configs_.text_encoder, path_)));
    load_into(*text_encoder, text_encoder_, "text_encoder", options);
    return text_encoder;
}

std::string SingleFile::tokenizer_dir() const {
    return config_dir_.empty() ? "" : config_dir_ + "/tokenizer";
}

tokenizer::CLIPTokenizer SingleFile::tokenizer() const {
    if (config_dir_.empty())
        throw std::invalid_argument(
            "'" + path_ +
            "': a single file carries no tokenizer; pass --config DIR, a diffusers folder of "
            "the same family (e.g. stable-diffusion-v1-5 for SD 1.x, stable-diffusion-2-1 for "
            "SD 2.x)");
    return tokenizer::CLIPTokenizer::from_pretrained(tokenizer_dir());
}

io::TensorMap to_ldm_state_dict(const models::UNet2DConditionModel& unet,
                                const models::AutoencoderKL& vae,
                                const models::CLIPTextModel& text_encoder, bool half) {
    io::TensorMap out;
    auto put = [&](const std::string& name, torch::Tensor t) {
        t = t.detach().contiguous();
        if (half && t.is_floating_point()) t = t.to(torch::kFloat16);
        if (!out.emplace(name, t).second)
            throw std::logic_error("two weights map to the original key '" + name + "'");
    };
    for (const auto& [key, t] : models::state_dict(*unet))
        put(unet_key_to_ldm(key, unet->config).name, t);
    for (const auto& [key, t] : models::state_dict(*vae)) {
        const auto ldm = vae_key_to_ldm(key, vae->config);
        // Linear [C, C] -> 1x1 conv [C, C, 1, 1], as the LDM AttnBlock holds it.
        put(ldm.name,
            ldm.storage == LdmStorage::kConv1x1 ? t.reshape({t.size(0), t.size(1), 1, 1}) : t);
    }
    const bool open_clip = text_encoder->config().hidden_act == "gelu";  // SD 2.x's OpenCLIP
    std::map<std::string, std::array<torch::Tensor, 3>> fused;           // in_proj: q, k, v
    for (const auto& [key, t] : models::state_dict(*text_encoder)) {
        const auto ldm = text_encoder_key_to_ldm(key, open_clip);
        if (ldm.storage == LdmStorage::kQkvPart)
            fused[ldm.name][ldm.part] = t;
        else
            put(ldm.name, t);
    }
    for (const auto& [name, qkv] : fused) {
        for (const auto& part : qkv)
            if (!part.defined())
                throw std::runtime_error("text encoder: '" + name + "' lacks one of q, k, v");
        put(name, torch::cat({qkv[0], qkv[1], qkv[2]}, 0));  // [3D, D] or [3D]
    }
    return out;
}

void save_single_file(const ModelFolder& model, const std::string& path, bool half, bool replace) {
    const LoadOptions fp32;
    const auto unet         = model.load_unet(fp32);
    const auto vae          = model.load_vae(fp32);
    const auto text_encoder = model.load_text_encoder(fp32);
    const auto tensors      = to_ldm_state_dict(unet, vae, text_encoder, half);
    // NaN in the folder, or a value beyond fp16's range under --half, is never written.
    models::check_finite(tensors, path);
    io::save_safetensors(path, tensors, {{"format", "pt"}}, replace);
}

}  // namespace t2i::pipeline
