// Benchmark: c10d all-reduce (sum, float32) between the processes of `t2i launch`, the transport
// every gradient bucket goes through. Prints one JSON line per size from rank 0: median time and
// the bus bandwidth as nccl-tests defines it (2 (W - 1) / W x bytes / time), which is what a
// ring all-reduce moves per link.
//
//   ./build/t2i launch --nproc_per_node 2 -- ./build/bench_allreduce [--threads 1]
//       [--max_mb 256] [--iters 10] [--backend gloo]
#include <cstdio>
#include <string>

#include "bench_util.h"
#include "dist/process_group.h"
#include "util/torch_compat.h"

using namespace t2i;

int main(int argc, char** argv) {
    int threads = 1, iters = 10;
    double max_mb       = 256;
    std::string backend = "gloo";
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--threads")
            threads = std::stoi(v);
        else if (a == "--max_mb")
            max_mb = std::stod(v);
        else if (a == "--iters")
            iters = std::stoi(v);
        else if (a == "--backend")
            backend = v;
        else {
            std::fprintf(stderr, "bench_allreduce: unknown flag %s\n", a.c_str());
            return 2;
        }
    }
    set_num_threads(threads);
    const auto world = dist::WorldInfo::from_env();
    dist::GroupOptions o;
    o.backend = backend;
    dist::ProcessGroup group(world, o);
    const int W = group.size();
    for (int64_t bytes = 4 << 10; bytes <= int64_t(max_mb * (1 << 20)); bytes *= 4) {
        auto t = torch::ones({bytes / 4}, torch::kFloat32);
        const double ms =
            bench::median_ms([&] { group.all_reduce(t, "bench all-reduce"); }, 2, iters);
        const double busbw = 2.0 * (W - 1) / W * double(bytes) / (ms / 1e3) / 1e9;
        if (group.is_main())
            std::printf(
                "{\"bench\":\"all_reduce\",\"backend\":\"%s\",\"world_size\":%d,\"bytes\":%lld,"
                "\"median_ms\":%.3f,\"bus_gb_per_s\":%.3f}\n",
                backend.c_str(), W, (long long)bytes, ms, busbw);
    }
    group.barrier("the end of the benchmark");
    return 0;
}
