// Benchmark: the per-sample data path of `t2i train` (train_transform: Resize -> crop -> flip ->
// ToTensor + Normalize in one pass that resamples only what the crop keeps) against the same
// transform composed of the reference pieces (resize the whole image, crop, flip, normalize:
// three copies), on a random uint8 image; one thread, as a loader worker runs.
//
//   ./build/bench_transform [--height 768] [--width 1152] [--resolution 512]
//                           [--mode lanczos] [--center_crop 1] [--iters 10]
// Prints one JSON line per path: median milliseconds per sample.
#include <torch/torch.h>

#include <cstdio>
#include <string>

#include "bench_util.h"
#include "data/transforms.h"
#include "util/torch_compat.h"

using namespace t2i;

int main(int argc, char** argv) {
    int64_t height = 768, width = 1152, resolution = 512;
    int iters = 10, center = 1;
    std::string mode = "lanczos";
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--height")
            height = std::stoll(v);
        else if (a == "--width")
            width = std::stoll(v);
        else if (a == "--resolution")
            resolution = std::stoll(v);
        else if (a == "--mode")
            mode = v;
        else if (a == "--center_crop")
            center = std::stoi(v);
        else if (a == "--iters")
            iters = std::stoi(v);
        else {
            std::fprintf(stderr, "unknown flag %s\n", a.c_str());
            return 2;
        }
    }
    set_num_threads(1);
    torch::manual_seed(0);
    const auto image = torch::randint(0, 256, {height, width, 3}, torch::kUInt8);
    data::TransformConfig cfg;
    cfg.resolution        = resolution;
    cfg.interpolation     = data::parse_interpolation_mode(mode);
    cfg.center_crop       = center != 0;
    cfg.random_flip       = true;
    uint64_t seed         = 0;
    const double one_pass = bench::median_ms(
        [&] {
            data::Rng rng(seed++);
            data::train_transform(image, cfg, rng);
        },
        2, iters);
    const double composed = bench::median_ms(
        [&] {
            data::Rng rng(seed++);
            auto x = data::resize_shorter_side(image, cfg.resolution, cfg.interpolation);
            x      = cfg.center_crop ? data::center_crop(x, cfg.resolution)
                                     : data::random_crop(x, cfg.resolution, rng);
            x      = data::random_hflip(x, rng);
            data::to_normalized_tensor(x.contiguous());
        },
        2, iters);
    for (const auto& [name, ms] :
         {std::make_pair("one_pass", one_pass), std::make_pair("composed", composed)})
        std::printf(
            "{\"bench\":\"transform\",\"path\":\"%s\",\"image\":\"%lldx%lld\",\"resolution\":%lld,"
            "\"mode\":\"%s\",\"median_ms\":%.2f}\n",
            name, (long long)width, (long long)height, (long long)resolution, mode.c_str(), ms);
    return 0;
}
