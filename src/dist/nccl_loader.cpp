// Implements: dist/nccl_loader.h.
#include "dist/nccl_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "util/device.h"

namespace t2i::dist {

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world_size,
                                                    std::chrono::milliseconds timeout) {
    std::string why;
    if (!load_cuda_runtime(&why)) throw std::runtime_error("--ddp_backend nccl needs CUDA: " + why);
    const char* env  = std::getenv("T2I_NCCL_PLUGIN");
    std::string path = env && *env ? env : "";
    if (path.empty()) {
        std::error_code ec;
        const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
        path           = (exe.parent_path() / "libt2i_nccl.so").string();
    }
    void* lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char* e = ::dlerror();
        throw std::runtime_error("--ddp_backend nccl: cannot load the NCCL plugin " + path + " (" +
                                 (e ? e : "unknown error") +
                                 "); this t2i was built without NCCL (-DT2I_WITH_NCCL=ON builds "
                                 "it against a CUDA libtorch), or use --ddp_backend gloo");
    }
    using Make = void (*)(const c10::intrusive_ptr<c10d::Store>*, int, int, int64_t,
                          c10::intrusive_ptr<c10d::Backend>*);
    auto make  = reinterpret_cast<Make>(::dlsym(lib, "t2i_make_nccl_backend"));
    if (!make)
        throw std::runtime_error("--ddp_backend nccl: " + path + " is not t2i's NCCL plugin");
    c10::intrusive_ptr<c10d::Backend> backend;
    make(&store, rank, world_size, timeout.count(), &backend);
    return backend;
}

}  // namespace t2i::dist
