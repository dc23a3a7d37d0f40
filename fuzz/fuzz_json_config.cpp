// Fuzz target: a component's config.json (models' and schedulers' from_json with every check
// of models/config_limits.h, each sampler built and its timesteps set) and a model_index.json
// (pipeline/model_dir).
#include "fuzz_target.h"
#include "io/json_config.h"
#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"
#include "pipeline/model_dir.h"
#include "schedulers/ddpm.h"
#include "schedulers/scheduler.h"

namespace {

template <typename F>
void attempt(F&& f) {
    try {
        f();
    } catch (const std::exception&) {
    }
}

}  // namespace

T2I_FUZZ_TARGET(json_config) {
    const std::string dir = t2i::fuzz::scratch_dir();
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    t2i::fuzz::write_file(dir + "/config.json", bytes);
    t2i::fuzz::write_file(dir + "/model_index.json", bytes);
    attempt([&] { t2i::pipeline::read_pipeline_index(dir); });
    const auto config = t2i::io::read_json(dir + "/config.json");
    attempt([&] { t2i::models::UNet2DConditionConfig::from_json(config); });
    attempt([&] { t2i::models::AutoencoderKLConfig::from_json(config); });
    attempt([&] { t2i::models::CLIPTextConfig::from_json(config); });
    attempt([&] {
        t2i::schedulers::DDPMScheduler(t2i::schedulers::SchedulerConfig::from_json(config));
    });
    for (const auto& name : t2i::schedulers::kSchedulerNames)
        attempt([&] {
            auto scheduler = t2i::schedulers::make_scheduler(name, config);
            scheduler->set_timesteps(1 + static_cast<int64_t>(size % 50));
        });
}
