// Benchmark: UNet2DConditionModel forward and forward + backward on a model config (default: the
// 35 M-parameter small-sd UNet in ../shared/fixtures, random weights) at batch 2, 32x32 latents
// (256x256 images), 77 context tokens. Prints one JSON line per measurement.
//
//   ./build/bench_unet [--config DIR/unet/config.json] [--threads 2] [--batch 2] [--latent 32]
//                      [--iters 10] [--warmup 2] [--attention reference|fused] [--mode
//                      fwd|fwdbwd|both|flops|peak] [--gradient_checkpointing 0|1]
//                      [--mixed_precision no|bf16|fp16] [--device cpu|cuda[:N]]
// Peak RSS only grows, so compare memory between separate runs (one --mode, one setting each).
// --mode flops prints the model FLOPs of one forward (bench/flop_counter.h); a training step is
// 3x that (forward + backward), the convention of model FLOP utilisation. --mode peak prints the
// GFLOP/s of a 2048^3 matmul in the --mixed_precision dtype: the machine's peak for the MFU.
#include <cstdio>
#include <cstring>
#include <string>

#include "bench_util.h"
#include "flop_counter.h"
#include "io/json_config.h"
#include "models/unet.h"
#include "models/weights.h"
#include "util/autocast.h"
#include "util/device.h"
#include "util/torch_compat.h"

using namespace t2i;

int main(int argc, char** argv) {
    std::string config    = std::string(T2I_FIXTURES_DIR) + "/small-sd/unet/config.json";
    std::string attention = "fused", mode = "both", mixed_precision = "no", device_name = "cpu";
    int threads = 2, batch = 2, latent = 32, iters = 10, warmup = 2, gradient_checkpointing = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--config")
            config = v;
        else if (a == "--threads")
            threads = std::stoi(v);
        else if (a == "--batch")
            batch = std::stoi(v);
        else if (a == "--latent")
            latent = std::stoi(v);
        else if (a == "--iters")
            iters = std::stoi(v);
        else if (a == "--warmup")
            warmup = std::stoi(v);
        else if (a == "--attention")
            attention = v;
        else if (a == "--mode")
            mode = v;
        else if (a == "--gradient_checkpointing")
            gradient_checkpointing = std::stoi(v);
        else if (a == "--mixed_precision")
            mixed_precision = v;
        else if (a == "--device")
            device_name = v;
        else {
            std::fprintf(stderr, "unknown flag %s\n", a.c_str());
            return 2;
        }
    }
    set_num_threads(threads);
    models::set_attention_backend(attention == "fused" ? models::AttentionBackend::kFused
                                                       : models::AttentionBackend::kReference);
    const torch::Device device = resolve_device(device_name);
    auto sync                  = [&] {
        if (device.is_cuda()) torch::cuda::synchronize(device.index());
    };
    torch::manual_seed(0);
    const auto cfg = models::UNet2DConditionConfig::from_json(io::read_json(config));
    models::UNet2DConditionModel unet(cfg);
    unet->to(device);
    unet->enable_gradient_checkpointing(gradient_checkpointing != 0);
    const auto autocast_dtype = mixed_precision == "bf16"   ? torch::kBFloat16
                                : mixed_precision == "fp16" ? torch::kFloat16
                                                            : torch::kFloat32;
    const int64_t ctx_dim     = cfg.cross_attention_dim[0];
    const auto opts           = torch::TensorOptions().device(device);
    auto sample               = torch::randn({batch, cfg.in_channels, latent, latent}, opts);
    auto t                    = torch::randint(0, 1000, {batch}, opts.dtype(torch::kInt64));
    auto ehs                  = torch::randn({batch, 77, ctx_dim}, opts);
    std::printf(
        "{\"bench\":\"unet\",\"config\":\"%s\",\"params\":%lld,\"threads\":%d,\"batch\":%d,"
        "\"latent\":%d,\"attention\":\"%s\",\"gradient_checkpointing\":%d,"
        "\"mixed_precision\":\"%s\",\"device\":\"%s\",\"torch\":\"%d.%d\"}\n",
        config.c_str(), (long long)models::count_parameters(*unet), threads, batch, latent,
        attention.c_str(), gradient_checkpointing, mixed_precision.c_str(), device_name.c_str(),
        TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR);
    if (mode == "flops") {
        unet->eval();
        torch::NoGradGuard g;
        bench::FlopCounter counter;
        unet->forward(sample, t, ehs);
        std::printf("{\"measure\":\"forward_flops\",\"gflops\":%.3f,\"gflops_per_sample\":%.3f}\n",
                    bench::FlopCounter::flops() / 1e9, bench::FlopCounter::flops() / 1e9 / batch);
        return 0;
    }
    if (mode == "peak") {  // the machine's matmul peak in the --mixed_precision dtype (for MFU)
        const int64_t n = 2048;
        const auto a    = torch::randn({n, n}, opts).to(autocast_dtype);
        const auto b    = torch::randn({n, n}, opts).to(autocast_dtype);
        const double ms = bench::median_ms(
            [&] {
                torch::mm(a, b);
                sync();
            },
            2, 5);
        std::printf("{\"measure\":\"matmul_peak\",\"n\":%lld,\"gflops\":%.1f}\n", (long long)n,
                    2.0 * n * n * n / (ms * 1e-3) / 1e9);
        return 0;
    }
    if (mode == "fwd" || mode == "both") {
        unet->eval();
        const double ms = bench::median_ms(
            [&] {
                torch::NoGradGuard g;
                AutocastGuard autocast(device, autocast_dtype);
                unet->forward(sample, t, ehs);
                sync();
            },
            warmup, iters);
        std::printf(
            "{\"measure\":\"forward\",\"median_ms\":%.1f,\"peak_rss_mb\":%.0f,"
            "\"peak_gpu_mb\":%.0f}\n",
            ms, bench::peak_rss_mb(), peak_device_memory_mb(device));
        std::fflush(stdout);
    }
    if (mode == "fwdbwd" || mode == "both") {
        unet->train();
        const double ms = bench::median_ms(
            [&] {
                torch::Tensor out;
                {
                    AutocastGuard autocast(device, autocast_dtype);
                    out = unet->forward(sample, t, ehs);
                }
                out.to(torch::kFloat32).pow(2).mean().backward();
                for (auto& p : unet->parameters()) p.mutable_grad() = torch::Tensor();
                sync();
            },
            warmup, iters);
        std::printf(
            "{\"measure\":\"forward_backward\",\"median_ms\":%.1f,\"peak_rss_mb\":%.0f,"
            "\"peak_gpu_mb\":%.0f}\n",
            ms, bench::peak_rss_mb(), peak_device_memory_mb(device));
    }
    return 0;
}
