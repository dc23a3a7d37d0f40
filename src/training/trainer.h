// Implements: t2i train: the training loop of train_text_to_image.py, as one flat function.
#pragma once

#include "training/train_config.h"

namespace t2i::training {

// Exit status of a run: finished, or stopped by SIGINT / SIGTERM after writing a checkpoint.
enum class TrainResult { kFinished, kInterrupted };

// Runs a whole training job. Throws on errors (bad data, I/O); only main catches.
TrainResult train(const TrainConfig& config);

}  // namespace t2i::training
