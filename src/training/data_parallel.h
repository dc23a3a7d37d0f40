// Implements: what `t2i train` needs from several processes, in one place, so that the loop in
// trainer.cpp reads like the single-process script: the part of accelerate's Accelerator that
// train_text_to_image.py uses with DDP (and DeepSpeed ZeRO-1): joining the world from torchrun's
// environment, the same seed and resume checkpoint on every rank, rank 0's weights broadcast,
// gradient synchronization on the optimizer step, the mean loss, an agreed stop, ZeRO-1's
// parameter ownership and optimizer-state gathering for checkpoints.
// Without a torchrun environment (one process) every call is a no-op that returns its input.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/loader.h"
#include "dist/process_group.h"
#include "training/checkpoint.h"
#include "training/loss.h"
#include "training/optimizer.h"
#include "training/train_config.h"

namespace t2i::training {

class DataParallel {
  public:
    // Joins `world` (dist::WorldInfo::from_env(); throws for an unreachable rendezvous). `device`
    // is the process's device (--device, cuda:LOCAL_RANK).
    DataParallel(const TrainConfig& config, const dist::WorldInfo& world,
                 const torch::Device& device);

    // The step's draws are made for the whole world's batch (the same generator state on every
    // rank): this rank's rows of them (all of them with one process).
    StepDraws local_draws(const StepDraws& draws, const data::Batch& batch) const;
    // This rank's share of the step's samples, which weights its loss so that the sum over ranks
    // is the mean over all (1 with one process).
    double loss_share(const data::Batch& batch) const;

    bool active() const { return group_ != nullptr; }  // more than one process
    int world_size() const { return group_ ? group_->size() : 1; }
    int rank() const { return group_ ? group_->rank() : 0; }
    bool is_main() const { return rank() == 0; }
    dist::ProcessGroup* group() { return group_.get(); }

    // Rank 0's value on every rank (the seed when none was given, the resume checkpoint).
    uint64_t shared_seed(uint64_t local);
    std::optional<std::string> shared_path(const std::optional<std::string>& on_main,
                                           const std::string& key);
    // Throws on every rank when the ranks read datasets of different sizes.
    void check_dataset_size(int64_t size);

    // ZeRO-1: partitions `params` among the ranks; returns those this rank's optimizer updates
    // (all of them without ZeRO-1).
    NamedParameters optimizer_parameters(const NamedParameters& params);
    // Picks this rank's share of a full optimizer state from a checkpoint (empty without ZeRO-1).
    OptimizerStateFilter optimizer_state_filter() const;
    // Rank 0's weights everywhere, then the gradient hooks (after loading / resuming).
    void broadcast_and_hook(const std::vector<torch::Tensor>& params, double bucket_cap_mb);

    // Call before the backward pass of an optimizer step's last micro-batch.
    void before_last_backward();
    // After the micro-batches: gradients summed over ranks into .grad (the loss was weighted by
    // each rank's share); `loss_sum`, `samples` become totals, `stop` true if any rank stops.
    void sync_gradients(double& loss_sum, int64_t& samples, bool& stop, int64_t global_step);
    // After optimizer.step(): ZeRO-1 owners broadcast their updated parameters.
    void after_optimizer_step(const std::vector<torch::Tensor>& params);
    // The full optimizer state for a checkpoint on rank 0 (empty elsewhere). Collective under
    // ZeRO-1: every rank must call it.
    TensorMap checkpoint_optimizer_state(const AdamW& optimizer);

    double comm_wait_seconds() const { return reducer_ ? reducer_->last_wait_seconds() : 0.0; }

  private:
    std::unique_ptr<dist::ProcessGroup> group_;
    std::unique_ptr<dist::GradReducer> reducer_;
    bool zero1_    = false;
    bool prepared_ = false;
    NamedParameters params_;
    std::vector<int> owner_;                             // ZeRO-1: rank owning parameter i
    std::vector<std::vector<std::string>> owned_names_;  // ZeRO-1: per rank
};

}  // namespace t2i::training
