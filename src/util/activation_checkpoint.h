// Implements: checkpoint(), activation (gradient) checkpointing for libtorch, which has no
// torch.utils.checkpoint: the forward pass keeps only the inputs of `fn`; backward runs `fn`
// again with grad enabled and differentiates that recomputation.
// Mirrors: torch/utils/checkpoint.py CheckpointFunction (use_reentrant=True, preserve_rng_state
// =True): forward-time CPU / CUDA RNG states and autocast state are replayed for the recompute,
// so dropout masks and dtypes match and gradients equal those of the plain forward.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

namespace t2i {

using CheckpointFn = std::function<torch::Tensor(const std::vector<torch::Tensor>& inputs)>;

// Returns fn(inputs) while storing none of fn's intermediate activations. `parameters` are the
// other tensors fn reads (the module's parameters()): they become inputs of the autograd node so
// their gradients reach .grad as in a plain forward. Undefined inputs are passed through as
// undefined. Outside grad mode, or when nothing requires grad, this is just fn(inputs).
// fn must be a pure function of inputs, parameters and the RNG (it runs twice), and must stay
// callable until backward (capture modules by shared_ptr or by a pointer the caller keeps alive).
torch::Tensor checkpoint(const CheckpointFn& fn, const std::vector<torch::Tensor>& inputs,
                         const std::vector<torch::Tensor>& parameters);

}  // namespace t2i
