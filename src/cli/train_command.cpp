// Implements: `t2i train [flags of train_text_to_image.py]` and `t2i train-lora [flags of
// train_text_to_image_lora.py]`: flags -> TrainConfig -> train(). The flag table lives in
// training/train_config.h (flag_in_command picks each command's flags); this file only moves
// strings into it.
#include "cli/args.h"
#include "cli/commands.h"
#include "training/trainer.h"

namespace t2i::cli {

namespace {

int run_training(training::TrainConfig config, const std::vector<std::string>& args,
                 const char* usage, const char* description) {
    ArgParser parser(usage, description);
    training::visit_flags(config, [&](auto& field, const char* name, const char* help) {
        if (training::flag_in_command(name, config.lora)) parser.add(field, name, help);
    });
    if (!parser.parse(args)) return 0;
    config.lr_warmup_steps_given = parser.given("lr_warmup_steps");
    try {
        config.validate();
    } catch (const training::FlagError& e) {
        throw UsageError(e.what());
    }
    try {
        const auto result = training::train(config);
        return result == training::TrainResult::kInterrupted ? 130 : 0;
    } catch (const training::FlagError& e) {
        throw UsageError(e.what());
    }
}

}  // namespace

int train_command(const std::vector<std::string>& args) {
    return run_training(
        training::TrainConfig{}, args,
        "t2i train --pretrained_model_name_or_path DIR (--train_data_dir DIR | --dataset_name "
        "PATH) [flags]",
        "Fine-tune the UNet of a Stable Diffusion model in diffusers layout, as diffusers'\n"
        "examples/text_to_image/train_text_to_image.py does, with the same flags and defaults.");
}

int train_lora_command(const std::vector<std::string>& args) {
    return run_training(
        training::TrainConfig::lora_defaults(), args,
        "t2i train-lora --pretrained_model_name_or_path DIR (--train_data_dir DIR | "
        "--dataset_name PATH) [flags]",
        "Train a LoRA on the UNet's attention projections of a Stable Diffusion model, as\n"
        "diffusers' examples/text_to_image/train_text_to_image_lora.py does, with the same flags\n"
        "and defaults. Writes OUT/pytorch_lora_weights.safetensors (diffusers' layout; `t2i\n"
        "generate --lora`, diffusers' load_lora_weights; `t2i convert --lora_path` for kohya).");
}

}  // namespace t2i::cli
