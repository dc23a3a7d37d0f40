// Implements: EMAModel, the exponential moving average of the UNet weights (`--use_ema`,
// `--offload_ema`, `--foreach_ema`).
// Mirrors diffusers v0.27 src/diffusers/training_utils.py EMAModel: get_decay (with the optional
// warmup of @crowsonkb's notes, https://github.com/crowsonkb/k-diffusion), step, copy_to,
// store/restore, to(device), and the EMA state that save_pretrained writes into
// unet_ema/config.json (REFERENCE.md section 2, "EMA").
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace t2i::training {

// EMAModel's constructor arguments, with its defaults (the script passes only `foreach`).
struct EMAConfig {
    double decay              = 0.9999;
    double min_decay          = 0.0;
    int64_t update_after_step = 0;
    bool use_ema_warmup       = false;
    double inv_gamma          = 1.0;
    double power              = 2.0 / 3.0;
    bool foreach              = false;  // --foreach_ema: fused multi-tensor update
    bool offload              = false;  // --offload_ema: shadow on CPU (pinned with CUDA)
};

class EMAModel {
  public:
    // Clones `params` (e.g. unet->named_parameters()) as the shadow; with `offload` the shadow
    // lives on the CPU, otherwise on the parameters' device.
    EMAModel(const torch::OrderedDict<std::string, torch::Tensor>& params, EMAConfig config);

    // decay(optimization_step): 0 for the first update_after_step + 1 steps, then
    // 1 - (1 + k / inv_gamma)^-power (warmup) or (1 + k) / (10 + k), capped by `decay` and
    // floored by `min_decay`, with k = optimization_step - update_after_step - 1.
    double get_decay(int64_t optimization_step) const;

    // optimization_step += 1; s -= (1 - decay) (s - p) for parameters that require grad,
    // s = p for the others. `params` must be the same list (names, order) as at construction.
    void step(const torch::OrderedDict<std::string, torch::Tensor>& params);

    // Copies the shadow into `params` (the script's end-of-training ema_unet.copy_to(unet)).
    void copy_to(const torch::OrderedDict<std::string, torch::Tensor>& params) const;
    // store(): CPU clones of `params`; restore(): copies them back and drops them.
    void store(const torch::OrderedDict<std::string, torch::Tensor>& params);
    void restore(const torch::OrderedDict<std::string, torch::Tensor>& params);

    const EMAConfig& config() const { return config_; }
    int64_t optimization_step() const { return optimization_step_; }
    double cur_decay_value() const { return cur_decay_value_; }  // decay of the last step()
    std::map<std::string, torch::Tensor> shadow_map() const;     // name -> shadow (for saving)

    // The keys save_pretrained adds to unet_ema/config.json: decay, min_decay,
    // optimization_step, update_after_step, use_ema_warmup, inv_gamma, power.
    nlohmann::json config_json() const;
    // Restores those keys (from_pretrained); absent keys keep the current values. A key of the
    // wrong type or out of range throws naming `where` (the file) and the key.
    void load_config_json(const nlohmann::json& json, const std::string& where = "EMA state");
    // Loads shadow tensors by name (from unet_ema/diffusion_pytorch_model.safetensors); every
    // shadow name must be present with its shape.
    void load_shadow(const std::map<std::string, torch::Tensor>& tensors);

  private:
    void check_same_params(const torch::OrderedDict<std::string, torch::Tensor>& params,
                           const char* what) const;
    void step_loop(const std::vector<torch::Tensor>& params, double one_minus_decay);
    void step_foreach(const std::vector<torch::Tensor>& params, double one_minus_decay);

    EMAConfig config_;
    int64_t optimization_step_ = 0;
    double cur_decay_value_    = 0.0;
    std::vector<std::pair<std::string, torch::Tensor>> shadow_;
    std::vector<torch::Tensor> stored_;  // store() / restore()
};

}  // namespace t2i::training
