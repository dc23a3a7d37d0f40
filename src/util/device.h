// Implements: the --device flag of `t2i train` and `t2i generate`: "cpu", "cuda", "cuda:N",
// parsed and checked against what this machine has before anything is loaded, with one-line
// errors (no libtorch stack trace, no CUDA warning on stderr).
#pragma once

#include <torch/torch.h>

#include <stdexcept>
#include <string>

namespace t2i {

// A --device value that cannot be used here; the CLI turns it into exit code 2.
struct DeviceError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// t2i links only the CPU half of a CUDA libtorch: a CPU run never loads libtorch_cuda and the
// CUDA libraries behind it (230 MB of resident memory and 0.15 s of start-up). This loads them
// (dlopen of libtorch_cuda.so beside libtorch_cpu.so, once; it registers the CUDA kernels). It
// must run before anything asks libtorch about CUDA: libtorch decides once per process whether
// CUDA exists (at::detail::getCUDAHooks). main() calls it first when the command line names
// cuda or nccl; cuda_device_count() and resolve_device() call it. Returns whether CUDA code is
// there; `why` (optional) receives the reason when not.
bool load_cuda_runtime(std::string* why = nullptr);
// Whether the command line asks for CUDA (an argument naming cuda or nccl).
bool command_line_wants_cuda(int argc, char** argv);

// Number of usable CUDA devices (0 on a machine without a GPU or driver). libtorch's own
// warning about a missing driver is swallowed; `why` (optional) receives it.
int cuda_device_count(std::string* why = nullptr);

// "cpu" | "cuda" | "cuda:N" -> a device that exists. A plain "cuda" means cuda:`default_index`
// (LOCAL_RANK under a launcher, as accelerate does). A CUDA device becomes the current one.
// Throws DeviceError naming `flag`.
torch::Device resolve_device(const std::string& value, int default_index = 0,
                             const std::string& flag = "--device");

// "fp32" | "fp16" | "bf16" (also diffusers' "float32" / "float16" / "bfloat16", and accelerate's
// "no" for fp32) -> the dtype; anything else throws DeviceError naming `flag`.
torch::ScalarType parse_dtype(const std::string& name, const std::string& flag);

// Peak bytes the caching allocator has handed out on a GPU since the start, in MB (torch's
// max_memory_allocated); -1 for the CPU.
double peak_device_memory_mb(const torch::Device& device);

// Waits until `device` has finished its queued work (nothing for the CPU).
void synchronize_device(const torch::Device& device);

}  // namespace t2i
