// Implements: pipeline/init_model.h. Configs follow the shapes of diffusers' test models
// (tiny), the small-sd benchmark configs (small) and runwayml/stable-diffusion-v1-5 (sd15).
#include "pipeline/init_model.h"

#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "io/file_util.h"
#include "io/json_config.h"
#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"
#include "models/weights.h"
#include "pipeline/model_dir.h"
#include "tokenizer/clip_tokenizer.h"

namespace t2i::pipeline {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Preset {
    std::vector<int64_t> unet_channels;
    int64_t unet_heads, unet_layers, sample_size;
    std::vector<int64_t> vae_channels;
    int64_t vae_layers;
    int64_t text_hidden, text_layers, text_heads, text_intermediate;
};

Preset preset_of(const std::string& name) {
    if (name == "tiny") return {{32, 64}, 8, 2, 32, {32, 64}, 1, 32, 4, 4, 64};
    if (name == "small")
        return {{64, 128, 256, 256}, 8, 2, 32, {32, 64, 128, 128}, 1, 256, 6, 4, 1024};
    if (name == "sd15")
        return {{320, 640, 1280, 1280}, 8, 2, 64, {128, 256, 512, 512}, 2, 768, 12, 12, 3072};
    std::string list;
    for (const auto& p : init_model_presets()) list += (list.empty() ? "" : ", ") + p;
    throw std::invalid_argument("unknown preset '" + name + "' (expected one of " + list + ")");
}

json unet_config(const Preset& p, int64_t cross_dim) {
    const size_t n = p.unet_channels.size();
    std::vector<std::string> down(n, "CrossAttnDownBlock2D"), up(n, "CrossAttnUpBlock2D");
    down.back() = "DownBlock2D";
    up.front()  = "UpBlock2D";
    if (n == 2) {
        // tiny: attention only at the lower resolution, as diffusers' test models (self-attention
        // over every latent pixel of the full-resolution block costs 16x more).
        down = {"DownBlock2D", "CrossAttnDownBlock2D"};
        up   = {"CrossAttnUpBlock2D", "UpBlock2D"};
    }
    return {{"_class_name", "UNet2DConditionModel"},
            {"_diffusers_version", "0.27.2"},
            {"act_fn", "silu"},
            {"attention_head_dim", p.unet_heads},
            {"block_out_channels", p.unet_channels},
            {"center_input_sample", false},
            {"cross_attention_dim", cross_dim},
            {"down_block_types", down},
            {"downsample_padding", 1},
            {"flip_sin_to_cos", true},
            {"freq_shift", 0},
            {"in_channels", 4},
            {"layers_per_block", p.unet_layers},
            {"mid_block_scale_factor", 1},
            {"norm_eps", 1e-5},
            {"norm_num_groups", 32},
            {"out_channels", 4},
            {"sample_size", p.sample_size},
            {"up_block_types", up}};
}

json vae_config(const Preset& p) {
    const size_t n = p.vae_channels.size();
    return {{"_class_name", "AutoencoderKL"},
            {"_diffusers_version", "0.27.2"},
            {"act_fn", "silu"},
            {"block_out_channels", p.vae_channels},
            {"down_block_types", std::vector<std::string>(n, "DownEncoderBlock2D")},
            {"up_block_types", std::vector<std::string>(n, "UpDecoderBlock2D")},
            {"in_channels", 3},
            {"out_channels", 3},
            {"latent_channels", 4},
            {"layers_per_block", p.vae_layers},
            {"norm_num_groups", 32},
            {"sample_size", p.sample_size << (n - 1)},
            {"scaling_factor", 0.18215}};
}

json text_config(const Preset& p, const tokenizer::CLIPTokenizer& tok) {
    return {{"architectures", {"CLIPTextModel"}},
            {"model_type", "clip_text_model"},
            {"hidden_act", "quick_gelu"},
            {"hidden_size", p.text_hidden},
            {"intermediate_size", p.text_intermediate},
            {"num_hidden_layers", p.text_layers},
            {"num_attention_heads", p.text_heads},
            {"max_position_embeddings", 77},
            {"layer_norm_eps", 1e-5},
            {"vocab_size", tok.vocab_size()},
            {"bos_token_id", tok.bos_token_id()},
            {"eos_token_id", tok.eos_token_id()},
            {"pad_token_id", tok.pad_token_id()},
            {"projection_dim", p.text_hidden},
            {"torch_dtype", "float32"}};
}

// A CLIP tokenizer with the 256 byte symbols, their "</w>" forms and no merges: valid for any
// text, tiny, and generated rather than shipped.
void write_byte_tokenizer(const std::string& dir) {
    fs::create_directories(dir);
    const auto table = tokenizer::bytes_to_unicode();
    std::vector<int> order;  // CLIP's order: printable bytes first, then the rest
    for (int pass = 0; pass < 2; ++pass)
        for (int b = 0; b < 256; ++b)
            if ((table[b] == static_cast<char32_t>(b)) == (pass == 0)) order.push_back(b);
    json vocab = json::object();
    int64_t id = 0;
    for (const char* suffix : {"", "</w>"})
        for (int b : order)
            vocab[tokenizer::u32_to_utf8(std::u32string(1, table[b])) + suffix] = id++;
    vocab["<|startoftext|>"] = id++;
    vocab["<|endoftext|>"]   = id++;
    io::write_text_atomic(dir + "/vocab.json", vocab.dump() + "\n");
    io::write_text_atomic(dir + "/merges.txt", "#version: 0.2\n");
    const json special{{"bos_token", "<|startoftext|>"},
                       {"eos_token", "<|endoftext|>"},
                       {"unk_token", "<|endoftext|>"},
                       {"pad_token", "<|endoftext|>"}};
    json cfg                            = special;
    cfg["model_max_length"]             = 77;
    cfg["tokenizer_class"]              = "CLIPTokenizer";
    cfg["do_lower_case"]                = true;
    cfg["errors"]                       = "replace";
    cfg["clean_up_tokenization_spaces"] = true;
    io::write_text_atomic(dir + "/tokenizer_config.json", cfg.dump(2) + "\n");
    io::write_text_atomic(dir + "/special_tokens_map.json", special.dump(2) + "\n");
}

template <typename Model, typename Config>
void write_component(const std::string& dir, const json& config, const std::string& weights) {
    Model model(Config::from_json(io::JsonConfig(config, dir + "/config.json")));
    save_component_folder(dir, config, *model, weights);
}

}  // namespace

json sd_scheduler_config(bool sd2) {
    return {{"_class_name", sd2 ? "DDIMScheduler" : "PNDMScheduler"},
            {"_diffusers_version", "0.27.2"},
            {"beta_end", 0.012},
            {"beta_schedule", "scaled_linear"},
            {"beta_start", 0.00085},
            {"clip_sample", false},
            {"num_train_timesteps", 1000},
            {"prediction_type", sd2 ? "v_prediction" : "epsilon"},
            {"set_alpha_to_one", false},
            {"skip_prk_steps", true},
            {"steps_offset", 1},
            {"timestep_spacing", "leading"},
            {"trained_betas", nullptr}};
}

json sd_model_index(const std::string& scheduler_class) {
    return {{"_class_name", "StableDiffusionPipeline"},
            {"_diffusers_version", "0.27.2"},
            {"feature_extractor", {nullptr, nullptr}},
            {"image_encoder", {nullptr, nullptr}},
            {"requires_safety_checker", false},
            {"safety_checker", {nullptr, nullptr}},
            {"scheduler", {"diffusers", scheduler_class}},
            {"text_encoder", {"transformers", "CLIPTextModel"}},
            {"tokenizer", {"transformers", "CLIPTokenizer"}},
            {"unet", {"diffusers", "UNet2DConditionModel"}},
            {"vae", {"diffusers", "AutoencoderKL"}}};
}

const std::vector<std::string>& init_model_presets() {
    static const std::vector<std::string> kPresets{"tiny", "small", "sd15"};
    return kPresets;
}

void init_model(const std::string& output_dir, const std::string& preset,
                const std::string& tokenizer_dir, uint64_t seed) {
    const Preset p = preset_of(preset);
    if (fs::exists(output_dir) && !fs::is_directory(output_dir))
        throw std::runtime_error("--output '" + output_dir +
                                 "' is a file, not a folder; choose a new folder");
    for (const char* name :
         {"model_index.json", "scheduler", "tokenizer", "text_encoder", "vae", "unet"})
        if (fs::exists(fs::symlink_status(output_dir + "/" + name)))
            throw std::runtime_error("'" + output_dir + "' already holds '" + name +
                                     "'; init-model writes a new model and never replaces "
                                     "files: choose an empty folder");
    torch::manual_seed(seed);
    fs::create_directories(output_dir);
    const std::string tmp = output_dir + "/.init.tmp-" + std::to_string(::getpid());
    fs::remove_all(tmp);
    if (tokenizer_dir.empty()) {
        write_byte_tokenizer(tmp + "/tokenizer");
    } else {
        copy_component(tokenizer_dir, tmp + "/tokenizer");
    }
    const auto tok = tokenizer::CLIPTokenizer::from_pretrained(tmp + "/tokenizer");
    fs::create_directories(tmp + "/scheduler");
    io::write_text_atomic(tmp + "/scheduler/scheduler_config.json",
                          sd_scheduler_config(false).dump(2) + "\n");
    write_component<models::CLIPTextModel, models::CLIPTextConfig>(
        tmp + "/text_encoder", text_config(p, tok), "model.safetensors");
    write_component<models::AutoencoderKL, models::AutoencoderKLConfig>(
        tmp + "/vae", vae_config(p), "diffusion_pytorch_model.safetensors");
    write_component<models::UNet2DConditionModel, models::UNet2DConditionConfig>(
        tmp + "/unet", unet_config(p, p.text_hidden), "diffusion_pytorch_model.safetensors");
    for (const char* c : {"scheduler", "tokenizer", "text_encoder", "vae", "unet"})
        move_dir_into_place(tmp + "/" + c, output_dir + "/" + c);
    fs::remove_all(tmp);
    const json index = sd_model_index("PNDMScheduler");
    io::write_text_atomic(output_dir + "/model_index.json", index.dump(2) + "\n");
}

}  // namespace t2i::pipeline
