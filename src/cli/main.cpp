// Implements: `t2i <command> [flags]`: dispatch only. The one place that catches exceptions:
// usage errors exit 2, every other error exits 1, each with a one-line message on stderr.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "util/device.h"

namespace {

struct Command {
    const char* name;
    int (*run)(const std::vector<std::string>&);
    const char* help;
};

const Command kCommands[] = {
    {"inspect", t2i::cli::inspect_command,
     "Summarize a model folder in diffusers layout (components, configs, parameters, dtypes)."},
    {"tokenize", t2i::cli::tokenize_command,
     "Print the CLIP token ids of prompts as JSON lines, exactly as transformers computes them."},
    {"train", t2i::cli::train_command,
     "Fine-tune a Stable Diffusion UNet as diffusers' train_text_to_image.py (same flags)."},
    {"train-lora", t2i::cli::train_lora_command,
     "Train a LoRA as diffusers' train_text_to_image_lora.py (pytorch_lora_weights.safetensors)."},
    {"generate", t2i::cli::generate_command,
     "Generate images from a model folder as diffusers' StableDiffusionPipeline does."},
    {"convert", t2i::cli::convert_command,
     "Convert between a diffusers folder and one original-layout (LDM) .safetensors file."},
    {"init-model", t2i::cli::init_model_command,
     "Write a freshly initialized SD model folder in diffusers layout (tiny, small, sd15)."},
    {"launch", t2i::cli::launch_command,
     "Start N worker processes of a command with torchrun's environment (multi-process / GPU)."},
    {"train-vae", t2i::cli::train_vae_command,
     "Fine-tune a model's VAE to reconstruct a dataset's images (for a freshly initialized "
     "model)."},
    {"image-grid", t2i::cli::image_grid_command, "Put images side by side in one PNG."},
    {"plot-loss", t2i::cli::plot_loss_command,
     "Draw a training run's loss (metrics.jsonl) as a PNG chart."},
    {"demo-data", t2i::cli::demo_data_command,
     "Write a small synthetic captioned image dataset (imagefolder + metadata.jsonl)."},
};

}  // namespace

bool t2i::cli::is_subcommand(const std::string& name) {
    for (const auto& c : kCommands)
        if (name == c.name) return name != "launch";
    return false;
}

namespace {

void print_usage(std::FILE* out) {
    std::fprintf(
        out, "usage: t2i <command> [flags]   (t2i <command> --help for its flags)\n\ncommands:\n");
    for (const auto& c : kCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.help);
}

}  // namespace

int main(int argc, char** argv) {
    // As Python does at startup (so torch's Gloo runs so under torchrun): a write to a socket
    // whose peer died returns EPIPE, which Gloo reports as an error naming the peer, instead of
    // SIGPIPE killing this process without a word (a rank killed mid-step took its survivors
    // with it before the heartbeat diagnosis could run).
    std::signal(SIGPIPE, SIG_IGN);
    // Before anything asks libtorch about CUDA (see util/device.h).
    if (t2i::command_line_wants_cuda(argc, argv)) t2i::load_cuda_runtime();
    if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
        print_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const std::string name = argv[1];
    const std::vector<std::string> args(argv + 2, argv + argc);
    for (const auto& c : kCommands) {
        if (name != c.name) continue;
        try {
            return c.run(args);
        } catch (const t2i::cli::UsageError& e) {
            std::fprintf(stderr, "t2i %s: error: %s\n", c.name, e.what());
            return 2;
        } catch (const t2i::DeviceError& e) {
            std::fprintf(stderr, "t2i %s: error: %s\n", c.name, e.what());
            return 2;
        } catch (const std::exception& e) {
            std::fprintf(stderr, "t2i %s: error: %s\n", c.name, e.what());
            return 1;
        }
    }
    std::fprintf(stderr, "t2i: unknown command '%s'\n", name.c_str());
    print_usage(stderr);
    return 2;
}
