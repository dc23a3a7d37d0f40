// Implements: ZeRO stage 1 (Rajbhandari et al. 2020, https://arxiv.org/abs/1910.02054) on top of
// the DDP gradient all-reduce, the way torch's ZeroRedundancyOptimizer
// (torch/distributed/optim/zero_redundancy_optimizer.py) does it: every parameter is owned by
// one rank (greedy, largest-first balance of element counts); a rank keeps AdamW / 8-bit AdamW
// state for its own parameters only and updates only them; the updated parameters are then
// broadcast by their owners. Checkpoints hold the full, unsharded optimizer state (gathered on
// rank 0, same file as a one-process run), so they resume on any world size.
#pragma once

#include <string>
#include <vector>

#include "dist/process_group.h"
#include "io/safetensors.h"

namespace t2i::dist {

// The same types as training::NamedParameters / training::TensorMap, named here so that dist/
// does not include training/ (which includes dist/).
using NamedParameters = torch::OrderedDict<std::string, torch::Tensor>;
using TensorMap       = io::TensorMap;

// owner[i] = the rank that owns parameter i. Deterministic: the same on every rank.
std::vector<int> partition_parameters(const NamedParameters& params, int world_size);

// The parameters that `rank` owns, in model order.
NamedParameters owned_parameters(const NamedParameters& params, const std::vector<int>& owner,
                                 int rank);

// The part of a full optimizer state dict (training::AdamW::state_dict layout) that belongs to
// `names`, with `step` / `step.<param>` rewritten for that subset.
TensorMap shard_optimizer_state(const TensorMap& full, const std::vector<std::string>& names);

// The inverse: one full state dict from per-rank shards; names[r] = the parameters of shard r.
TensorMap merge_optimizer_states(const std::vector<TensorMap>& shards,
                                 const std::vector<std::vector<std::string>>& names);

// Collective: every rank's `local` map arrives on rank 0 (returned there, in rank order; other
// ranks get an empty vector), through send / recv on the CPU group.
std::vector<TensorMap> gather_tensor_maps(ProcessGroup& group, const TensorMap& local,
                                          const std::string& what);

// Collective: each owner broadcasts its updated parameters to the others.
void sync_owned_parameters(ProcessGroup& group, const NamedParameters& params,
                           const std::vector<int>& owner);

}  // namespace t2i::dist
