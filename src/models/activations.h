// Implements: diffusers' get_activation (models/activations.py): the act_fn names config.json uses.
#pragma once

#include <torch/torch.h>

#include <stdexcept>
#include <string>

namespace t2i::models {

enum class Activation { kSiLU, kGELU, kMish, kReLU };

inline Activation parse_activation(const std::string& name, const std::string& context) {
    if (name == "silu" || name == "swish") return Activation::kSiLU;
    if (name == "gelu") return Activation::kGELU;
    if (name == "mish") return Activation::kMish;
    if (name == "relu") return Activation::kReLU;
    throw std::runtime_error(context + ": unsupported act_fn '" + name +
                             "' (expected one of silu, swish, gelu, mish, relu)");
}

inline torch::Tensor apply_activation(Activation act, const torch::Tensor& x) {
    switch (act) {
        case Activation::kSiLU:
            return torch::silu(x);
        case Activation::kGELU:
            return torch::gelu(x);
        case Activation::kMish:
            return torch::mish(x);
        case Activation::kReLU:
            return torch::relu(x);
    }
    return x;
}

}  // namespace t2i::models
