// Tests: --resolution W,H (kohya's "width,height"; training/train_config.h Resolution). The flag
// takes N or W,H and refuses anything else naming the flag; buckets at W,H equal kohya's
// make_bucket_resolutions((W, H), ...) (the list derived from its rule); without --enable_bucket
// every image is resized to cover W x H and cropped to it (checked against PIL-exact resize and
// torchvision's centre-crop offsets); a run trains on W x H batches, validates at W x H and saves
// the setting.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/buckets.h"
#include "data/loader.h"
#include "data/transforms.h"
#include "io/image_io.h"
#include "pipeline/model_dir.h"
#include "test_util.h"
#include "training/train_config.h"
#include "training/train_setup.h"
#include "training/trainer.h"

namespace t2i {
namespace {

namespace fs = std::filesystem;
using data::BucketSize;
using testing::fixture;
using testing::TempDir;
using training::Resolution;

TEST(Resolution, TakesNOrWidthCommaHeightAndNothingElse) {
    EXPECT_EQ(Resolution::parse("512"), Resolution(512, 512));
    EXPECT_EQ(Resolution::parse("512,768"), Resolution(512, 768));  // width, height
    EXPECT_EQ(Resolution::parse("512,768").str(), "512,768");
    EXPECT_EQ(Resolution::parse("768,768").str(), "768");
    for (const char* bad : {"", "512x768", "-8", "512,", ",512", "1,2,3", " 512", "5e2", "+64"})
        EXPECT_THROW(Resolution::parse(bad), std::invalid_argument) << bad;
    // train_config.json: the script's integer for a square, "W,H" otherwise.
    EXPECT_EQ(nlohmann::json(Resolution(64)), nlohmann::json(64));
    EXPECT_EQ(nlohmann::json(Resolution(64, 32)), nlohmann::json("64,32"));
    training::TrainConfig c;
    c.pretrained_model_name_or_path = "m";
    c.train_data_dir                = "d";
    c.resolution                    = Resolution(512, 764);
    testing::expect_error<training::FlagError>([&] { c.validate(); },
                                               {"--resolution", "multiple of 8", "512,764"});
    c.resolution      = Resolution(512, 768);
    c.enable_bucket   = true;
    c.max_bucket_reso = 704;  // kohya: each side of --resolution within [min, max]
    testing::expect_error<training::FlagError>([&] { c.validate(); },
                                               {"--max_bucket_reso", "512,768"});
    c.max_bucket_reso = 768;
    EXPECT_NO_THROW(c.validate());
    const auto r = testing::run_t2i({"train", "--resolution", "512x768"});
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.out.find("--resolution: expected N or W,H"), std::string::npos) << r.out;
}

TEST(Resolution, BucketsAtWidthHeightEqualKohyasRule) {
    // kohya's make_bucket_resolutions((512, 768), 256, 1024, 64): area 393216; the square
    // int(sqrt(393216) // 64) * 64 = 576; width w takes min(1024, 393216 // w // 64 * 64).
    data::BucketConfig config;
    config.width  = 512;
    config.height = 768;
    const std::vector<BucketSize> expected{
        {256, 1024}, {320, 1024}, {384, 896},  {384, 960},  {384, 1024}, {448, 832}, {512, 704},
        {512, 768},  {576, 576},  {576, 640},  {640, 576},  {704, 512},  {768, 512}, {832, 448},
        {896, 384},  {960, 384},  {1024, 256}, {1024, 320}, {1024, 384}};
    EXPECT_EQ(data::make_bucket_resolutions(config), expected);
    // Without --enable_bucket: the one bucket W x H.
    config.single = true;
    EXPECT_EQ(data::make_bucket_resolutions(config), (std::vector<BucketSize>{{512, 768}}));
}

// dir/data: a landscape 96x64, a portrait 64x96 and a small square 40x40 image.
std::string make_aspect_dataset(const TempDir& dir) {
    const std::string data = dir.file("data");
    fs::create_directories(data);
    torch::manual_seed(5);
    std::string meta;
    const std::vector<std::pair<int64_t, int64_t>> sizes{{96, 64}, {64, 96}, {40, 40}};
    for (size_t i = 0; i < sizes.size(); ++i) {
        const std::string name = "img" + std::to_string(i) + ".png";
        io::write_png(data + "/" + name,
                      torch::randint(0, 256, {sizes[i].second, sizes[i].first, 3}, torch::kUInt8));
        meta +=
            nlohmann::json{{"file_name", name}, {"text", "picture " + std::to_string(i)}}.dump() +
            "\n";
    }
    std::ofstream(data + "/metadata.jsonl") << meta;
    return data;
}

TEST(Resolution, WithoutBucketsEveryImageCoversWidthHeightAndIsCroppedToIt) {
    TempDir dir;
    auto c                    = testing::tiny_train_config(dir, make_aspect_dataset(dir));
    c.resolution              = Resolution(64, 32);
    c.center_crop             = true;
    const auto folder         = pipeline::ModelFolder::open(c.pretrained_model_name_or_path);
    const auto dataset_config = training::dataset_config(c, 5);
    const auto dataset        = std::make_shared<const data::CaptionDataset>(
        data::CaptionDataset::open(dataset_config, folder.tokenizer()));
    const auto plan = training::plan_buckets(c, *dataset);
    ASSERT_TRUE(plan);
    EXPECT_EQ(plan->buckets(), (std::vector<BucketSize>{{64, 32}}));
    // Scale so the image covers 64 x 32: 96x64 by the width (x 2/3: 64 x 42.7 -> 43), 64x96 as
    // is, 40x40 enlarged x 1.6 to 64 x 64.
    const std::vector<std::pair<int64_t, int64_t>> resized{{64, 43}, {64, 96}, {64, 64}};
    data::LoaderConfig lc;
    lc.batch_size = 3;
    lc.seed       = 1;
    lc.buckets    = plan;
    data::DataLoader loader(dataset, lc);
    const auto batch = loader.next();
    ASSERT_TRUE(batch);
    ASSERT_EQ(batch->pixel_values.sizes(), (std::vector<int64_t>{3, 3, 32, 64}));
    for (int64_t k = 0; k < 3; ++k) {
        const int64_t i     = batch->indices[size_t(k)];
        const auto [rw, rh] = resized[size_t(i)];
        EXPECT_EQ(plan->target(i).resized_w, rw) << i;
        EXPECT_EQ(plan->target(i).resized_h, rh) << i;
        // PIL's resize, then torchvision's centre crop: offsets round((size - crop) / 2), half
        // to even (43 - 32 = 11 -> 5.5 -> 6).
        const auto image   = io::decode_image(dir.file("data/img" + std::to_string(i) + ".png"));
        const auto full    = data::resize(image, rh, rw, data::InterpolationMode::kLanczos);
        const int64_t top  = int64_t(std::nearbyint((rh - 32) / 2.0)),
                      left = int64_t(std::nearbyint((rw - 64) / 2.0));
        const auto expected =
            data::to_normalized_tensor(full.slice(0, top, top + 32).slice(1, left, left + 64));
        EXPECT_TRUE(torch::equal(batch->pixel_values[k], expected)) << i;
    }
}

TEST(Resolution, ARunTrainsAndValidatesAtWidthHeight) {
    TempDir dir;
    const auto data       = make_aspect_dataset(dir);
    const std::string out = dir.file("out");
    const auto r          = testing::run_t2i({"train",
                                              "--pretrained_model_name_or_path",
                                              fixture("tiny-sd1"),
                                              "--train_data_dir",
                                              data,
                                              "--resolution",
                                              "48,32",
                                              "--random_flip",
                                              "--train_batch_size",
                                              "2",
                                              "--max_train_steps",
                                              "2",
                                              "--lr_warmup_steps",
                                              "0",
                                              "--validation_prompts",
                                              "a cat",
                                              "--validation_steps",
                                              "2",
                                              "--num_threads",
                                              "2",
                                              "--report_to",
                                              "jsonl",
                                              "--output_dir",
                                              out});
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(io::decode_image(out + "/validation/step-2/0-a-cat.png").sizes(),
              (std::vector<int64_t>{32, 48, 3}));  // H x W
    std::ifstream config_file(out + "/train_config.json");
    EXPECT_EQ(nlohmann::json::parse(config_file).at("resolution"), "48,32");
    // The trained UNet moved away from the base.
    const auto a = io::load_safetensors(out + "/unet/diffusion_pytorch_model.safetensors");
    const auto b =
        io::load_safetensors(fixture("tiny-sd1/unet/diffusion_pytorch_model.safetensors"));
    double moved = 0;
    for (const auto& [k, v] : a) moved = std::max(moved, (v - b.at(k)).abs().max().item<double>());
    EXPECT_GT(moved, 0);
}

}  // namespace
}  // namespace t2i
