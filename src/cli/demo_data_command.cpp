// Implements: `t2i demo-data --output DIR [--count N] [--size S]`: a synthetic captioned dataset
// in Hugging Face imagefolder layout (PNG files + metadata.jsonl with file_name and text), so the
// README's first command can train without downloading anything. Each image is one coloured
// shape on a plain background, captioned with what it shows; --jitter moves and scales the shape
// at random (0: every caption has exactly one picture, centred).
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/args.h"
#include "cli/commands.h"
#include "io/file_util.h"
#include "io/image_io.h"

namespace t2i::cli {

namespace {

struct Color {
    const char* name;
    uint8_t r, g, b;
};

const Color kColors[] = {
    {"red", 220, 40, 40}, {"green", 40, 180, 60}, {"blue", 40, 70, 220}, {"yellow", 240, 220, 40}};
const Color kBackgrounds[] = {{"white", 245, 245, 245}, {"black", 15, 15, 15}};
const char* kShapes[]      = {"circle", "square", "triangle"};

bool inside(const std::string& shape, double x, double y) {  // x, y in [-1, 1]
    if (shape == "circle") return x * x + y * y <= 0.36;
    if (shape == "square") return std::abs(x) <= 0.5 && std::abs(y) <= 0.5;
    return y <= 0.55 && y >= -0.55 && std::abs(x) <= (y + 0.55) * 0.55;  // triangle, apex down
}

}  // namespace

int demo_data_command(const std::vector<std::string>& args) {
    std::string output;
    int64_t count = 48, size = 96, seed = 0;
    double jitter = 0.2;
    ArgParser parser("t2i demo-data --output DIR [--count N] [--size S] [--jitter J]",
                     "Write a synthetic captioned image dataset: PNG files + metadata.jsonl.");
    parser.add(output, "output", "Folder to create.");
    parser.add(count, "count", "Number of images.");
    parser.add(size, "size", "Image side in pixels.");
    parser.add(seed, "seed", "Seed for positions and sizes.");
    parser.add(jitter, "jitter",
               "Shape centre offset up to J (image half-widths) and size factor in [1-J, 1+J].");
    if (!parser.parse(args)) return 0;
    if (output.empty()) throw UsageError("--output is required");
    if (count < 1 || count > 1000000)
        throw UsageError("--count must be in [1, 1000000], got " + std::to_string(count));
    if (size < 8 || size > 4096)
        throw UsageError("--size must be in [8, 4096], got " + std::to_string(size));
    // A new folder (or an empty one): never replace the files of an existing dataset.
    std::error_code ec;
    if (std::filesystem::exists(output, ec) &&
        (!std::filesystem::is_directory(output, ec) || !std::filesystem::is_empty(output, ec)))
        throw UsageError("--output '" + output +
                         "' already exists and is not an empty folder; demo-data writes a new "
                         "dataset and never replaces files: choose a new folder");
    if (!(jitter >= 0 && jitter <= 0.5))
        throw UsageError("--jitter must be in [0, 0.5], got " + std::to_string(jitter));
    std::filesystem::create_directories(output);
    std::mt19937_64 rng(static_cast<uint64_t>(seed));
    std::uniform_real_distribution<> offset(-jitter, jitter), scale(1 - jitter, 1 + jitter);
    std::string metadata;
    for (int64_t i = 0; i < count; ++i) {
        const Color& fg   = kColors[i % 4];
        const char* shape = kShapes[(i / 4) % 3];
        const Color& bg   = kBackgrounds[(i / 12) % 2];
        const double cx = offset(rng), cy = offset(rng), s = scale(rng);
        auto img = torch::empty({size, size, 3}, torch::kUInt8);
        auto acc = img.accessor<uint8_t, 3>();
        for (int64_t y = 0; y < size; ++y)
            for (int64_t x = 0; x < size; ++x) {
                const double u = (2.0 * (x + 0.5) / size - 1.0 - cx) / s;
                const double v = (2.0 * (y + 0.5) / size - 1.0 - cy) / s;
                const Color& c = inside(shape, u, -v) ? fg : bg;
                acc[y][x][0] = c.r, acc[y][x][1] = c.g, acc[y][x][2] = c.b;
            }
        char name[32];
        std::snprintf(name, sizeof name, "%04lld.png", (long long)i);
        io::write_png(output + "/" + name, img);
        const std::string caption =
            std::string("a ") + fg.name + " " + shape + " on a " + bg.name + " background";
        metadata += nlohmann::json{{"file_name", name}, {"text", caption}}.dump() + "\n";
    }
    io::write_text_atomic(output + "/metadata.jsonl", metadata);
    std::printf("wrote %lld images with captions to %s\n", (long long)count, output.c_str());
    return 0;
}

}  // namespace t2i::cli
