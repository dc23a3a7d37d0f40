// Implements: AdamW (Loshchilov & Hutter 2019, https://arxiv.org/abs/1711.05101) over named
// parameters, and gradient-norm clipping.
// Mirrors torch 1.13 torch/optim/adamw.py `_single_tensor_adamw` (the CPU default path the golden
// fixtures used, op for op, so results match bit for bit up to summation order) and
// torch/nn/utils/clip_grad.py `clip_grad_norm_`. The 8-bit variant (`--use_8bit_adam`) lives in
// training/adamw_8bit.h; both share this interface, so the trainer holds a std::unique_ptr<AdamW>.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace t2i::training {

using NamedParameters = torch::OrderedDict<std::string, torch::Tensor>;
using TensorMap       = io::TensorMap;

// train_text_to_image.py's `--adam_*` flags and `--learning_rate`, with its defaults.
struct AdamWOptions {
    double lr           = 1e-4;
    double beta1        = 0.9;
    double beta2        = 0.999;
    double weight_decay = 1e-2;  // decoupled, applied to every parameter (no bias/norm exclusion)
    double eps          = 1e-8;
    // torch.optim.AdamW(fused=True): libtorch's multi-tensor kernel (_fused_adamw_), one launch
    // for all parameters instead of ~6 per parameter. The same update up to float rounding
    // (tested against the reference path); make_adamw turns it on for CUDA parameters.
    bool fused = false;
};

class AdamW {
  public:
    // `params`: e.g. unet->named_parameters(); only entries with requires_grad are optimized.
    AdamW(const NamedParameters& params, AdamWOptions options);
    virtual ~AdamW() = default;

    // One update of every parameter whose grad is defined (torch skips grad None, and so does
    // this: such a parameter keeps its own, smaller step count). Runs under NoGradGuard.
    void step();
    void zero_grad();  // set_to_none, torch 2.x's default: grads become undefined

    void set_lr(double lr) { options_.lr = lr; }  // per step, from the LR schedule
    // The largest per-parameter step count (torch's `state[p]["step"]`).
    int64_t step_count() const;

    // Checkpoint state: `exp_avg.<param>`, `exp_avg_sq.<param>` (+ the 8-bit variant's
    // `.absmax` scales), `step` (I64 0-d) and `step.<param>` only for parameters whose count
    // differs from `step`. Tensors are CPU copies. load_state_dict checks names, shapes and
    // dtypes and throws naming the first mismatch.
    virtual TensorMap state_dict() const;
    virtual void load_state_dict(const TensorMap& state);
    // Bytes held by the optimizer state (moments and scales), for memory reports and tests.
    virtual int64_t state_bytes() const;

  protected:
    // The update of one parameter; `step` is its (already incremented) step count.
    virtual void update(size_t index, const torch::Tensor& param, const torch::Tensor& grad,
                        int64_t step);
    // `step` and the `step.<param>` exceptions into / out of a state dict.
    void write_steps(TensorMap& state) const;
    void read_steps(const TensorMap& state);

    AdamWOptions options_;
    std::vector<std::pair<std::string, torch::Tensor>> params_;
    std::vector<int64_t> steps_;  // per parameter, as torch's state["step"]

  private:
    void fused_step();  // options_.fused: every parameter with a grad in one kernel

    std::vector<torch::Tensor> exp_avg_, exp_avg_sq_;  // undefined until the first step
    std::vector<torch::Tensor> step_tensors_;  // fused path: steps_ as float32 on the device
};

namespace detail {
// Throws unless state[key] exists with like's shape and dtype (used by load_state_dict).
void check_state_tensor(const TensorMap& state, const std::string& key, const torch::Tensor& like);
}  // namespace detail

// torch.optim.AdamW, or t2i's block-wise 8-bit AdamW for `--use_8bit_adam`.
// The fused kernel (one pass over parameters, gradients and moments instead of about ten) is used
// (unless use_8bit) when every trainable parameter is a float32 tensor on one device, CPU or
// CUDA: the same update as the reference path up to float rounding (tests/test_optimizer.cpp),
// 99 -> 51 ms of a 35 M-parameter step on 2 CPU cores (README, Benchmarks).
std::unique_ptr<AdamW> make_adamw(const NamedParameters& params, const AdamWOptions& options,
                                  bool use_8bit);

// torch.nn.utils.clip_grad_norm_ (torch 1.13): total = ||(||g_1||, ..., ||g_n||)||_p over the
// parameters with a grad; clip_coef = max_norm / (total + 1e-6), clamped to <= 1; every grad is
// multiplied by it in place (a no-op when it is 1). Returns the pre-clip total norm as a 0-d
// float tensor on the grads' device (no host sync). norm_type: 2 or any p > 0, or INFINITY.
// Parameters without a grad are skipped; none at all returns 0.
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm,
                             double norm_type = 2.0);
torch::Tensor clip_grad_norm(const NamedParameters& params, double max_norm,
                             double norm_type = 2.0);

}  // namespace t2i::training
