// Implements: AutocastGuard, the C++ form of `with torch.autocast(device_type, dtype):`, and the
// thread-local autocast state it saves and restores (gradient checkpointing replays it).
// Mirrors: torch/amp/autocast_mode.py (autocast.__enter__ / __exit__). The ATen calls differ by
// version (1.13-2.3: set_cpu_enabled / set_enabled + set_autocast_{cpu,gpu}_dtype; 2.4+:
// set_autocast_enabled(device, on) / set_autocast_dtype(device, dtype)); autocast.cpp holds both.
#pragma once

#include <torch/torch.h>

namespace t2i {

// Autocast switches and lower-precision dtypes of the two device types t2i runs on.
struct AutocastState {
    bool cpu_enabled             = false;
    torch::ScalarType cpu_dtype  = torch::kBFloat16;
    bool cuda_enabled            = false;
    torch::ScalarType cuda_dtype = torch::kHalf;
};

AutocastState autocast_state();                       // this thread's current state
void set_autocast_state(const AutocastState& state);  // sets switches and dtypes (no nesting)

// Ops on `device`'s type run in `dtype` where autocast's op lists say so (matmul, conv, linear
// in reduced precision; norms, softmax, losses in fp32). dtype kFloat32 disables autocast (the
// `--mixed_precision no` path) without touching anything. Not copyable; nests like the Python
// context manager: the autocast weight-cast cache is cleared when the outermost guard exits.
class AutocastGuard {
  public:
    AutocastGuard(torch::Device device, torch::ScalarType dtype);
    // Enters exactly `state` (both devices), e.g. one saved by autocast_state() earlier.
    explicit AutocastGuard(const AutocastState& state);
    ~AutocastGuard();
    AutocastGuard(const AutocastGuard&)            = delete;
    AutocastGuard& operator=(const AutocastGuard&) = delete;

  private:
    bool active_ = false;
    AutocastState saved_;
};

}  // namespace t2i
