// Implements: the NCCL process group for --ddp_backend nccl, from the plugin libt2i_nccl.so
// beside the executable (dist/nccl_backend.cpp; T2I_NCCL_PLUGIN names another path). The plugin
// is the only code that links the CUDA half of libtorch, which util/device.h loads first.
#pragma once

#include <chrono>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

namespace t2i::dist {

// Throws naming what is missing: CUDA, the plugin (a build without -DT2I_WITH_NCCL) or its entry.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world_size,
                                                    std::chrono::milliseconds timeout);

}  // namespace t2i::dist
