// Tests: the tools for looking at training (t2i train-vae, image-grid, plot-loss): the grid puts
// each image where the layout says, the chart draws a falling series falling, and train-vae
// lowers the VAE's reconstruction error, sets scaling_factor = 1 / std of its latents and
// copies the other components unchanged.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/caption_dataset.h"
#include "io/file_util.h"
#include "io/image_compose.h"
#include "io/image_io.h"
#include "io/safetensors.h"
#include "pipeline/model_dir.h"
#include "test_util.h"
#include "training/vae_trainer.h"

namespace t2i {
namespace {

using testing::fixture;
using testing::TempDir;

TEST(DemoTools, ImageGridPlacesEveryImageInItsCell) {
    std::vector<torch::Tensor> images;
    for (int i = 0; i < 3; ++i)
        images.push_back(torch::full({10, 8 + 2 * i, 3}, 40 * (i + 1), torch::kUInt8));
    const auto grid = io::image_grid(images, /*columns=*/2, /*gap=*/3);
    // cells 10 x 12 (the largest), 2 columns x 2 rows, gaps of 3 around and between.
    EXPECT_EQ(grid.sizes(), (std::vector<int64_t>{2 * 10 + 3 * 3, 2 * 12 + 3 * 3, 3}));
    // Image 1 (10 x 10) is centered in cell (0, 1): x from 3 + 12 + 3 + 1.
    EXPECT_EQ(grid[3][19][0].item<int>(), 80);
    EXPECT_EQ(grid[3][18][0].item<int>(), 255);      // the centering margin is white
    EXPECT_EQ(grid[16][3 + 2][1].item<int>(), 120);  // image 2 at row 1 (y from 3 + 10 + 3)
    EXPECT_EQ(grid[0][0][2].item<int>(), 255);
    EXPECT_THROW(io::image_grid({}, 2), std::invalid_argument);
    EXPECT_THROW(io::image_grid({torch::zeros({4, 4}, torch::kUInt8)}, 2), std::invalid_argument);
}

// The dark-blue curve's topmost pixel in a column range.
int64_t curve_top(const torch::Tensor& chart, int64_t x0, int64_t x1) {
    for (int64_t y = 0; y < chart.size(0); ++y)
        for (int64_t x = x0; x < x1; ++x)
            if (chart[y][x][0].item<int>() == 20 && chart[y][x][2].item<int>() == 160) return y;
    return -1;
}

TEST(DemoTools, LineChartOfAFallingSeriesFalls) {
    std::vector<double> values;
    for (int i = 0; i < 200; ++i) values.push_back(1.0 / (1.0 + 0.05 * i));
    values[50]       = std::nan("");  // skipped
    const auto chart = io::line_chart(values, 320, 200, 5);
    EXPECT_EQ(chart.sizes(), (std::vector<int64_t>{200, 320, 3}));
    const auto left = curve_top(chart, 40, 64), right = curve_top(chart, 280, 304);
    ASSERT_GE(left, 0);
    ASSERT_GE(right, 0);
    EXPECT_LT(left, right - 80);  // high on the left, low on the right
    EXPECT_THROW(io::line_chart({1.0}), std::invalid_argument);
}

// Rows of the label ink (60, 60, 60) in columns [x0, x1).
std::vector<int64_t> ink_rows(const torch::Tensor& chart, int64_t x0, int64_t x1) {
    std::vector<int64_t> rows;
    for (int64_t y = 0; y < chart.size(0); ++y)
        for (int64_t x = x0; x < x1; ++x)
            if (chart[y][x][0].item<int>() == 60 && chart[y][x][1].item<int>() == 60) {
                rows.push_back(y);
                break;
            }
    return rows;
}

TEST(DemoTools, LineChartLabelsEachQuarterOnItsGridLineAndTheXEnds) {
    std::vector<double> values;
    for (int i = 0; i < 100; ++i) values.push_back(2.0 - 0.01 * i);  // 2 .. 1.01: range 0 .. 2
    const auto chart = io::line_chart(values, 400, 300, 5, 10, 109);
    // The grid lines (light grey) in a column inside the plot.
    std::vector<int64_t> grid;
    for (int64_t y = 0; y < chart.size(0); ++y)
        if (chart[y][200][0].item<int>() == 225) grid.push_back(y);
    ASSERT_EQ(grid.size(), 6u);  // 3 lines, 2 pixels thick
    // Left of the plot: 5 labels (0, 0.5, 1, 1.5, 2) of 14 rows each (glyphs at scale 2), each
    // centred on its quarter: the middle three on the grid lines.
    const auto rows = ink_rows(chart, 0, 42);  // the frame is at x = 34 + 12
    std::vector<int64_t> tops;
    for (size_t i = 0; i < rows.size(); ++i)
        if (i == 0 || rows[i] != rows[i - 1] + 1) tops.push_back(rows[i]);
    ASSERT_EQ(tops.size(), 5u);
    for (int q = 1; q <= 3; ++q) {
        const int64_t line = grid[size_t(2 * (3 - q))];  // top line first: q = 3
        const int64_t top  = tops[size_t(4 - q)];
        EXPECT_LE(top, line) << q;
        EXPECT_GE(top + 14, line) << q;
    }
    // "0.5" is wider than "2": right-aligned labels start further left.
    auto first_ink_column = [&](int64_t y0, int64_t y1) {
        for (int64_t x = 0; x < chart.size(1); ++x)
            for (int64_t y = y0; y < y1; ++y)
                if (chart[y][x][0].item<int>() == 60) return x;
        return int64_t(-1);
    };
    EXPECT_LT(first_ink_column(tops[3], tops[3] + 14), first_ink_column(tops[0], tops[0] + 14));
    // Under the frame: "10" at the left end and "109" at the right end.
    const int64_t below = tops.back() + 20;
    EXPECT_FALSE(ink_rows(chart.slice(0, below), 30, 80).empty());
    EXPECT_FALSE(ink_rows(chart.slice(0, below), 340, 400).empty());
    EXPECT_TRUE(ink_rows(chart.slice(0, below), 120, 300).empty());
}

// Mean squared reconstruction error of a VAE (posterior mean) over a dataset's center crops.
double reconstruction_mse(models::AutoencoderKL& vae, const data::CaptionDataset& ds) {
    torch::NoGradGuard ng;
    vae->eval();
    double sum = 0;
    for (int64_t i = 0; i < ds.size(); ++i) {
        const auto x = ds.fixed_pixels(i, false).unsqueeze(0);
        sum += torch::mse_loss(vae->decode(vae->encode(x).mean), x).item<double>();
    }
    return sum / double(ds.size());
}

TEST(DemoTools, TrainVaeLowersTheReconstructionErrorAndScalesTheLatents) {
    TempDir dir;
    training::VaeTrainConfig c;
    c.pretrained_model_name_or_path = fixture("tiny-sd1");
    c.train_data_dir                = testing::make_image_dataset(dir, 4);
    c.output_dir                    = dir.file("out");
    c.resolution                    = 32;
    c.train_batch_size              = 4;
    c.max_train_steps               = 40;
    c.learning_rate                 = 2e-3;
    c.num_threads                   = 2;
    training::train_vae(c);

    data::DatasetConfig d;
    d.train_data_dir        = c.train_data_dir;
    d.transform.resolution  = 32;
    d.transform.center_crop = true;
    const auto ds           = data::CaptionDataset::open(d, testing::tiny_tokenizer());
    auto before             = pipeline::load_vae(fixture("tiny-sd1/vae"), {});
    auto after              = pipeline::load_vae(dir.file("out/vae"), {});
    const double mse_before = reconstruction_mse(before, ds),
                 mse_after  = reconstruction_mse(after, ds);
    EXPECT_LT(mse_after, 0.5 * mse_before) << mse_before << " -> " << mse_after;
    // scaling_factor = 1 / std of the posterior means, recomputed here.
    std::vector<torch::Tensor> means;
    {
        torch::NoGradGuard ng;
        for (int64_t i = 0; i < ds.size(); ++i)
            means.push_back(after->encode(ds.fixed_pixels(i, false).unsqueeze(0)).mean.flatten());
    }
    const double std_all =
        torch::cat(means).to(torch::kFloat64).std(/*unbiased=*/false).item<double>();
    EXPECT_NEAR(after->config.scaling_factor, 1.0 / std_all, 1e-4 / std_all);
    // The other components are the base model's, byte for byte; the folder is complete.
    const auto unet_out =
        io::load_safetensors(dir.file("out/unet/diffusion_pytorch_model.safetensors"));
    const auto unet_base =
        io::load_safetensors(fixture("tiny-sd1/unet/diffusion_pytorch_model.safetensors"));
    ASSERT_EQ(unet_out.size(), unet_base.size());
    for (const auto& [k, v] : unet_base) EXPECT_TRUE(torch::equal(unet_out.at(k), v)) << k;
    EXPECT_TRUE(io::file_exists(dir.file("out/model_index.json")));
    EXPECT_EQ(io::read_text_file(dir.file("out/tokenizer/vocab.json")),
              io::read_text_file(fixture("tiny-sd1/tokenizer/vocab.json")));
    EXPECT_NO_THROW(pipeline::ModelFolder::open(dir.file("out")));
}

// demo-data draws each caption's shape; --jitter 0 centres it at one size, so equal captions get
// equal pictures, while the default jitter moves and scales each one.
TEST(DemoTools, DemoDataJitterZeroGivesOnePicturePerCaption) {
    TempDir dir;
    for (const char* jitter : {"0", "0.2"}) {
        const std::string out = dir.file(std::string("d") + jitter);
        const auto r          = testing::run_t2i(
                     {"demo-data", "--output", out, "--count", "25", "--size", "24", "--jitter", jitter});
        ASSERT_EQ(r.code, 0) << r.out;
        std::ifstream meta(out + "/metadata.jsonl");
        std::vector<std::string> captions;
        for (std::string line; std::getline(meta, line);)
            captions.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
        ASSERT_EQ(captions.size(), 25u);
        EXPECT_EQ(captions[0], captions[24]);  // 24 captions, then they repeat
        EXPECT_NE(captions[0], captions[1]);
        const auto a = io::decode_image(out + "/0000.png"), b = io::decode_image(out + "/0024.png");
        EXPECT_EQ(torch::equal(a, b), std::string(jitter) == "0") << jitter;
        if (std::string(jitter) == "0") {  // centred: the picture is its own mirror image
            EXPECT_TRUE(torch::equal(a, a.flip(1)));
        }
    }
    EXPECT_EQ(testing::run_t2i({"demo-data", "--output", dir.file("bad"), "--jitter", "0.9"}).code,
              2);
}

TEST(DemoTools, PlotLossAndImageGridCommandsWriteNewPngsOnly) {
    TempDir dir;
    {
        std::ofstream m(dir.file("metrics.jsonl"));
        for (int i = 0; i < 20; ++i)
            m << "{\"step\": " << i + 1 << ", \"train_loss\": " << 1.0 / (i + 1) << "}\n";
    }
    auto r = testing::run_t2i(
        {"plot-loss", "--metrics", dir.file("metrics.jsonl"), "--output", dir.file("loss.png")});
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(io::decode_image(dir.file("loss.png")).sizes(), (std::vector<int64_t>{360, 640, 3}));
    r = testing::run_t2i(
        {"plot-loss", "--metrics", dir.file("metrics.jsonl"), "--output", dir.file("loss.png")});
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.out.find("exists"), std::string::npos) << r.out;
    r = testing::run_t2i({"image-grid", "--columns", "2", "--output", dir.file("grid.png"),
                          dir.file("loss.png"), dir.file("loss.png")});
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(io::decode_image(dir.file("grid.png")).sizes(), (std::vector<int64_t>{368, 1292, 3}));
    // --cell_size: a 2x3 image becomes 4x6 by pixel repetition (nearest), beside the chart
    // scaled to 6 wide (360x640 -> 3x6).
    auto small = torch::arange(18, torch::kInt64).to(torch::kUInt8).reshape({2, 3, 3}) * 10;
    io::write_png(dir.file("small.png"), small);
    r = testing::run_t2i({"image-grid", "--columns", "2", "--cell_size", "6", "--output",
                          dir.file("cells.png"), dir.file("small.png"), dir.file("loss.png")});
    ASSERT_EQ(r.code, 0) << r.out;
    const auto cells = io::decode_image(dir.file("cells.png"));
    ASSERT_EQ(cells.sizes(), (std::vector<int64_t>{4 + 8, 12 + 12, 3}));          // gap 4 around
    const auto upscaled = small.repeat_interleave(2, 0).repeat_interleave(2, 1);  // each pixel 2x2
    EXPECT_TRUE(torch::equal(cells.slice(0, 4, 8).slice(1, 4, 10), upscaled));
}

}  // namespace
}  // namespace t2i
