// Implements: t2i's block-wise 8-bit AdamW for `--use_8bit_adam` (Dettmers et al. 2022, "8-bit
// Optimizers via Block-wise Quantization", https://arxiv.org/abs/2110.02861).
// Mirrors the scheme of bitsandbytes' AdamW8bit (optim_bits=8, block-wise): both moments are
// stored as 8-bit indices into a 256-entry dynamic (tree) quantization map, one absmax scale per
// block of 256 values; exp_avg uses the signed map, exp_avg_sq the unsigned one
// (bitsandbytes functional.create_dynamic_map). Each step dequantizes, updates in fp32, takes the
// parameter step with the fresh fp32 moments (as bitsandbytes' kernels do), then re-quantizes.
// Tensors with fewer than 4096 elements keep fp32 state (bitsandbytes' min_8bit_size).
// State: 2 bytes per parameter + 8 bytes per 256 (the two scales) = 2.03 bytes per parameter.
// Not bit-compatible with bitsandbytes (different rounding of the update); the loss curve is
// within noise of fp32 AdamW (tests/test_optimizer.cpp).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "training/optimizer.h"

namespace t2i::training {

constexpr int64_t kQuantBlockSize = 256;   // values per absmax scale
constexpr int64_t kMin8bitSize    = 4096;  // smaller tensors keep fp32 state

// bitsandbytes create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): 256 sorted values
// in [-1, 1] (signed) or [0, 1] (unsigned), dense near 0, float32 [256].
torch::Tensor dynamic_quant_map(bool is_signed);

// A tensor quantized block-wise: codes U8 [numel] index the map; absmax F32 [ceil(numel/B)].
struct QuantizedTensor {
    torch::Tensor codes;
    torch::Tensor absmax;
};

// Nearest map entry of x / absmax(block) per element. `map` from dynamic_quant_map.
QuantizedTensor quantize_blockwise(const torch::Tensor& x, const torch::Tensor& map,
                                   int64_t block_size = kQuantBlockSize);
// map[codes] * absmax(block), reshaped to `shape`, float32.
torch::Tensor dequantize_blockwise(const QuantizedTensor& q, const torch::Tensor& map,
                                   at::IntArrayRef shape, int64_t block_size = kQuantBlockSize);

class AdamW8bit : public AdamW {
  public:
    AdamW8bit(const NamedParameters& params, AdamWOptions options);

    // Adds `exp_avg_absmax.<param>` / `exp_avg_sq_absmax.<param>` (F32) next to the U8 codes
    // `exp_avg.<param>` / `exp_avg_sq.<param>` ([numel]) of quantized parameters; small ones
    // are stored as in AdamW.
    TensorMap state_dict() const override;
    void load_state_dict(const TensorMap& state) override;
    int64_t state_bytes() const override;

  protected:
    void update(size_t index, const torch::Tensor& param, const torch::Tensor& grad,
                int64_t step) override;

  private:
    bool quantized(size_t index) const;
    torch::Tensor signed_map_, unsigned_map_;  // [256] on the parameters' device when used
    std::vector<QuantizedTensor> exp_avg_q_, exp_avg_sq_q_;  // quantized parameters
    std::vector<torch::Tensor> exp_avg_, exp_avg_sq_;        // small (fp32) parameters
};

}  // namespace t2i::training
