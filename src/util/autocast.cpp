// Implements: util/autocast.h.
#include "util/autocast.h"

#include <ATen/autocast_mode.h>

#include <stdexcept>
#include <string>

#include "util/torch_compat.h"

namespace t2i {

// torch 2.4 folded the per-device functions into ones taking a device type (pytorch#124359); the
// old names remain there only as deprecated wrappers.
#define T2I_AUTOCAST_BY_DEVICE T2I_TORCH_AT_LEAST(2, 4)

AutocastState autocast_state() {
    AutocastState s;
#if T2I_AUTOCAST_BY_DEVICE
    s.cpu_enabled  = at::autocast::is_autocast_enabled(at::kCPU);
    s.cpu_dtype    = at::autocast::get_autocast_dtype(at::kCPU);
    s.cuda_enabled = at::autocast::is_autocast_enabled(at::kCUDA);
    s.cuda_dtype   = at::autocast::get_autocast_dtype(at::kCUDA);
#else
    s.cpu_enabled  = at::autocast::is_cpu_enabled();
    s.cpu_dtype    = at::autocast::get_autocast_cpu_dtype();
    s.cuda_enabled = at::autocast::is_enabled();
    s.cuda_dtype   = at::autocast::get_autocast_gpu_dtype();
#endif
    return s;
}

void set_autocast_state(const AutocastState& s) {
#if T2I_AUTOCAST_BY_DEVICE
    at::autocast::set_autocast_enabled(at::kCPU, s.cpu_enabled);
    at::autocast::set_autocast_dtype(at::kCPU, s.cpu_dtype);
    at::autocast::set_autocast_enabled(at::kCUDA, s.cuda_enabled);
    at::autocast::set_autocast_dtype(at::kCUDA, s.cuda_dtype);
#else
    at::autocast::set_cpu_enabled(s.cpu_enabled);
    at::autocast::set_autocast_cpu_dtype(s.cpu_dtype);
    at::autocast::set_enabled(s.cuda_enabled);
    at::autocast::set_autocast_gpu_dtype(s.cuda_dtype);
#endif
}

AutocastGuard::AutocastGuard(torch::Device device, torch::ScalarType dtype) {
    if (dtype == torch::kFloat32) return;
    if (dtype != torch::kBFloat16 && dtype != torch::kHalf)
        throw std::runtime_error(std::string("autocast: dtype must be float32, bfloat16 or "
                                             "float16, got ") +
                                 c10::toString(dtype));
    if (!device.is_cpu() && !device.is_cuda())
        throw std::runtime_error("autocast: device must be cpu or cuda, got " + device.str());
    // torch.autocast refuses fp16 on CPU too: CPU has no fp16 conv / matmul kernels.
    if (device.is_cpu() && dtype == torch::kHalf)
        throw std::runtime_error(
            "autocast: float16 is not supported on CPU; use bfloat16 "
            "(--mixed_precision bf16) or run on CUDA");
    saved_          = autocast_state();
    AutocastState s = saved_;
    if (device.is_cpu()) {
        s.cpu_enabled = true;
        s.cpu_dtype   = dtype;
    } else {
        s.cuda_enabled = true;
        s.cuda_dtype   = dtype;
    }
    set_autocast_state(s);
    at::autocast::increment_nesting();
    active_ = true;
}

AutocastGuard::AutocastGuard(const AutocastState& state) {
    saved_ = autocast_state();
    set_autocast_state(state);
    at::autocast::increment_nesting();
    active_ = true;
}

AutocastGuard::~AutocastGuard() {
    if (!active_) return;
    // torch.autocast.__exit__: the cache of casted weights lives until the outermost exit.
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    set_autocast_state(saved_);
}

}  // namespace t2i
