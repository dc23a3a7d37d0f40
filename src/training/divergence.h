// Implements: DivergenceGuard, what happens when a step's loss or gradient is not finite, so
// that a NaN never reaches a checkpoint or the saved model (t2i's addition; the original trains
// on and saves NaN weights).
//   - The update of such a step is skipped: weights, optimizer state, EMA and LR schedule stay
//     as they were, as accelerate's GradScaler skips an fp16 step with inf gradients. Every rank
//     sees the same reduced loss and gradient norm, so all ranks skip together.
//   - kMaxSteps such steps in a row stop the run with an error naming the step and the likely
//     causes; no checkpoint is written while a streak lasts, and the model is not saved after
//     one.
//   - Weights that diverge still give a finite loss on their last step and a NaN only on the
//     next one. So the newest checkpoint counts as confirmed only once a later step's loss was
//     finite (then rotation prunes to --checkpoints_total_limit); when that next loss is not
//     finite, the checkpoint is set aside as checkpoint-N-diverged and the one before it,
//     which rotation kept, stays `latest`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "io/output_folder.h"
#include "training/train_config.h"

namespace t2i::training {

class DivergenceGuard {
  public:
    static constexpr int kMaxSteps = 5;

    // `out`: the output folder on rank 0, nullptr on the other ranks.
    DivergenceGuard(const TrainConfig& config, io::OutputFolder* out);

    // Whether the update of a step with this (rank-reduced) loss and gradient norm may be
    // applied. Under fp16 loss scaling only the loss counts: the GradScaler handles gradients
    // that overflowed.
    static bool finite(double loss, double grad_norm, bool loss_scaling);

    // After optimizer step `step` (already counted): confirms or sets aside the pending
    // checkpoint, counts the streak, warns, and throws after kMaxSteps non-finite steps.
    void after_step(int64_t step, bool finite, double loss, double grad_norm);

    // Whether a checkpoint may be written now (no streak); logs why not.
    bool may_checkpoint(int64_t step) const;
    void checkpoint_written(int64_t step) { pending_ = step; }

    // At the end of the run: prunes the pending checkpoint's predecessors when the last step
    // was sound; otherwise throws, unless `stopping` (a signal: the run ends without a new
    // checkpoint, its earlier ones intact).
    void finish(bool stopping);

  private:
    std::string likely_causes() const;
    void settle(bool sound);

    const TrainConfig& config_;
    io::OutputFolder* out_;
    int streak_ = 0;                  // consecutive non-finite steps
    std::optional<int64_t> pending_;  // the newest checkpoint, until a later step confirms it
};

}  // namespace t2i::training
