// Implements: training/train_config.h: validation of flag values and combinations, and the
// effective config as JSON.
#include "training/train_config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>
#include <stdexcept>
#include <type_traits>

#include "util/log.h"
#include "util/machine.h"

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

// lo <= value <= hi; NaN and infinities fail (no flag means anything by them, and `nan > 0` and
// `nan <= 0` are both false, so one-sided checks let NaN through).
void require_range(const std::string& flag, double value, double lo, double hi) {
    if (value >= lo && value <= hi) return;
    char buf[160];
    std::snprintf(buf, sizeof buf, "must be in [%.10g, %.10g], got %.10g", lo, hi, value);
    bad(flag, buf);
}

void require_positive(const std::string& flag, double value) {
    if (!(value > 0) || !std::isfinite(value))
        bad(flag, "must be a finite number > 0, got " + std::to_string(value));
}

// Step and epoch counts stay far below 2^63, so products of them (steps x batches, epochs x
// steps per epoch) cannot overflow.
constexpr double kMaxCount = 1e12;

const std::string kOffline =
    " t2i reads local folders only and never uses the network; download first, e.g. "
    "`huggingface-cli download NAME --local-dir DIR`, and pass DIR.";

}  // namespace

std::string Resolution::str() const {
    return square() ? std::to_string(width) : std::to_string(width) + "," + std::to_string(height);
}

Resolution Resolution::parse(const std::string& text) {
    // Digits only (no sign, space or exponent), one comma at most, each side below 10^9.
    const auto number = [&](const std::string& part) -> int64_t {
        if (part.empty() || part.size() > 9 ||
            part.find_first_not_of("0123456789") != std::string::npos)
            throw std::invalid_argument(
                "expected N or W,H (width,height) in pixels, e.g. 512 "
                "or 512,768; got '" +
                text + "'");
        return std::stoll(part);
    };
    const auto comma = text.find(',');
    if (comma == std::string::npos) return Resolution(number(text));
    return Resolution(number(text.substr(0, comma)), number(text.substr(comma + 1)));
}

void to_json(nlohmann::json& j, const Resolution& r) {
    j = r.square() ? nlohmann::json(r.width) : nlohmann::json(r.str());
}

void TrainConfig::validate() const {
    if (pretrained_model_name_or_path.empty())
        bad("pretrained_model_name_or_path",
            "is required (a local model folder in diffusers layout)");
    if (single_file_config && std::filesystem::is_directory(pretrained_model_name_or_path))
        bad("config", "is for a single .safetensors file as --pretrained_model_name_or_path; '" +
                          pretrained_model_name_or_path +
                          "' is a model folder with its own configs");
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
    for (const int64_t side : {resolution.width, resolution.height}) {
        if (side <= 0 || side % 8 != 0)
            bad("resolution",
                "each side must be a positive multiple of 8 (the VAE downscales by "
                "8), got " +
                    resolution.str());
        require_range("resolution", double(side), 8, 16384);
    }
    require_one_of(
        "image_interpolation_mode", image_interpolation_mode,
        {"nearest", "nearest_exact", "bilinear", "bicubic", "box", "hamming", "lanczos"});
    if (max_train_samples) require_range("max_train_samples", double(*max_train_samples), 1, 1e15);
    const double threads = max_useful_threads();
    require_range("dataloader_num_workers", double(dataloader_num_workers), 0, threads);
    require_range("num_threads", double(num_threads), 0, threads);
    require_range("train_batch_size", double(train_batch_size), 1, 65536);
    // The batch's pixels alone (float32) beyond the machine's memory can never train; activations
    // take many times more, so this only catches the impossible, before anything is loaded.
    const double pixels_bytes =
        double(train_batch_size) * 3.0 * double(resolution.width) * double(resolution.height) * 4.0;
    if (const double ram = double(physical_memory_bytes()); ram > 0 && pixels_bytes > ram)
        bad("train_batch_size",
            strformat("%lld images of %lld x %lld pixels take %.1f GB as float32 tensors alone, "
                      "more than this machine's %.1f GB of memory; lower --train_batch_size or "
                      "--resolution (--gradient_accumulation_steps keeps the effective batch)",
                      (long long)train_batch_size, (long long)resolution.width,
                      (long long)resolution.height, pixels_bytes / 1e9, ram / 1e9));
    require_range("num_train_epochs", double(num_train_epochs), 1, kMaxCount);
    if (max_train_steps) require_range("max_train_steps", double(*max_train_steps), 1, kMaxCount);
    require_range("gradient_accumulation_steps", double(gradient_accumulation_steps), 1, 1e6);
    require_range("input_perturbation", input_perturbation, 0, 100);
    require_range("noise_offset", noise_offset, 0, 100);
    if (snr_gamma) require_range("snr_gamma", *snr_gamma, 1e-12, 1e12);
    require_range("dream_detail_preservation", dream_detail_preservation, 0, 100);
    if (dream_training && prediction_type && *prediction_type == "v_prediction")
        bad("dream_training", "DREAM supports epsilon prediction only (as diffusers)");
    require_positive("learning_rate", learning_rate);
    require_range("adam_beta1", adam_beta1, 0, std::nextafter(1.0, 0.0));
    require_range("adam_beta2", adam_beta2, 0, std::nextafter(1.0, 0.0));
    require_range("adam_weight_decay", adam_weight_decay, 0, 1e6);
    require_range("adam_epsilon", adam_epsilon, 1e-30, 1);
    require_positive("max_grad_norm", max_grad_norm);
    require_one_of("lr_scheduler", lr_scheduler,
                   {"linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                    "constant_with_warmup"});
    require_range("lr_warmup_steps", double(lr_warmup_steps), 0, kMaxCount);
    if (lr_scheduler == "polynomial" && learning_rate <= 1e-7)
        bad("learning_rate", "must be > lr_end (1e-7) for the polynomial schedule");
    if (mixed_precision)
        require_one_of("mixed_precision", *mixed_precision, {"no", "fp16", "bf16"});
    if (output_dir.empty()) bad("output_dir", "must not be empty");
    require_range("checkpointing_steps", double(checkpointing_steps), 1, kMaxCount);
    if (checkpoints_total_limit)
        require_range("checkpoints_total_limit", double(*checkpoints_total_limit), 1, 1e6);
    require_range("validation_epochs", double(validation_epochs), 1, kMaxCount);
    require_range("validation_steps", double(validation_steps), 0, kMaxCount);
    if (report_to == "wandb" || report_to == "comet_ml")
        bad("report_to", report_to +
                             " is not available offline; use tensorboard (the default), "
                             "jsonl or none");
    require_one_of("report_to", report_to, {"tensorboard", "jsonl", "none", "all"});
    // The logs go inside --output_dir, never elsewhere.
    const auto logs = std::filesystem::path(logging_dir).lexically_normal();
    if (logging_dir.empty() || logs.is_absolute() || *logs.begin() == "..")
        bad("logging_dir",
            "must be a folder inside --output_dir (a relative path without '..'), "
            "got '" +
                logging_dir + "'");
    // The TensorBoard run folder inside logging_dir (accelerate's layout): one plain name.
    if (tracker_project_name.empty() || tracker_project_name == "." ||
        tracker_project_name == ".." ||
        tracker_project_name.find_first_of("/\\") != std::string::npos)
        bad("tracker_project_name",
            "names the TensorBoard run folder inside --logging_dir: one folder name without '/', "
            "got '" +
                tracker_project_name + "'");
    if (device != "cpu" && device.rfind("cuda", 0) != 0)
        bad("device", "'" + device + "' is not cpu, cuda or cuda:N");
    require_range("logging_steps", double(logging_steps), 1, kMaxCount);
    require_one_of("text_clean", text_clean, {"ftfy", "basic"});
    if (stop_after_steps)
        require_range("stop_after_steps", double(*stop_after_steps), 1, kMaxCount);
    if (!ddp_backend.empty()) require_one_of("ddp_backend", ddp_backend, {"gloo", "nccl"});
    if (ddp_backend == "nccl" && device == "cpu")
        bad("ddp_backend",
            "nccl moves CUDA tensors only; give --device cuda, or use gloo on the CPU");
    require_range("ddp_timeout", ddp_timeout, 1e-3, 1e7);
    require_range("ddp_bucket_cap_mb", ddp_bucket_cap_mb, 1e-3, 1e5);
    require_range("caption_dropout_rate", caption_dropout_rate, 0, 1);
    if (proportion_empty_prompts) {
        require_range("proportion_empty_prompts", *proportion_empty_prompts, 0, 1);
        if (caption_dropout_rate > 0)
            bad("proportion_empty_prompts",
                "is another name for --caption_dropout_rate; give one of them");
    }
    require_range("keep_tokens", double(keep_tokens), 0, 1e6);
    if ((caption_dropout_rate > 0 || proportion_empty_prompts.value_or(0) > 0 || shuffle_caption) &&
        (cache_text_encoder_outputs || cache_text_encoder_outputs_to_disk))
        bad(cache_text_encoder_outputs ? "cache_text_encoder_outputs"
                                       : "cache_text_encoder_outputs_to_disk",
            "encodes each caption once, but --caption_dropout_rate / --shuffle_caption change "
            "the caption at every draw (as kohya-ss, the two do not combine); drop one");
    require_range("num_validation_images", double(num_validation_images), 1, 1000);
    if (lora) require_range("rank", double(rank), 1, 1 << 16);
    if (enable_bucket) validate_buckets();
    if (zero_stage != 0 && zero_stage != 1)
        bad("zero_stage",
            "must be 0 (off) or 1 (sharded optimizer state); stages 2 and 3 are "
            "not implemented");
}

void TrainConfig::validate_buckets() const {
    // kohya adjusts min / max to the steps with a warning; t2i refuses (no silent correction).
    require_range("bucket_reso_steps", double(bucket_reso_steps), 8, 4096);
    if (bucket_reso_steps % 8 != 0)
        bad("bucket_reso_steps", "must be a multiple of 8 (the VAE downscales by 8), got " +
                                     std::to_string(bucket_reso_steps));
    if (bucket_no_upscale) return;  // min / max are not used (kohya ignores them too)
    for (const auto& [flag, value] :
         {std::pair<const char*, int64_t>{"min_bucket_reso", min_bucket_reso},
          {"max_bucket_reso", max_bucket_reso}}) {
        require_range(flag, double(value), double(bucket_reso_steps), 16384);
        if (value % bucket_reso_steps != 0)
            bad(flag, "must be a multiple of --bucket_reso_steps " +
                          std::to_string(bucket_reso_steps) + ", got " + std::to_string(value));
    }
    // kohya: min(resolution) >= min_bucket_reso and max(resolution) <= max_bucket_reso.
    const int64_t shorter = std::min(resolution.width, resolution.height),
                  longer  = std::max(resolution.width, resolution.height);
    if (min_bucket_reso > shorter || max_bucket_reso < longer)
        bad(min_bucket_reso > shorter ? "min_bucket_reso" : "max_bucket_reso",
            "must satisfy --min_bucket_reso <= each side of --resolution <= --max_bucket_reso "
            "(kohya's rule); got " +
                std::to_string(min_bucket_reso) + " <= " + resolution.str() +
                " <= " + std::to_string(max_bucket_reso));
}

bool flag_in_command(const std::string& name, bool lora) {
    static const std::set<std::string> full_only{"use_ema",
                                                 "offload_ema",
                                                 "foreach_ema",
                                                 "non_ema_revision",
                                                 "dream_training",
                                                 "dream_detail_preservation",
                                                 "input_perturbation",
                                                 "tracker_project_name",
                                                 "validation_prompts"};
    static const std::set<std::string> lora_only{"rank"};
    return lora ? !full_only.count(name) : !lora_only.count(name);
}

TrainConfig TrainConfig::lora_defaults() {
    TrainConfig c;
    c.lora                 = true;
    c.output_dir           = "sd-model-finetuned-lora";
    c.validation_epochs    = 1;
    c.tracker_project_name = "text2image-fine-tune";  // the LoRA script's init_trackers name
    return c;
}

std::vector<std::string> TrainConfig::validation_images() const {
    auto prompts = validation_prompts;
    if (validation_prompt)
        prompts.insert(prompts.end(), size_t(std::clamp<int64_t>(num_validation_images, 0, 1000)),
                       *validation_prompt);
    return prompts;
}

nlohmann::json TrainConfig::to_json() const {
    nlohmann::json out = nlohmann::json::object();
    visit_flags(*this, [&](const auto& field, const char* name, const char*) {
        using T = std::decay_t<decltype(field)>;
        if (!flag_in_command(name, lora)) return;
        if constexpr (is_optional<T>::value) {
            out[name] = field ? nlohmann::json(*field) : nlohmann::json();
        } else {
            out[name] = field;
        }
    });
    return out;
}

}  // namespace t2i::training
