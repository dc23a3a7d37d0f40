// Implements: t2i's own tools for seeing what training did (t2i additions; scripts/demo.sh uses
// them): `t2i train-vae` (training/vae_trainer.h), `t2i image-grid` (images side by side in one
// PNG) and `t2i plot-loss` (metrics.jsonl's train_loss as a PNG chart).
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/commands.h"
#include "data/transforms.h"
#include "io/file_util.h"
#include "io/image_compose.h"
#include "io/image_io.h"
#include "training/vae_trainer.h"
#include "util/log.h"

namespace t2i::cli {

namespace {

// Outputs are new files: t2i never replaces one here.
void check_new_png(const std::string& path) {
    if (path.empty()) throw UsageError("--output is required");
    if (path.size() < 4 || path.substr(path.size() - 4) != ".png")
        throw UsageError("--output '" + path + "' must end in .png");
    if (io::file_exists(path) || io::dir_exists(path))
        throw UsageError("--output '" + path + "' exists; t2i does not replace it");
}

}  // namespace

int train_vae_command(const std::vector<std::string>& args) {
    training::VaeTrainConfig c;
    ArgParser p(
        "t2i train-vae --pretrained_model_name_or_path DIR --train_data_dir DIR "
        "--output_dir DIR [flags]",
        "Fine-tune a model's VAE to reconstruct a dataset's images (MSE + KL), so that a\n"
        "freshly initialized model can encode and decode; writes a pipeline folder with\n"
        "the trained VAE (scaling_factor = 1 / std of its latents). A t2i addition.");
    p.add(c.pretrained_model_name_or_path, "pretrained_model_name_or_path",
          "The model folder whose VAE to train (diffusers layout).");
    p.add(c.train_data_dir, "train_data_dir", "Images (a folder as for t2i train).");
    p.add(c.output_dir, "output_dir", "The new pipeline folder.");
    p.add(c.resolution, "resolution", "Training crops are this square size.");
    p.add(c.train_batch_size, "train_batch_size", "Images per step.");
    p.add(c.max_train_steps, "max_train_steps", "Optimizer steps.");
    p.add(c.learning_rate, "learning_rate", "AdamW learning rate.");
    p.add(c.kl_weight, "kl_weight", "Weight of the posterior's KL to N(0, I).");
    p.add(c.seed, "seed", "Seed of the data order and the posterior samples.");
    p.add(c.num_threads, "num_threads", "CPU threads (0 = all cores).");
    if (!p.parse(args)) return 0;
    try {
        training::train_vae(c);
    } catch (const std::invalid_argument& e) {
        throw UsageError(e.what());
    }
    return 0;
}

int image_grid_command(const std::vector<std::string>& args) {
    std::string output;
    int64_t columns = 4, cell_size = 0;
    std::vector<std::string> inputs;
    ArgParser p("t2i image-grid --output GRID.png [--columns N] [--cell_size S] IMAGE [IMAGE ...]",
                "Put images side by side in rows of N, in one PNG.");
    p.add(output, "output", "The PNG to write (a new file).");
    p.add(columns, "columns", "Images per row.");
    p.add(cell_size, "cell_size",
          "Resize each image (nearest neighbour, aspect kept) so its longer side is S pixels; "
          "0 keeps the sizes.");
    p.add_positionals(&inputs, "IMAGE", "PNG / JPEG / WebP images, in order.", 1);
    if (!p.parse(args)) return 0;
    check_new_png(output);
    if (columns < 1 || columns > 1000) throw UsageError("--columns must be in [1, 1000]");
    if (cell_size < 0 || cell_size > 4096) throw UsageError("--cell_size must be in [0, 4096]");
    std::vector<torch::Tensor> images;
    for (const auto& f : inputs) {
        auto image = io::decode_image(f);
        if (cell_size > 0) {
            // Nearest neighbour shows a small generated image's own pixels, not a smoothed guess.
            const int64_t h = image.size(0), w = image.size(1), longer = std::max(h, w);
            image = data::resize(image, std::max<int64_t>(1, h * cell_size / longer),
                                 std::max<int64_t>(1, w * cell_size / longer),
                                 data::InterpolationMode::kNearest);
        }
        images.push_back(image);
    }
    io::write_png(output, io::image_grid(images, columns));
    std::printf("%s\n", output.c_str());
    return 0;
}

int plot_loss_command(const std::vector<std::string>& args) {
    std::string metrics, output, key = "train_loss";
    ArgParser p("t2i plot-loss --metrics OUT/logs/metrics.jsonl --output LOSS.png",
                "Draw a metric of a training run (one JSON line per step) as a PNG chart: every\n"
                "step's value and the moving average over 10 steps; the y axis starts at 0 and is\n"
                "labelled at its quarters, the x axis with the first and last step.");
    p.add(metrics, "metrics", "The run's metrics.jsonl.");
    p.add(output, "output", "The PNG to write (a new file).");
    p.add(key, "key", "The metric to draw.");
    if (!p.parse(args)) return 0;
    check_new_png(output);
    std::ifstream in(metrics);
    if (!in) throw UsageError("--metrics '" + metrics + "': cannot read it");
    std::vector<double> values, steps;
    int64_t line_no = 0;
    for (std::string line; std::getline(in, line);) {
        ++line_no;
        if (line.empty()) continue;
        const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded() || !j.is_object())
            throw UsageError(metrics + ":" + std::to_string(line_no) + ": not a JSON object");
        if (!j.contains(key) || !j[key].is_number()) continue;
        values.push_back(j[key].get<double>());
        steps.push_back(j.contains("step") && j["step"].is_number() ? j["step"].get<double>()
                                                                    : double(values.size()));
    }
    if (values.size() < 2)
        throw UsageError(metrics + ": fewer than 2 lines with a number '" + key + "'");
    io::write_png(output, io::line_chart(values, 640, 360, 10, steps.front(), steps.back()));
    log_info("%s: %zu values of %s, first %.4f, last %.4f", output.c_str(), values.size(),
             key.c_str(), values.front(), values.back());
    std::printf("%s\n", output.c_str());
    return 0;
}

}  // namespace t2i::cli
