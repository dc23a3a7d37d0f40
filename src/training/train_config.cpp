// Implements: training/train_config.h: validation of flag values and combinations, and the
// effective config as JSON.
#include "training/train_config.h"

#include <algorithm>
#include <stdexcept>
#include <type_traits>

namespace t2i::training {

namespace {

template <typename T>
struct is_optional : std::false_type {};
template <typename T>
struct is_optional<std::optional<T>> : std::true_type {};

[[noreturn]] void bad(const std::string& flag, const std::string& what) {
    throw FlagError("--" + flag + ": " + what);
}

void require_one_of(const std::string& flag, const std::string& value,
                    const std::vector<std::string>& choices) {
    if (std::find(choices.begin(), choices.end(), value) != choices.end()) return;
    std::string list;
    for (const auto& c : choices) list += (list.empty() ? "" : ", ") + c;
    bad(flag, "'" + value + "' is not one of " + list);
}

void require_positive(const std::string& flag, double value) {
    if (!(value > 0)) bad(flag, "must be > 0, got " + std::to_string(value));
}

void require_non_negative(const std::string& flag, double value) {
    if (!(value >= 0)) bad(flag, "must be >= 0, got " + std::to_string(value));
}

const std::string kOffline =
    " t2i reads local folders only and never uses the network; download first, e.g. "
    "`huggingface-cli download NAME --local-dir DIR`, and pass DIR.";

}  // namespace

void TrainConfig::validate() const {
    if (pretrained_model_name_or_path.empty())
        bad("pretrained_model_name_or_path",
            "is required (a local model folder in diffusers layout)");
    if (revision) bad("revision", "Hub revisions are not supported." + kOffline);
    if (non_ema_revision) bad("non_ema_revision", "Hub revisions are not supported." + kOffline);
    if (dataset_config_name)
        bad("dataset_config_name", "Hub dataset configs are not supported." + kOffline);
    if (push_to_hub || hub_token || hub_model_id)
        bad(push_to_hub ? "push_to_hub"
            : hub_token ? "hub_token"
                        : "hub_model_id",
            "uploading to the Hub is not supported (t2i works offline); upload --output_dir "
            "yourself");
    if (!dataset_name && !train_data_dir)
        bad("train_data_dir", "give --train_data_dir DIR or --dataset_name PATH (a local dataset)");
    if (prediction_type)
        require_one_of("prediction_type", *prediction_type, {"epsilon", "v_prediction"});
    if (resolution <= 0 || resolution % 8 != 0)
        bad("resolution", "must be a positive multiple of 8 (the VAE downscales by 8), got " +
                              std::to_string(resolution));
    require_one_of(
        "image_interpolation_mode", image_interpolation_mode,
        {"nearest", "nearest_exact", "bilinear", "bicubic", "box", "hamming", "lanczos"});
    if (max_train_samples && *max_train_samples < 1) bad("max_train_samples", "must be >= 1");
    if (dataloader_num_workers < 0) bad("dataloader_num_workers", "must be >= 0");
    if (train_batch_size < 1) bad("train_batch_size", "must be >= 1");
    if (num_train_epochs < 1) bad("num_train_epochs", "must be >= 1");
    if (max_train_steps && *max_train_steps < 1) bad("max_train_steps", "must be >= 1");
    if (gradient_accumulation_steps < 1) bad("gradient_accumulation_steps", "must be >= 1");
    require_non_negative("input_perturbation", input_perturbation);
    require_non_negative("noise_offset", noise_offset);
    if (snr_gamma) require_positive("snr_gamma", *snr_gamma);
    if (dream_training && prediction_type && *prediction_type == "v_prediction")
        bad("dream_training", "DREAM supports epsilon prediction only (as diffusers)");
    require_positive("learning_rate", learning_rate);
    if (adam_beta1 < 0 || adam_beta1 >= 1) bad("adam_beta1", "must be in [0, 1)");
    if (adam_beta2 < 0 || adam_beta2 >= 1) bad("adam_beta2", "must be in [0, 1)");
    require_non_negative("adam_weight_decay", adam_weight_decay);
    require_positive("adam_epsilon", adam_epsilon);
    require_positive("max_grad_norm", max_grad_norm);
    require_one_of("lr_scheduler", lr_scheduler,
                   {"linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                    "constant_with_warmup"});
    if (lr_warmup_steps < 0) bad("lr_warmup_steps", "must be >= 0");
    if (lr_scheduler == "polynomial" && learning_rate <= 1e-7)
        bad("learning_rate", "must be > lr_end (1e-7) for the polynomial schedule");
    if (mixed_precision)
        require_one_of("mixed_precision", *mixed_precision, {"no", "fp16", "bf16"});
    if (checkpointing_steps < 1) bad("checkpointing_steps", "must be >= 1");
    if (checkpoints_total_limit && *checkpoints_total_limit < 1)
        bad("checkpoints_total_limit", "must be >= 1");
    if (validation_epochs < 1) bad("validation_epochs", "must be >= 1");
    if (validation_steps < 0) bad("validation_steps", "must be >= 0 (0 = off)");
    if (report_to == "wandb" || report_to == "comet_ml")
        bad("report_to", report_to +
                             " is not available offline; use tensorboard (the default), "
                             "jsonl or none");
    require_one_of("report_to", report_to, {"tensorboard", "jsonl", "none", "all"});
    if (num_threads < 0) bad("num_threads", "must be >= 0 (0 = all cores)");
    if (device != "cpu" && device.rfind("cuda", 0) != 0)
        bad("device", "'" + device + "' is not cpu, cuda or cuda:N");
    if (logging_steps < 1) bad("logging_steps", "must be >= 1");
    require_one_of("text_clean", text_clean, {"ftfy", "basic"});
    if (stop_after_steps && *stop_after_steps < 1) bad("stop_after_steps", "must be >= 1");
    if (!ddp_backend.empty()) require_one_of("ddp_backend", ddp_backend, {"gloo", "nccl"});
    if (!(ddp_timeout > 0)) bad("ddp_timeout", "must be > 0 seconds");
    if (!(ddp_bucket_cap_mb > 0)) bad("ddp_bucket_cap_mb", "must be > 0");
    if (zero_stage != 0 && zero_stage != 1)
        bad("zero_stage",
            "must be 0 (off) or 1 (sharded optimizer state); stages 2 and 3 are "
            "not implemented");
}

nlohmann::json TrainConfig::to_json() const {
    nlohmann::json out = nlohmann::json::object();
    visit_flags(*this, [&](const auto& field, const char* name, const char*) {
        using T = std::decay_t<decltype(field)>;
        if constexpr (is_optional<T>::value) {
            out[name] = field ? nlohmann::json(*field) : nlohmann::json();
        } else {
            out[name] = field;
        }
    });
    return out;
}

}  // namespace t2i::training
