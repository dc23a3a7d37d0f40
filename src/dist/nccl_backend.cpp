// Implements: the NCCL process group as a plugin, libt2i_nccl.so beside the t2i binary, which
// dist/process_group.cpp loads (dlopen) for --ddp_backend nccl. Only this file links the CUDA
// half of libtorch (ProcessGroupNCCL lives in libtorch_cuda), so that a CPU run loads none of it
// (util/device.h load_cuda_runtime).
#include <chrono>
#include <cstdint>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

extern "C" __attribute__((visibility("default"))) void t2i_make_nccl_backend(
    const c10::intrusive_ptr<c10d::Store>* store, int rank, int world_size, int64_t timeout_ms,
    c10::intrusive_ptr<c10d::Backend>* out) {
    auto options     = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = std::chrono::milliseconds(timeout_ms);
    *out = c10::make_intrusive<c10d::ProcessGroupNCCL>(*store, rank, world_size, options);
}
