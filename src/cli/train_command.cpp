// Implements: `t2i train [flags of train_text_to_image.py]`: flags -> TrainConfig -> train().
// The flag table lives in training/train_config.h; this file only moves strings into it.
#include "cli/args.h"
#include "cli/commands.h"
#include "training/trainer.h"

namespace t2i::cli {

int train_command(const std::vector<std::string>& args) {
    training::TrainConfig config;
    ArgParser parser(
        "t2i train --pretrained_model_name_or_path DIR (--train_data_dir DIR | --dataset_name "
        "PATH) "
        "[flags]",
        "Fine-tune the UNet of a Stable Diffusion model in diffusers layout, as diffusers'\n"
        "examples/text_to_image/train_text_to_image.py does, with the same flags and defaults.");
    training::visit_flags(config, [&](auto& field, const char* name, const char* help) {
        parser.add(field, name, help);
    });
    if (!parser.parse(args)) return 0;
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

}  // namespace t2i::cli
