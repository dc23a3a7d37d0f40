// Implements: the learning-rate schedules of train_text_to_image.py's `--lr_scheduler`, as
// multipliers of the peak learning rate indexed by the scheduler step.
// Mirrors diffusers src/diffusers/optimization.py (get_scheduler and the get_*_schedule*
// functions; each is a torch LambdaLR whose lambda is `lr_multiplier` below) and LambdaLR's
// stepping: the multiplier of step 0 is in force until the first step(), so the first update
// under any warmup uses lr = 0 (REFERENCE.md section 2, "LR schedulers").
// Steps are optimizer steps; the trainer passes warmup/total in optimizer steps (the
// num_processes factor of the script cancels with accelerate's AcceleratedScheduler).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace t2i::training {

// The names `--lr_scheduler` accepts (diffusers' SchedulerType values).
const std::vector<std::string>& lr_schedule_names();

// Everything a schedule may need besides the step. Defaults are diffusers'.
struct LRScheduleConfig {
    std::string name       = "constant";
    int64_t warmup_steps   = 0;     // W (`--lr_warmup_steps`); ignored by "constant"
    int64_t total_steps    = 0;     // T (`--max_train_steps`); linear/cosine*/polynomial only
    double num_cycles      = -1.0;  // < 0: diffusers' default (0.5 cosine, 1 restarts)
    double lr_end          = 1e-7;  // polynomial
    double power           = 1.0;   // polynomial
    std::string step_rules = "";    // piecewise_constant: "m1:s1,m2:s2,...,m_last"
};

// The LambdaLR multiplier at scheduler step `step` for peak learning rate `base_lr`
// (polynomial needs it: it decays to lr_end / base_lr). Throws for an unknown name (listing the
// accepted ones), polynomial with base_lr <= lr_end, and bad step_rules.
double lr_multiplier(const LRScheduleConfig& config, int64_t step, double base_lr);

// Convenience form with diffusers' defaults for the optional arguments.
double lr_multiplier(const std::string& name, int64_t step, int64_t warmup_steps,
                     int64_t total_steps, double base_lr = 1e-4);

// A LambdaLR over one parameter group: get_lr() = base_lr * multiplier(step_count()).
class LRSchedule {
  public:
    // Validates the config (name, polynomial lr_end, step_rules) so errors surface at startup.
    LRSchedule(LRScheduleConfig config, double base_lr);

    void step() { ++step_count_; }                      // once per optimizer step
    double get_lr() const;                              // the lr for the next optimizer step
    int64_t step_count() const { return step_count_; }  // LambdaLR's last_epoch
    const LRScheduleConfig& config() const { return config_; }
    double base_lr() const { return base_lr_; }

    // Checkpoint state: {"name", "base_lr", "step_count"}. load_state checks that the name
    // matches (a resumed run with another schedule is an error, not a silent reset).
    nlohmann::json state() const;
    void load_state(const nlohmann::json& state);

  private:
    LRScheduleConfig config_;
    double base_lr_     = 0.0;
    int64_t step_count_ = 0;
};

}  // namespace t2i::training
