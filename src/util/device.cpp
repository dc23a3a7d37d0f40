// Implements: util/device.h.
#include "util/device.h"

#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>
#include <dlfcn.h>

#include <filesystem>
#include <mutex>
#include <vector>

#include "util/log.h"

namespace t2i {

namespace {

// Collects libtorch warnings (TORCH_WARN) instead of printing them.
struct CollectWarnings : c10::WarningHandler {
    std::string text;
    void process(const c10::Warning& warning) override {
        if (!text.empty()) text += "; ";
        text += warning.msg();
    }
};

}  // namespace

bool load_cuda_runtime(std::string* why) {
    static std::once_flag once;
    static bool loaded = false;
    static std::string error;
    std::call_once(once, [] {
        Dl_info info{};
        if (!::dladdr(reinterpret_cast<void*>(&at::globalContext), &info) || !info.dli_fname) {
            error = "cannot locate libtorch_cpu.so";
            return;
        }
        const std::string dir  = std::filesystem::path(info.dli_fname).parent_path().string();
        const std::string path = dir + "/libtorch_cuda.so";
        if (!std::filesystem::exists(path)) {
            error = "this libtorch has no CUDA (no libtorch_cuda.so in " + dir + ")";
            return;
        }
        if (!::dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
            const char* e = ::dlerror();
            error         = "cannot load " + path + ": " + (e ? e : "unknown error");
            return;
        }
        loaded = true;
    });
    if (why) *why = error;
    return loaded;
}

bool command_line_wants_cuda(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a.find("cuda") != std::string::npos || a.find("nccl") != std::string::npos) return true;
    }
    return false;
}

int cuda_device_count(std::string* why) {
    std::string load_error;
    if (!load_cuda_runtime(&load_error)) {
        if (why) *why = load_error;
        return 0;
    }
    CollectWarnings warnings;
    c10::WarningUtils::WarningHandlerGuard guard(&warnings);
    int n = 0;
    try {
        n = static_cast<int>(torch::cuda::device_count());
    } catch (const std::exception& e) {
        warnings.text += e.what();
        n = 0;
    }
    if (why) *why = warnings.text;
    return n;
}

torch::Device resolve_device(const std::string& value, int default_index, const std::string& flag) {
    if (value == "cpu") return torch::kCPU;
    int index = default_index;
    if (value.rfind("cuda:", 0) == 0) {
        const std::string digits = value.substr(5);
        if (digits.empty() || digits.size() > 4 ||
            digits.find_first_not_of("0123456789") != std::string::npos)
            throw DeviceError(flag + " '" + value +
                              "': expected cpu, cuda or cuda:N (N = 0, 1, ...)");
        index = std::stoi(digits);
    } else if (value != "cuda") {
        throw DeviceError(flag + " '" + value + "': expected cpu, cuda or cuda:N (N = 0, 1, ...)");
    }
    std::string why;
    const int n = cuda_device_count(&why);
    if (n == 0) {
        // The first line of libtorch's reason ("Found no NVIDIA driver on your system...").
        const auto cut = why.find_first_of("\n");
        why            = why.substr(0, cut);
        throw DeviceError(
            flag + " " + value + ": no usable CUDA GPU on this machine" +
            (why.empty() ? std::string(" (libtorch sees 0 CUDA devices)") : " (" + why + ")") +
            "; use " + flag + " cpu");
    }
    if (index < 0 || index >= n)
        throw DeviceError(
            strformat("%s %s: this machine has %d CUDA device(s), cuda:0 .. cuda:%d%s",
                      flag.c_str(), value.c_str(), n, n - 1,
                      value == "cuda" ? " (a plain cuda under a launcher is "
                                        "cuda:LOCAL_RANK: more processes than GPUs?)"
                                      : ""));
    const torch::Device device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
    // The current device of this thread too (as torch.cuda.set_device): cuBLAS handles, NCCL and
    // kernels launched without an explicit index use it.
    c10::impl::VirtualGuardImpl(c10::kCUDA).setDevice(device);
    return device;
}

torch::ScalarType parse_dtype(const std::string& name, const std::string& flag) {
    if (name == "fp32" || name == "float32" || name == "no") return torch::kFloat32;
    if (name == "fp16" || name == "float16") return torch::kFloat16;
    if (name == "bf16" || name == "bfloat16") return torch::kBFloat16;
    throw DeviceError(flag + " '" + name + "': expected fp32, fp16 or bf16");
}

double peak_device_memory_mb(const torch::Device& device) {
    if (device.is_cpu()) return -1;
    const auto stats     = c10::getDeviceAllocator(device.type())->getDeviceStats(device.index());
    const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    return static_cast<double>(stats.allocated_bytes[aggregate].peak) / (1 << 20);
}

void synchronize_device(const torch::Device& device) {
    if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

}  // namespace t2i
