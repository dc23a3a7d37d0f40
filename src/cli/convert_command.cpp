// Implements: `t2i convert` (CLI.md): a diffusers folder to one original-layout (LDM) checkpoint
// file and back, with the flag names of diffusers' conversion scripts; a LoRA file between the
// diffusers and kohya layouts.
// Mirrors: diffusers scripts/convert_diffusers_to_original_stable_diffusion.py (--model_path,
// --checkpoint_path, --half; t2i always writes safetensors) and
// scripts/convert_original_stable_diffusion_to_diffusers.py (--checkpoint_path, --dump_path; the
// configs, tokenizer and scheduler from --config instead of the Hub).
#include <cstdio>
#include <filesystem>
#include <set>

#include "cli/args.h"
#include "cli/commands.h"
#include "io/file_util.h"
#include "io/output_folder.h"
#include "models/lora.h"
#include "models/weights.h"
#include "pipeline/ldm_keys.h"
#include "pipeline/model_dir.h"
#include "pipeline/single_file.h"
#include "util/log.h"
#include "util/machine.h"
#include "util/torch_compat.h"

namespace t2i::cli {

namespace {

namespace fs = std::filesystem;

struct ConvertFlags {
    std::string model_path, checkpoint_path, dump_path, config, original_config_file, lora_path;
    bool half           = false;
    int64_t num_threads = 0;
};

// diffusers folder -> one file. The file is new: t2i never replaces an existing file here (it
// may be someone's only copy of a model).
void folder_to_single_file(const ConvertFlags& f) {
    if (fs::exists(fs::symlink_status(f.checkpoint_path)))
        throw UsageError("--checkpoint_path '" + f.checkpoint_path +
                         "' exists; t2i convert writes a new file and never replaces one: "
                         "choose another name or move it away");
    if (fs::path(f.checkpoint_path).extension() != ".safetensors")
        throw UsageError("--checkpoint_path '" + f.checkpoint_path +
                         "' must end in .safetensors (t2i writes no pickled .ckpt files)");
    if (!f.config.empty())
        throw UsageError("--config is for reading a single file (--dump_path); --model_path '" +
                         f.model_path + "' has its own configs");
    const auto model = [&] {
        try {
            return pipeline::ModelFolder::open(f.model_path);
        } catch (const std::invalid_argument& e) {
            throw UsageError(e.what());
        }
    }();
    if (model.checkpoint)
        throw UsageError("--model_path '" + f.model_path +
                         "' is a checkpoint-N folder (a UNet only); give a whole pipeline folder");
    pipeline::save_single_file(model, f.checkpoint_path, f.half, /*replace=*/false);
    std::printf("%s\n", f.checkpoint_path.c_str());
}

// One file -> a complete diffusers folder, written as training outputs are (io::OutputFolder:
// only entries t2i created there are replaced; model_index.json last).
void single_file_to_folder(const ConvertFlags& f) {
    if (!f.original_config_file.empty())
        throw UsageError(
            "--original_config_file (an LDM yaml) is not supported: t2i has no YAML reader. "
            "Give --config DIR, a diffusers folder of the same model family, or nothing (the "
            "configs are then inferred from the weights)");
    const auto model = [&] {
        try {
            if (!pipeline::is_single_file(f.checkpoint_path))
                throw std::invalid_argument("--checkpoint_path '" + f.checkpoint_path +
                                            "' does not exist");
            return pipeline::ModelFolder::open(f.checkpoint_path, "", f.config);
        } catch (const std::invalid_argument& e) {
            throw UsageError(e.what());
        }
    }();
    (void)model.tokenizer();  // a folder needs one: without --config, fail before writing
    if (!f.config.empty() && io::dir_exists(f.dump_path) && fs::equivalent(f.dump_path, f.config))
        throw UsageError("--dump_path is the --config folder; write the new model elsewhere");
    io::OutputFolder out(f.dump_path);
    // Every entry it will write, before any is: a folder of the user's there fails now, not
    // after the others were written.
    std::set<std::string> names{"model_index.json"};
    for (const auto& [name, lib_cls] : model.index.components) names.insert(name);
    try {
        out.check_not_foreign(names,
                              "t2i never replaces files it did not write: choose a new "
                              "--dump_path");
    } catch (const std::runtime_error& e) {
        throw UsageError(e.what());
    }
    const auto unet = model.load_unet(pipeline::LoadOptions{});
    pipeline::save_pipeline_folder(out, model, unet, model.scheduler_config().json(), "");
    std::printf("%s\n", f.dump_path.c_str());
}

// A LoRA file between layouts: diffusers / PEFT -> kohya / A1111 (what ComfyUI and A1111 load),
// and kohya -> diffusers (its module names resolved against --model_path's UNet and text
// encoder; alpha / r folded into lora_B, since diffusers' layout has no alpha).
void convert_lora(const ConvertFlags& f) {
    if (fs::exists(fs::symlink_status(f.dump_path)))
        throw UsageError("--dump_path '" + f.dump_path +
                         "' exists; t2i convert writes a new file and never replaces one");
    if (fs::path(f.dump_path).extension() != ".safetensors")
        throw UsageError("--dump_path '" + f.dump_path + "' must end in .safetensors");
    models::LoraFile lora;
    try {
        if (f.model_path.empty()) {
            lora = models::read_lora_file(f.lora_path, nullptr, nullptr);
        } else {
            const auto model = pipeline::ModelFolder::open(f.model_path, "", f.config);
            const auto unet  = model.load_unet(pipeline::LoadOptions{});
            const auto te    = model.load_text_encoder(pipeline::LoadOptions{});
            lora             = models::read_lora_file(f.lora_path, unet.get(), te.get(),
                                                      pipeline::ldm_unet_module_names(unet));
        }
    } catch (const std::invalid_argument& e) {
        throw UsageError(std::string(e.what()) +
                         (f.model_path.empty() ? " (a kohya LoRA needs --model_path DIR, the "
                                                 "model it was made for, to name its modules)"
                                               : ""));
    }
    auto out = lora.format == "kohya" ? models::to_diffusers(lora) : models::to_kohya(lora);
    if (f.half)
        for (auto& [k, v] : out) v = v.to(torch::kFloat16);
    models::check_finite(out, f.dump_path);  // also a value beyond fp16's range under --half
    io::save_safetensors(f.dump_path, out, {{"format", "pt"}}, /*replace=*/false);
    log_info("%s: %zu LoRA modules, %s layout -> %s layout", f.lora_path.c_str(),
             lora.modules.size(), lora.format.c_str(),
             lora.format == "kohya" ? "diffusers" : "kohya");
    std::printf("%s\n", f.dump_path.c_str());
}

}  // namespace

int convert_command(const std::vector<std::string>& args) {
    ConvertFlags f;
    ArgParser p(
        "t2i convert --model_path DIR --checkpoint_path FILE.safetensors [--half]\n"
        "       t2i convert --checkpoint_path FILE.safetensors --dump_path DIR [--config DIR]\n"
        "       t2i convert --lora_path LORA.safetensors --dump_path OUT.safetensors "
        "[--model_path DIR]",
        "Convert a Stable Diffusion 1.x / 2.x model between a diffusers folder and one "
        "original-layout (LDM)\ncheckpoint file, as diffusers' conversion scripts do. "
        "Safetensors only.");
    p.add(f.model_path, "model_path", "The diffusers folder to convert into one file.");
    p.add(f.checkpoint_path, "checkpoint_path",
          "The single .safetensors file: written (with --model_path) or read (with --dump_path).");
    p.add(f.half, "half", "Write the single file in fp16 (default fp32).");
    p.add(f.dump_path, "dump_path", "The diffusers folder to write from --checkpoint_path.");
    p.add(f.config, "config",
          "With --dump_path: a diffusers folder of the same model family whose configs, "
          "tokenizer and scheduler are used (without it the configs are inferred from the "
          "weights, and a tokenizer is missing).");
    p.add(f.original_config_file, "original_config_file",
          "The LDM yaml of the file. Not supported: give --config DIR.");
    p.add(f.lora_path, "lora_path",
          "A LoRA file to convert into --dump_path: diffusers / PEFT layout (t2i train-lora, "
          "save_lora_weights) -> kohya / A1111 layout (ComfyUI, A1111), or kohya -> diffusers "
          "(with --model_path, the model whose module names it uses). --half: fp16.");
    p.add(f.num_threads, "num_threads", "CPU threads (0 = all cores).");
    if (!p.parse(args)) return 0;
    if (f.num_threads < 0 || f.num_threads > max_useful_threads())
        throw UsageError("--num_threads must be in [0, " + std::to_string(max_useful_threads()) +
                         "] (0 = all cores), got " + std::to_string(f.num_threads));
    set_num_threads(static_cast<int>(f.num_threads));
    // Which conversion, by the flags given.
    if (!f.lora_path.empty()) {
        if (!f.checkpoint_path.empty() || f.dump_path.empty())
            throw UsageError(
                "--lora_path converts a LoRA file into --dump_path FILE.safetensors; "
                "--checkpoint_path is for whole models");
        convert_lora(f);
        return 0;
    }
    if (f.checkpoint_path.empty()) throw UsageError("--checkpoint_path is required");
    if (!f.model_path.empty() && !f.dump_path.empty())
        throw UsageError(
            "give either --model_path (folder -> file) or --dump_path (file -> "
            "folder), not both");
    if (!f.model_path.empty()) {
        if (f.half) log_info("writing fp16 weights (--half)");
        folder_to_single_file(f);
        return 0;
    }
    if (!f.dump_path.empty()) {
        if (f.half) throw UsageError("--half applies to --model_path (folder -> file) only");
        single_file_to_folder(f);
        return 0;
    }
    throw UsageError(
        "give --model_path DIR (a diffusers folder -> --checkpoint_path) or "
        "--dump_path DIR (--checkpoint_path -> a diffusers folder)");
}

}  // namespace t2i::cli
