// Implements: the one place where libtorch version differences live (2.x; CMakeLists.txt refuses
// 1.x, whose last user was the Debian 1.13 build before issue 11).
// Everything else includes this header instead of testing TORCH_VERSION_* itself.
#pragma once

#include <torch/torch.h>
#include <torch/version.h>

#define T2I_TORCH_AT_LEAST(major, minor) \
    (TORCH_VERSION_MAJOR > (major) ||    \
     (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// at::scaled_dot_product_attention exists from torch 2.0.
#define T2I_HAS_SDPA T2I_TORCH_AT_LEAST(2, 0)

namespace t2i {

// Set the intra-op thread count. libtorch 1.13 counts hyper-threads wrongly on small VMs and
// defaults to 1 thread, so callers always set it explicitly (0 = all hardware threads).
void set_num_threads(int n);

}  // namespace t2i
