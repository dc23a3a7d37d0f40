// Implements: training/validation.h.
#include "training/validation.h"

#include <cctype>
#include <filesystem>

#include "io/image_io.h"
#include "io/json_config.h"
#include "util/autocast.h"
#include "util/log.h"

namespace t2i::training {

std::string prompt_slug(const std::string& prompt) {
    std::string out;
    for (unsigned char ch : prompt) {
        if (std::isalnum(ch)) {
            out += static_cast<char>(std::tolower(ch));
        } else if (!out.empty() && out.back() != '-') {
            out += '-';
        }
        if (out.size() >= 60) break;
    }
    while (!out.empty() && out.back() == '-') out.pop_back();
    return out.empty() ? "prompt" : out;
}

torch::Tensor log_validation(const TrainConfig& c, pipeline::StableDiffusionPipeline& pipe,
                             const io::JsonConfig& scheduler_config, EMAModel* ema,
                             const std::string& prediction_type, uint64_t seed, int64_t step,
                             int64_t tensorboard_step, torch::ScalarType autocast_dtype,
                             io::EventWriter* tensorboard) {
    auto unet         = pipe.unet();
    const auto params = unet->named_parameters();
    if (ema) {
        ema->store(params);
        ema->copy_to(params);
    }
    unet->eval();
    auto json               = scheduler_config.json();
    json["prediction_type"] = prediction_type;  // the original keeps the base's (a quirk)
    auto scheduler = schedulers::make_scheduler("", io::JsonConfig(json, scheduler_config.path()));
    auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    const std::string dir = c.output_dir + "/validation/step-" + std::to_string(step);
    std::filesystem::create_directories(dir);
    std::vector<torch::Tensor> images;
    const auto prompts = c.validation_images();
    for (size_t i = 0; i < prompts.size(); ++i) {
        pipeline::GenerateOptions o;
        o.prompts             = {prompts[i]};
        o.num_inference_steps = c.lora ? 30 : 20;  // the LoRA script's log_validation: 30
        o.generator           = &generator;
        if (!c.resolution.square()) {        // t2i: --resolution W,H validates at W x H (a square
            o.height = c.resolution.height;  // --resolution keeps the pipeline's default size,
            o.width  = c.resolution.width;   // as the script)
        }
        AutocastGuard autocast(unet->parameters().front().device(), autocast_dtype);
        auto image = pipe(o, *scheduler).images[0];  // [H, W, 3]
        io::write_png(dir + "/" + std::to_string(i) + "-" + prompt_slug(prompts[i]) + ".png",
                      image);
        images.push_back(image);
    }
    if (ema) ema->restore(params);
    unet->train();
    auto stacked = torch::stack(images);  // [N, H, W, 3]
    if (tensorboard) tensorboard->add_image("validation", stacked, tensorboard_step);
    log_info("validation images: %s", dir.c_str());
    return stacked;
}

}  // namespace t2i::training
