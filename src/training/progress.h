// Implements: watching a run: a progress bar (step, loss, lr, s/step, ETA) on a terminal, one
// plain log line per --logging_steps otherwise, and one JSON object per optimizer step appended to
// a metrics.jsonl file (flushed each line, so a killed run keeps its history).
#pragma once

#include <chrono>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "io/tensorboard.h"

namespace t2i::training {

struct StepMetrics {
    int64_t step;  // global_step after the update (from 1, as the original logs it)
    int64_t epoch;
    double train_loss;  // mean of the micro-batch losses of this optimizer step
    double lr;          // the LR used for this update
    double grad_norm;   // pre-clip total norm
    double step_time;   // seconds of this optimizer step (data included)
    double samples_per_s;
    double optimizer_state_mb = 0;   // this process's AdamW state (a 1/W share under ZeRO-1)
    double comm_wait_s        = 0;   // waiting for the gradient all-reduce after backward
    double peak_gpu_mb        = -1;  // peak memory allocated on the GPU so far (-1: CPU run)
    std::vector<std::pair<std::string, double>> profile;  // --profile: seconds per stage
};

class ProgressReporter {
  public:
    // `metrics_path` empty = no JSONL file.
    ProgressReporter(int64_t total_steps, int64_t start_step, int64_t logging_steps,
                     const std::string& metrics_path);
    ~ProgressReporter();
    ProgressReporter(const ProgressReporter&)            = delete;
    ProgressReporter& operator=(const ProgressReporter&) = delete;

    void update(const StepMetrics& m);
    void message(const std::string& text);  // a log line that does not break the bar
    void finish();

  private:
    int64_t total_, start_, logging_steps_;
    bool tty_;
    bool bar_drawn_     = false;
    std::FILE* metrics_ = nullptr;
    std::chrono::steady_clock::time_point t0_;
};

std::string format_duration(double seconds);  // "1:02:03" or "02:03"

// One optimizer step's report: the progress bar / metrics.jsonl line (rank 0's reporter) and
// the TensorBoard scalars (train_loss, lr, grad_norm, step_time, samples_per_s). Either may be
// null.
void report_step(ProgressReporter* progress, io::EventWriter* tensorboard, const StepMetrics& m);

}  // namespace t2i::training
