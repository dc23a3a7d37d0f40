// Implements: `t2i generate` (CLI.md): flags -> a StableDiffusionPipeline over a diffusers folder,
// a t2i training output, a checkpoint-N folder or a single original-layout .safetensors file ->
// PNG files (and optionally the latents).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "cli/args.h"
#include "cli/commands.h"
#include "io/file_util.h"
#include "io/image_io.h"
#include "io/json_config.h"
#include "io/safetensors.h"
#include "io/text.h"
#include "models/lora.h"
#include "pipeline/ldm_keys.h"
#include "pipeline/model_dir.h"
#include "pipeline/text_to_image.h"
#include "util/device.h"
#include "util/log.h"
#include "util/machine.h"
#include "util/torch_compat.h"

namespace t2i::cli {

namespace {

struct GenerateFlags {
    std::string model, base_model, config, prompt_file, scheduler, variant, output;
    std::string seed, save_latents, device = "cpu", torch_dtype = "fp32";
    std::vector<std::string> prompt, negative_prompt, lora;
    bool fuse_lora              = false;
    int64_t num_inference_steps = 50, height = 0, width = 0;
    int64_t num_images_per_prompt = 1, num_threads = 0;
    double guidance_scale = 7.5;
};

std::vector<std::string> read_prompt_file(const std::string& path) {
    std::istringstream in(io::read_utf8_file(path, io::kMaxConfigFileBytes));
    std::vector<std::string> out;
    for (std::string line; std::getline(in, line);)
        if (!line.empty() && line.find_first_not_of(" \t\r") != std::string::npos)
            out.push_back(line);
    return out;
}

// --lora FILE[:SCALE]: read the file (kohya names resolved against this model) and apply it.
void apply_lora_flag(const std::string& spec, bool fuse, models::UNet2DConditionModel& unet,
                     models::CLIPTextModel& text_encoder) {
    std::string path = spec;
    double scale     = 1.0;
    const auto colon = spec.rfind(':');
    if (colon != std::string::npos && colon + 1 < spec.size()) {
        char* end         = nullptr;
        const auto suffix = spec.substr(colon + 1);
        const double v    = std::strtod(suffix.c_str(), &end);
        if (end && *end == '\0') {
            if (!std::isfinite(v))
                throw UsageError("--lora " + spec + ": the scale must be a finite number");
            path  = spec.substr(0, colon);
            scale = v;
        }
    }
    if (io::dir_exists(path)) path += std::string("/") + models::kLoraWeightsName;
    if (!io::file_exists(path))
        throw UsageError("--lora " + spec + ": no file '" + path +
                         "' (give a .safetensors LoRA file or a t2i train-lora output folder)");
    models::LoraFile lora;
    try {
        lora = models::read_lora_file(path, unet.get(), text_encoder.get(),
                                      pipeline::ldm_unet_module_names(unet));
        models::apply_lora(lora, scale, fuse, unet, text_encoder);
    } catch (const std::invalid_argument& e) {
        throw UsageError(std::string("--lora: ") + e.what());
    }
    log_info("LoRA %s (%s layout, %zu modules) x %g%s", path.c_str(), lora.format.c_str(),
             lora.modules.size(), scale, fuse ? ", fused" : "");
}

// "/000000.png", ...: image i of a folder --output.
std::string image_name(int64_t i) {
    char name[32];
    std::snprintf(name, sizeof name, "/%06lld.png", (long long)i);
    return name;
}

bool is_png_file(const std::string& path) {
    try {
        const io::MappedFile file(path);
        return file.bytes().substr(0, 8) == "\x89PNG\r\n\x1a\n";
    } catch (const std::exception&) {
        return false;
    }
}

bool is_latents_file(const std::string& path) {
    try {
        const io::SafetensorsFile file(path);
        return file.tensors().size() == 1 && file.contains("latents");
    } catch (const std::exception&) {
        return false;
    }
}

// generate writes images and a latents file, and never where that would destroy something
// else: not inside a model folder it reads, and over an existing file only if it is of the
// kind it writes (regenerating out.png replaces out.png; a weights file is never replaced).
void check_output_path(const std::string& path, const char* flag, const char* kind,
                       bool (*same_kind)(const std::string&),
                       const std::vector<std::string>& model_dirs) {
    namespace fs         = std::filesystem;
    const fs::path where = fs::weakly_canonical(fs::absolute(path));
    for (const auto& dir : model_dirs) {
        if (dir.empty() || !io::dir_exists(dir)) continue;
        const fs::path model = fs::canonical(dir);
        auto m = model.begin(), w = where.begin();
        for (; m != model.end() && w != where.end() && *m == *w; ++m, ++w) {
        }
        if (m == model.end())
            throw UsageError(std::string(flag) + " '" + path + "' is inside the model folder '" +
                             dir + "'; write the output elsewhere");
    }
    std::error_code ec;
    if (fs::exists(fs::symlink_status(path, ec)) && !same_kind(path))
        throw UsageError(std::string(flag) + " '" + path + "' exists and is not " + kind +
                         "; t2i does not replace it: choose another name");
}

}  // namespace

int generate_command(const std::vector<std::string>& args) {
    GenerateFlags f;
    ArgParser p("t2i generate --model DIR --prompt TEXT [--prompt ...] --output FILE.png|DIR",
                "Generate images as diffusers' StableDiffusionPipeline does.");
    p.add(f.model, "model",
          "A diffusers folder, a t2i training output, a checkpoint-N folder, or one "
          "original-layout SD 1.x / 2.x .safetensors file.");
    p.add(f.base_model, "base_model",
          "Folder with the other components when --model is a checkpoint.");
    p.add(f.config, "config",
          "With a single-file --model: a diffusers folder of the same model family whose "
          "configs, tokenizer and scheduler are used (diffusers' from_single_file config=).");
    p.add(f.prompt, "prompt", "Prompt(s); repeat the flag or give several values.");
    p.add(f.prompt_file, "prompt_file", "File with one prompt per line.");
    p.add(f.negative_prompt, "negative_prompt", "Negative prompt (one, or one per prompt).");
    p.add(f.scheduler, "scheduler",
          "ddim, pndm, euler, euler_ancestral, dpm++2m, dpm++2m_karras, ddpm (default: the "
          "model's).");
    p.add(f.num_inference_steps, "num_inference_steps", "Denoising steps.");
    p.add(f.guidance_scale, "guidance_scale", "Classifier-free guidance scale (<= 1: off).");
    p.add(f.height, "height", "Image height (default: unet sample_size x VAE scale factor).");
    p.add(f.width, "width", "Image width (default: unet sample_size x VAE scale factor).");
    p.add(f.num_images_per_prompt, "num_images_per_prompt", "Images per prompt.");
    p.add(f.seed, "seed",
          "Seed (0 .. 2^64-1): the same latents as torch.Generator('cpu').manual_seed(S).");
    p.add(f.variant, "variant", "Weight file variant, e.g. fp16.");
    p.add(f.save_latents, "save_latents", "Also write the final latents (before VAE decode) here.");
    p.add(f.output, "output", "A .png file for one image, or a folder (000000.png, ...).");
    p.add(f.num_threads, "num_threads", "CPU threads (0 = all cores).");
    p.add(f.device, "device", "cpu, cuda or cuda:N (as pipe.to(device)).");
    p.add(f.torch_dtype, "torch_dtype",
          "Weights and activations: fp32, fp16 (CUDA only) or bf16 (diffusers' torch_dtype; "
          "float32 / float16 / bfloat16 also accepted).");
    p.add(f.lora, "lora",
          "FILE[:SCALE], repeatable: a LoRA in diffusers / PEFT layout (as save_lora_weights and "
          "t2i train-lora write; a folder means FOLDER/pytorch_lora_weights.safetensors) or "
          "kohya / A1111 layout, times SCALE (default 1; diffusers' cross_attention_kwargs "
          "scale, also for a text encoder LoRA).");
    p.add(f.fuse_lora, "fuse_lora",
          "Merge the LoRAs into the weights before sampling (diffusers' fuse_lora): faster "
          "steps, the same images up to float rounding.");
    if (!p.parse(args)) return 0;
    if (f.model.empty()) throw UsageError("--model is required");
    if (f.output.empty()) throw UsageError("--output is required");
    if (!f.prompt_file.empty())
        for (auto& s : read_prompt_file(f.prompt_file)) f.prompt.push_back(s);
    if (f.prompt.empty()) throw UsageError("give --prompt or --prompt_file");
    if (f.num_inference_steps < 1 || f.num_inference_steps > 10000)
        throw UsageError("--num_inference_steps must be in [1, 10000], got " +
                         std::to_string(f.num_inference_steps));
    if (f.num_images_per_prompt < 1 || f.num_images_per_prompt > 10000)
        throw UsageError("--num_images_per_prompt must be in [1, 10000], got " +
                         std::to_string(f.num_images_per_prompt));
    for (const auto& [flag, v] :
         {std::pair<const char*, int64_t>{"height", f.height}, {"width", f.width}})
        if (v < 0 || v > 16384)
            throw UsageError(std::string("--") + flag +
                             " must be in [8, 16384] pixels (0 or "
                             "absent: the model's default size), got " +
                             std::to_string(v));
    if (std::abs(f.guidance_scale) > 1e4)
        throw UsageError("--guidance_scale must be in [-10000, 10000], got " +
                         std::to_string(f.guidance_scale));
    pipeline::GenerateOptions o;
    if (!f.seed.empty()) {
        size_t pos = 0;
        try {
            o.seed = std::stoull(f.seed, &pos);
        } catch (const std::exception&) {
            pos = 0;
        }
        if (pos != f.seed.size() || f.seed[0] == '-')
            throw UsageError("--seed: expected an integer 0 .. 2^64-1, got '" + f.seed + "'");
    }
    // Where the outputs go, checked before any work.
    const std::vector<std::string> model_dirs = {f.model, f.base_model, f.config};
    const int64_t n_images = static_cast<int64_t>(f.prompt.size()) * f.num_images_per_prompt;
    const std::string ext  = [&] {
        auto e = std::filesystem::path(f.output).extension().string();
        std::transform(e.begin(), e.end(), e.begin(), ::tolower);
        return e;
    }();
    const bool is_png = ext == ".png";
    for (const char* other : {".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
        if (ext == other)
            throw UsageError("--output " + f.output +
                             ": t2i writes PNG images; give a .png file "
                             "or a folder (it then writes 000000.png, ...)");
    if (is_png && n_images > 1)
        throw UsageError("--output " + f.output + " is one file but " + std::to_string(n_images) +
                         " images will be made; give a folder");
    if (is_png) {
        check_output_path(f.output, "--output", "a PNG image", is_png_file, model_dirs);
    } else {
        if (io::file_exists(f.output))
            throw UsageError("--output '" + f.output +
                             "' is a file, not a folder; give a folder or a .png file");
        for (int64_t i = 0; i < n_images; ++i)
            check_output_path(f.output + image_name(i), "--output", "a PNG image", is_png_file,
                              model_dirs);
    }
    if (!f.save_latents.empty())
        check_output_path(f.save_latents, "--save_latents", "a latents file written by t2i",
                          is_latents_file, model_dirs);
    if (f.num_threads < 0 || f.num_threads > max_useful_threads())
        throw UsageError("--num_threads must be in [0, " + std::to_string(max_useful_threads()) +
                         "] (0 = all cores), got " + std::to_string(f.num_threads));
    set_num_threads(static_cast<int>(f.num_threads));
    pipeline::LoadOptions lo;
    try {
        lo.dtype  = parse_dtype(f.torch_dtype, "--torch_dtype");
        lo.device = resolve_device(f.device);
    } catch (const DeviceError& e) {
        throw UsageError(e.what());
    }
    if (lo.device.is_cpu() && lo.dtype == torch::kFloat16)
        throw UsageError("--torch_dtype fp16 needs --device cuda; on the CPU use bf16 or fp32");

    // The model (pipeline/model_dir): a pipeline folder, or a checkpoint and --base_model.
    if (io::file_exists(f.model + "/" + models::kLoraWeightsName) &&
        !io::file_exists(f.model + "/model_index.json"))
        throw UsageError("--model '" + f.model +
                         "' holds a LoRA (pytorch_lora_weights.safetensors), not a model: give the "
                         "base model as --model and this folder as --lora '" +
                         f.model + "'");
    const auto folder = [&] {
        try {
            return pipeline::ModelFolder::open(f.model, f.base_model, f.config);
        } catch (const std::invalid_argument& e) {
            throw UsageError(e.what());
        }
    }();
    if (folder.checkpoint)
        log_info("using %s/%s", f.model.c_str(),
                 folder.ema ? "unet_ema (the EMA weights)" : "unet");
    lo.variant        = f.variant;
    auto tokenizer    = folder.tokenizer();  // a single file without --config fails here, early
    auto unet         = folder.load_unet(lo);
    auto vae          = folder.load_vae(lo);
    auto text_encoder = folder.load_text_encoder(lo);
    pipeline::check_components_fit(unet->config, vae->config, text_encoder->config(), tokenizer,
                                   f.model);
    for (const auto& spec : f.lora) apply_lora_flag(spec, f.fuse_lora, unet, text_encoder);
    // The decoded images (float32) alone beyond the machine's memory: refused before sampling.
    const int64_t side = unet->config.sample_size * vae->config.vae_scale_factor();
    const int64_t h = f.height > 0 ? f.height : side, w = f.width > 0 ? f.width : side;
    if (const double ram = double(physical_memory_bytes());
        ram > 0 && double(n_images) * 3.0 * double(h) * double(w) * 4.0 > ram)
        throw UsageError(
            strformat("%lld images of %lld x %lld pixels do not fit in this machine's "
                      "memory; make fewer per run (--num_images_per_prompt, prompts)",
                      (long long)n_images, (long long)h, (long long)w));
    auto pipe               = pipeline::StableDiffusionPipeline(unet, vae, text_encoder, tokenizer);
    auto scheduler          = schedulers::make_scheduler(f.scheduler, folder.scheduler_config());
    o.prompts               = f.prompt;
    o.negative_prompts      = f.negative_prompt;
    o.num_inference_steps   = f.num_inference_steps;
    o.guidance_scale        = f.guidance_scale;
    o.height                = f.height;
    o.width                 = f.width;
    o.num_images_per_prompt = f.num_images_per_prompt;
    o.show_progress         = ::isatty(STDERR_FILENO) != 0;  // no escape codes into a log file
    auto result             = pipe(o, *scheduler);
    log_info("%lld image(s): %lld steps in %.2f s (%.3f s/step), %.2f s in all",
             (long long)result.latents.size(0), (long long)f.num_inference_steps,
             result.denoise_seconds, result.denoise_seconds / f.num_inference_steps,
             result.total_seconds);

    if (!f.save_latents.empty())
        io::save_safetensors(f.save_latents,
                             {{"latents", result.latents.to(torch::kFloat32).contiguous()}});
    const int64_t n = result.images.size(0);
    if (is_png) {
        io::write_png(f.output, result.images[0]);
        std::printf("%s\n", f.output.c_str());
        return 0;
    }
    std::filesystem::create_directories(f.output);
    for (int64_t i = 0; i < n; ++i) {
        io::write_png(f.output + image_name(i), result.images[i]);
        std::printf("%s%s\t%s\n", f.output.c_str(), image_name(i).c_str(),
                    o.prompts[static_cast<size_t>(i / o.num_images_per_prompt)].c_str());
    }
    return 0;
}

}  // namespace t2i::cli
