// Fuzz target: a checkpoint's training_state.json (training/checkpoint read_trainer_state),
// then what resume does with it: the LR schedule state, the grad scaler state, and the EMA
// state kept in unet_ema/config.json.
#include "fuzz_target.h"
#include "training/checkpoint.h"
#include "training/ema.h"
#include "training/lr_schedule.h"
#include "util/grad_scaler.h"

T2I_FUZZ_TARGET(checkpoint_state) {
    const std::string file = t2i::fuzz::scratch_dir() + "/training_state.json";
    t2i::fuzz::write_file(file, std::string(reinterpret_cast<const char*>(data), size));
    try {
        const auto config = t2i::io::read_json(file);  // as unet_ema/config.json
        torch::OrderedDict<std::string, torch::Tensor> params;
        params.insert("w", torch::zeros({2}));
        t2i::training::EMAModel ema(params, {});
        ema.load_config_json(config.json(), file);
    } catch (const std::exception&) {
    }
    const auto state = t2i::training::read_trainer_state(file);
    t2i::training::LRScheduleConfig lc;
    lc.name = state.lr_schedule.value("name", std::string("constant"));
    try {
        t2i::training::LRSchedule schedule(lc, 1e-4);
        schedule.load_state(state.lr_schedule);
        (void)schedule.get_lr();
    } catch (const std::exception&) {
    }
    t2i::GradScalerOptions options;
    options.enabled = true;
    t2i::GradScaler scaler(options);
    if (state.extra.contains("grad_scaler") && !state.extra.at("grad_scaler").empty())
        scaler.load_state_dict(state.extra.at("grad_scaler"));
}
