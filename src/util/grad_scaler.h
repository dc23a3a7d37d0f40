// Implements: GradScaler, dynamic loss scaling for fp16 mixed-precision training: the loss is
// multiplied by a large factor so small fp16 gradients do not flush to zero, gradients are divided
// by it again before clipping and the optimizer step, and steps whose gradients overflowed are
// skipped while the factor backs off.
// Mirrors: torch/amp/grad_scaler.py (torch.cuda.amp.GradScaler) and the _amp_update_scale_
// kernel (aten/src/ATen/native/cuda/AmpKernels.cu): same defaults, same update rule, same
// state_dict keys. Device-agnostic: it works on whatever device the gradients live on.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

namespace t2i {

struct GradScalerOptions {
    double init_scale       = 65536.0;  // 2^16
    double growth_factor    = 2.0;      // scale *= this after growth_interval clean steps
    double backoff_factor   = 0.5;      // scale *= this after a step with inf / nan gradients
    int64_t growth_interval = 2000;
    bool enabled            = true;  // false: every method is a no-op (bf16 / fp32 training)
};

// Usage, once per optimizer step (as train_text_to_image.py does through accelerate):
//   scaler.scale(loss).backward();
//   scaler.unscale_(params);                      // before clip_grad_norm_
//   scaler.step([&] { optimizer.step(); });       // skipped when gradients overflowed
//   scaler.update();
class GradScaler {
  public:
    explicit GradScaler(const GradScalerOptions& options = {});

    bool is_enabled() const { return options_.enabled; }
    // loss * scale, in fp32 (or the loss itself when disabled).
    torch::Tensor scale(const torch::Tensor& loss) const;
    // Divides every defined .grad of `params` by the scale in place and records, on their
    // device, whether any gradient holds inf / nan (torch's fused kernel: no host read).
    // Throws when called twice before update() or on fp16 gradients.
    void unscale_(const std::vector<torch::Tensor>& params);
    // Runs `optimizer_step` unless the recorded gradients overflowed; returns whether it ran.
    // Unscales first (with the params passed to the last unscale_) if unscale_ was not called.
    bool step(const std::function<void()>& optimizer_step,
              const std::vector<torch::Tensor>& params = {});
    // Backs the scale off after an overflow, grows it after growth_interval clean steps.
    void update();

    double get_scale() const { return scale_; }
    int64_t growth_tracker() const { return growth_tracker_; }
    // Whether the unscaled gradients overflowed: read from the device on first use, unless the
    // caller read it together with other values and passed it to set_found_inf.
    bool found_inf();
    // The device flag of the last unscale_ (float [1], 1 = overflow); undefined before.
    const torch::Tensor& found_inf_tensor() const { return found_inf_device_; }
    void set_found_inf(bool found);

    // torch's GradScaler.state_dict(): scale, growth_factor, backoff_factor, growth_interval,
    // _growth_tracker. Empty when disabled, as in torch.
    nlohmann::json state_dict() const;
    void load_state_dict(const nlohmann::json& state);

  private:
    GradScalerOptions options_;
    float scale_;  // torch keeps the scale in a float32 tensor; so does this
    int64_t growth_tracker_ = 0;
    bool unscaled_          = false;  // unscale_ ran since the last update()
    bool found_inf_         = false;
    bool found_inf_known_   = true;  // found_inf_ holds the device flag's value
    torch::Tensor found_inf_device_;
};

}  // namespace t2i
