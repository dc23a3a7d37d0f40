// Tests: data/transforms (torchvision sizes, Pillow's resampler against the golden train_step
// inputs and hand-derived cases), data/caption_dataset (every layout, column errors) and
// data/loader (determinism across worker counts, seek, sharding, bad samples).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>

#include "data/caption_dataset.h"
#include "data/loader.h"
#include "data/transforms.h"
#include "io/image_io.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace t2i {
namespace {

using data::InterpolationMode;
using testing::expect_error;
using testing::random_image;
using testing::TempDir;
using testing::write_bytes;

// ---- golden train_step inputs, (e) resize formulas ------------------------------------

TEST(Transforms, GoldenTrainStepPixelValues) {
    for (const char* cfg : {"tiny-sd1", "tiny-sd2"}) {
        io::SafetensorsFile f(
            testing::fixture(std::string("golden/") + cfg + "/train_step.safetensors"));
        const auto src      = f.get("inputs.source_images_u8");  // [2, 128, 128, 3]
        const auto expected = f.get("inputs.pixel_values");      // [2, 3, 64, 64]
        for (int64_t i = 0; i < src.size(0); ++i) {
            auto x =
                data::resize_shorter_side(src[i].contiguous(), 64, InterpolationMode::kBilinear);
            x                 = data::center_crop(x, 64);
            const auto got    = data::to_normalized_tensor(x);
            const double diff = (got - expected[i]).abs().max().item<double>();
            std::printf("[%s] golden pixel_values[%lld] max diff %.3g\n", cfg,
                        static_cast<long long>(i), diff);
            EXPECT_TRUE(testing::allclose(got, expected[i], 2.0 / 255, 0));
            EXPECT_EQ(diff, 0.0) << "not bit-exact with PIL";
        }
    }
}

TEST(Transforms, OutputSizeAndCrop) {
    using P = std::pair<int64_t, int64_t>;
    EXPECT_EQ(data::resized_output_size(100, 200, 64), P(64, 128));
    EXPECT_EQ(data::resized_output_size(200, 100, 64), P(128, 64));
    EXPECT_EQ(data::resized_output_size(333, 500, 512), P(512, 768));  // int(768.77)
    EXPECT_EQ(data::resized_output_size(500, 333, 512), P(768, 512));
    EXPECT_EQ(data::resized_output_size(7, 7, 3), P(3, 3));
    // center_crop offsets: int(round(d / 2.0)) with half to even: d=3 -> 2, d=5 -> 2, d=1 -> 0.
    auto rows = torch::arange(0, 9, torch::kInt64).to(torch::kUInt8).view({9, 1, 1});
    auto img  = rows.expand({9, 9, 3}).contiguous();
    for (auto [size, top] : {P(6, 2), P(4, 2), P(8, 0), P(5, 2)})
        EXPECT_EQ(data::center_crop(img, size)[0][0][0].item<int>(), top) << "size " << size;
    EXPECT_THROW(data::parse_interpolation_mode("Lanczos"), std::runtime_error);
    expect_error([] { data::parse_interpolation_mode("cubic"); }, {"nearest_exact", "hamming"});
    EXPECT_EQ(data::parse_interpolation_mode("box"), InterpolationMode::kBox);
}

TEST(Transforms, ConstantStaysConstant) {
    auto flat = torch::full({23, 37, 3}, 201, torch::kUInt8);
    for (const char* name : {"nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"})
        for (auto [h, w] : std::vector<std::pair<int, int>>{{8, 9}, {64, 80}, {23, 12}, {50, 37}}) {
            auto out = data::resize(flat, h, w, data::parse_interpolation_mode(name));
            EXPECT_TRUE(torch::equal(out, torch::full({h, w, 3}, 201, torch::kUInt8)))
                << name << " " << h << "x" << w;
        }
}

TEST(Transforms, BoxHalvingAndNearestByHand) {
    // Box at scale 2 averages pixel pairs: horizontally floor((a + b + 1) / 2) (the fixed-point
    // half is added before the shift), then the same vertically on those 8-bit values.
    const auto img = random_image(6, 8, 4);
    auto out       = data::resize(img, 3, 4, InterpolationMode::kBox);
    auto i32       = img.to(torch::kInt32);
    auto horiz     = (i32.slice(1, 0, 8, 2) + i32.slice(1, 1, 8, 2) + 1).div(2, "floor");  // [6, 4]
    auto both      = (horiz.slice(0, 0, 6, 2) + horiz.slice(0, 1, 6, 2) + 1).div(2, "floor");
    EXPECT_TRUE(torch::equal(out, both.to(torch::kUInt8)));
    // Nearest samples at (i + 0.5) * scale: halving picks odd pixels, doubling repeats.
    auto half = data::resize(img, 3, 4, InterpolationMode::kNearest);
    EXPECT_TRUE(torch::equal(half, img.slice(0, 1, 6, 2).slice(1, 1, 8, 2)));
    auto twice = data::resize(img, 12, 16, InterpolationMode::kNearestExact);
    EXPECT_TRUE(torch::equal(twice.slice(0, 0, 12, 2).slice(1, 0, 16, 2), img));
    EXPECT_TRUE(torch::equal(data::resize(img, 6, 8, InterpolationMode::kLanczos), img));
    // Only one pass runs when one side keeps its size: vertical-only box halving.
    auto vert = data::resize(img, 3, 8, InterpolationMode::kBox);
    auto v    = (i32.slice(0, 0, 6, 2) + i32.slice(0, 1, 6, 2) + 1).div(2, "floor");
    EXPECT_TRUE(torch::equal(vert, v.to(torch::kUInt8)));
}

TEST(Transforms, NormalizeCropAndFlip) {
    auto img = torch::tensor({0, 255, 128}, torch::kUInt8).view({1, 1, 3});
    auto t   = data::to_normalized_tensor(img);
    EXPECT_EQ(t.sizes(), (std::vector<int64_t>{3, 1, 1}));
    EXPECT_FLOAT_EQ(t[0].item<float>(), -1.f);
    EXPECT_FLOAT_EQ(t[1].item<float>(), 1.f);
    EXPECT_FLOAT_EQ(t[2].item<float>(), (128.f / 255.f - 0.5f) / 0.5f);
    const auto big = random_image(20, 30, 5);
    std::set<std::pair<int, int>> offsets;
    for (int s = 0; s < 50; ++s) {
        data::Rng rng(s);
        auto c = data::random_crop(big, 16, rng);
        for (int top = 0; top <= 4; ++top)
            for (int left = 0; left <= 14; ++left)
                if (torch::equal(c, big.slice(0, top, top + 16).slice(1, left, left + 16)))
                    offsets.insert({top, left});
    }
    EXPECT_GT(offsets.size(), 20u);  // many distinct crops, all inside the image
    EXPECT_TRUE(torch::equal(data::hflip(data::hflip(big)), big));
    EXPECT_EQ(data::hflip(big)[3][0][1].item<int>(), big[3][29][1].item<int>());
}

// The one-pass transform (resample only what the crop keeps, flip and normalize while writing)
// equals torchvision's composition built from the reference pieces, bit for bit, with the same
// draws, for every interpolation, both crops, with and without flip, and for shapes that need no
// horizontal, no vertical or no resampling at all.
TEST(Transforms, OnePassTransformEqualsTheComposition) {
    const InterpolationMode modes[] = {
        InterpolationMode::kNearest, InterpolationMode::kNearestExact, InterpolationMode::kBilinear,
        InterpolationMode::kBicubic, InterpolationMode::kBox,          InterpolationMode::kHamming,
        InterpolationMode::kLanczos};
    const std::pair<int, int> shapes[] = {{37, 53}, {53, 37}, {16, 41},
                                          {24, 24}, {16, 16}, {90, 31}};
    int flips = 0, cases = 0;
    for (const auto mode : modes)
        for (const auto& [h, w] : shapes)
            for (int variant = 0; variant < 4; ++variant) {
                const auto img = random_image(h, w, h * 131 + w + variant);
                data::TransformConfig cfg;
                cfg.resolution      = 16;
                cfg.interpolation   = mode;
                cfg.center_crop     = variant % 2 == 0;
                cfg.random_flip     = variant >= 2;
                const uint64_t seed = uint64_t(h * 7 + w + variant);
                data::Rng rng_ref(seed), rng(seed);
                auto x = data::resize_shorter_side(img, cfg.resolution, mode);
                x      = cfg.center_crop ? data::center_crop(x, cfg.resolution)
                                         : data::random_crop(x, cfg.resolution, rng_ref);
                if (cfg.random_flip) x = data::random_hflip(x, rng_ref);
                const auto expected = data::to_normalized_tensor(x.contiguous());
                bool flipped        = false;
                const auto actual   = data::train_transform(img, cfg, rng, &flipped);
                EXPECT_TRUE(torch::equal(actual, expected))
                    << h << "x" << w << " variant " << variant;
                EXPECT_EQ(rng(), rng_ref()) << "the same number of draws";
                flips += flipped;
                ++cases;
                // resize_crop is the same window of the whole resize.
                const auto whole = data::resize(img, 20, 23, mode);
                EXPECT_TRUE(torch::equal(data::resize_crop(img, 20, 23, 3, 5, 11, 17, mode),
                                         whole.slice(0, 3, 14).slice(1, 5, 22)));
            }
    EXPECT_GT(flips, 0);
    EXPECT_LT(flips, cases);
}

// ---- (c) dataset layouts ------------------------------------------------------------------

using testing::tiny_tokenizer;

data::DatasetConfig small_config(const std::string& dir) {
    data::DatasetConfig cfg;
    cfg.train_data_dir          = dir;
    cfg.transform.resolution    = 16;
    cfg.transform.interpolation = InterpolationMode::kBilinear;
    cfg.transform.center_crop   = false;
    cfg.transform.random_flip   = true;
    return cfg;
}

TEST(CaptionDataset, GoldenImagefolderEndToEnd) {
    TempDir dir;
    io::SafetensorsFile f(testing::fixture("golden/tiny-sd1/train_step.safetensors"));
    const auto src                          = f.get("inputs.source_images_u8");
    const std::vector<std::string> captions = {"a large orange cross on a pink background",
                                               "a small white circle on a gray background"};
    std::ofstream meta(dir.file("metadata.jsonl"));
    for (int i = 0; i < 2; ++i) {
        io::write_png(dir.file(std::to_string(i) + ".png"), src[i].contiguous());
        meta << nlohmann::json{{"file_name", std::to_string(i) + ".png"}, {"text", captions[i]}}
                    .dump()
             << "\n";
    }
    meta.close();
    auto cfg      = small_config(dir.path());
    cfg.transform = {64, true, false, InterpolationMode::kBilinear};
    const auto ds = data::CaptionDataset::open(cfg, tiny_tokenizer());
    ASSERT_EQ(ds.size(), 2);
    for (int64_t i = 0; i < 2; ++i) {
        data::Rng rng(0);
        const auto ex = ds.get(i, rng);
        EXPECT_TRUE(torch::equal(ex.pixel_values, f.get("inputs.pixel_values")[i]));
        EXPECT_TRUE(torch::equal(ex.input_ids, f.get("inputs.input_ids")[i]));
    }
}

void write_images(const TempDir& dir, const std::vector<std::string>& names) {
    int seed = 10;
    for (const auto& n : names) {
        std::filesystem::create_directories(std::filesystem::path(dir.file(n)).parent_path());
        io::write_png(dir.file(n), random_image(20, 24, seed++));
    }
}

TEST(CaptionDataset, ImagefolderNestedMetadataAndCaptionLists) {
    TempDir dir;
    write_images(dir, {"a.png", "sub/b.png", "sub/deep/c.png", ".hidden/x.png"});
    std::ofstream(dir.file("metadata.jsonl"))
        << R"({"file_name": "a.png", "text": ["one", "uno"], "extra": 1})"
        << "\n";
    std::ofstream(dir.file("sub/metadata.jsonl"))
        << R"({"file_name": "b.png", "text": "two"})"
        << "\n"
        << R"({"file_name": "deep/c.png", "text": "three"})"
        << "\n";
    auto cfg = small_config(dir.path());
    auto idx = data::index_dataset(cfg);
    EXPECT_EQ(idx.layout, "imagefolder");
    ASSERT_EQ(idx.records.size(), 3u);
    EXPECT_EQ(idx.records[0].captions, (std::vector<std::string>{"one", "uno"}));
    EXPECT_EQ(idx.records[2].image_path, dir.file("sub/deep/c.png"));
    EXPECT_EQ(idx.columns, (std::vector<std::string>{"image", "text", "extra"}));
    const auto ds = data::CaptionDataset::open(cfg, tiny_tokenizer());
    std::set<std::string> seen;
    for (int s = 0; s < 40; ++s) {
        data::Rng rng(s);
        seen.insert(ds.get(0, rng).caption);
    }
    EXPECT_EQ(seen, (std::set<std::string>{"one", "uno"}));
    data::Rng r1(7), r2(7);
    auto e1 = ds.get(1, r1), e2 = ds.get(1, r2);
    EXPECT_TRUE(torch::equal(e1.pixel_values, e2.pixel_values));
    EXPECT_EQ(e1.pixel_values.sizes(), (std::vector<int64_t>{3, 16, 16}));
    EXPECT_EQ(e1.input_ids.sizes(), (std::vector<int64_t>{77}));
    // The script's missing-column message, with the file and the existing columns.
    cfg.caption_column = "caption";
    expect_error([&] { data::index_dataset(cfg); },
                 {"--caption_column value 'caption' needs to be one of: image, text, extra",
                  "metadata.jsonl"});
    cfg.caption_column = "extra";
    expect_error([&] { data::index_dataset(cfg); }, {"strings or lists of strings", "record 0"});
}

TEST(CaptionDataset, MetadataCsvAndRecordFiles) {
    TempDir dir;
    write_images(dir, {"img/a.png", "img/b.png"});
    std::ofstream(dir.file("img/metadata.csv"))
        << "file_name,text\r\na.png,\"red, \"\"big\"\"\nline\"\r\nb.png,plain\r\n";
    auto idx = data::index_dataset(small_config(dir.file("img")));
    ASSERT_EQ(idx.records.size(), 2u);
    EXPECT_EQ(idx.records[0].captions[0], "red, \"big\"\nline");
    // A .json array and a .jsonl file of records; paths relative to the file.
    std::ofstream(dir.file("train.json"))
        << R"([{"path": "img/a.png", "caption": ["x", "y"]}, {"path": "img/b.png", "caption": "z"}])";
    std::ofstream(dir.file("train.jsonl")) << R"({"path": "img/b.png", "caption": "w"})"
                                           << "\n";
    data::DatasetConfig cfg;
    cfg.dataset_name   = dir.file("train.json");
    cfg.image_column   = "path";
    cfg.caption_column = "caption";
    idx                = data::index_dataset(cfg);
    EXPECT_EQ(idx.layout, "records");
    ASSERT_EQ(idx.records.size(), 2u);
    EXPECT_EQ(idx.records[0].image_path, dir.file("img/a.png"));
    cfg.dataset_name = dir.file("train.jsonl");
    EXPECT_EQ(data::index_dataset(cfg).records.at(0).captions[0], "w");
    cfg.image_column = "image";
    expect_error([&] { data::index_dataset(cfg); },
                 {"--image_column value 'image' needs to be one of: path, caption", "train.jsonl"});
}

TEST(CaptionDataset, SidecarCaptionsAndErrors) {
    TempDir dir;
    write_images(dir, {"a.png", "b.png", "c.png"});
    std::ofstream(dir.file("a.txt")) << "  first line\nsecond line\n";
    std::ofstream(dir.file("b.caption")) << "from caption";
    auto idx = data::index_dataset(small_config(dir.path()));
    EXPECT_EQ(idx.layout, "captions");
    ASSERT_EQ(idx.records.size(), 3u);
    EXPECT_EQ(idx.records[0].captions[0], "first line");
    EXPECT_EQ(idx.records[1].captions[0], "from caption");
    EXPECT_EQ(idx.records[2].captions[0], "");  // kohya: empty caption, with a warning
    // Hub ids, missing paths, empty folders, images without captions.
    data::DatasetConfig cfg;
    cfg.dataset_name = "lambdalabs/naruto-blip-captions";
    expect_error([&] { data::index_dataset(cfg); },
                 {"huggingface-cli download --repo-type dataset lambdalabs/naruto-blip-captions "
                  "--local-dir DIR"});
    expect_error([&] { data::index_dataset(data::DatasetConfig{}); }, {"--train_data_dir"});
    TempDir empty;
    expect_error([&] { data::index_dataset(small_config(empty.path())); }, {"no examples"});
    TempDir bare;
    write_images(bare, {"a.png"});
    expect_error([&] { data::index_dataset(small_config(bare.path())); },
                 {"--caption_column value 'text' needs to be one of: image"});
    // max_train_samples: a seeded subset.
    auto c3              = small_config(dir.path());
    c3.max_train_samples = 2;
    c3.seed              = 5;
    auto s1 = data::index_dataset(c3), s2 = data::index_dataset(c3);
    ASSERT_EQ(s1.records.size(), 2u);
    EXPECT_EQ(s1.records[0].image_path, s2.records[0].image_path);
    EXPECT_NE(s1.records[0].image_path, s1.records[1].image_path);
}

// ---- (d) loader ---------------------------------------------------------------------------

std::shared_ptr<const data::CaptionDataset> loader_dataset(const TempDir& dir, int n,
                                                           int corrupt = -1) {
    std::ofstream meta(dir.file("metadata.jsonl"));
    for (int i = 0; i < n; ++i) {
        const std::string name = std::to_string(i) + ".png";
        io::write_png(dir.file(name), random_image(20 + i % 3, 24, 100 + i));
        if (i == corrupt) write_bytes(dir.file(name), "\x89PNG\r\n\x1a\ngarbage");
        meta << nlohmann::json{{"file_name", name}, {"text", {"c" + std::to_string(i), "d"}}}.dump()
             << "\n";
    }
    meta.close();
    return std::make_shared<const data::CaptionDataset>(
        data::CaptionDataset::open(small_config(dir.path()), tiny_tokenizer()));
}

std::vector<data::Batch> run_epochs(data::DataLoader& loader, int epochs) {
    std::vector<data::Batch> out;
    for (int e = 0; e < epochs; ++e)
        while (auto b = loader.next()) out.push_back(std::move(*b));
    return out;
}

TEST(DataLoader, DeterministicAcrossWorkersSeekAndEpochs) {
    TempDir dir;
    auto ds = loader_dataset(dir, 7);
    data::LoaderConfig cfg;
    cfg.batch_size = 3;
    cfg.seed       = 42;
    data::DataLoader serial(ds, cfg);
    EXPECT_EQ(serial.batches_per_epoch(), 3);
    const auto a    = run_epochs(serial, 2);
    cfg.num_workers = 2;
    data::DataLoader threaded(ds, cfg);
    const auto b = run_epochs(threaded, 2);
    ASSERT_EQ(a.size(), 6u);
    ASSERT_EQ(b.size(), 6u);
    for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].indices, b[i].indices);
        EXPECT_TRUE(torch::equal(a[i].pixel_values, b[i].pixel_values)) << "batch " << i;
        EXPECT_TRUE(torch::equal(a[i].input_ids, b[i].input_ids));
    }
    EXPECT_EQ(a[2].pixel_values.size(0), 1);  // drop_last=False
    for (int e = 0; e < 2; ++e) {             // every sample once per epoch
        std::multiset<int64_t> seen;
        for (int k = 0; k < 3; ++k)
            seen.insert(a[e * 3 + k].indices.begin(), a[e * 3 + k].indices.end());
        EXPECT_EQ(seen, (std::multiset<int64_t>{0, 1, 2, 3, 4, 5, 6}));
    }
    EXPECT_NE(a[0].indices, a[3].indices);  // a new order each epoch
    EXPECT_EQ(threaded.position().epoch, 2);
    threaded.seek(1, 1);  // resume: exactly the next batch
    auto again = threaded.next();
    ASSERT_TRUE(again);
    EXPECT_EQ(again->indices, a[4].indices);
    EXPECT_TRUE(torch::equal(again->pixel_values, a[4].pixel_values));
    EXPECT_EQ(threaded.position().batch, 2);
    serial.seek(0, 3);
    EXPECT_FALSE(serial.next());
    EXPECT_EQ(serial.position().epoch, 1);
}

TEST(DataLoader, ShardingSplitsBatchesAcrossRanks) {
    TempDir dir;
    auto ds = loader_dataset(dir, 8);
    std::multiset<int64_t> seen;
    for (int rank = 0; rank < 2; ++rank) {
        data::LoaderConfig cfg;
        cfg.batch_size = 2;
        cfg.seed       = 3;
        cfg.rank       = rank;
        cfg.world_size = 2;
        data::DataLoader loader(ds, cfg);
        EXPECT_EQ(loader.batches_per_epoch(), 2);
        for (auto& b : run_epochs(loader, 1)) seen.insert(b.indices.begin(), b.indices.end());
    }
    EXPECT_EQ(seen, (std::multiset<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
}

TEST(DataLoader, BadSamplesStopOrAreSkipped) {
    TempDir dir;
    auto ds = loader_dataset(dir, 5, /*corrupt=*/2);
    data::Rng rng(0);
    expect_error<data::BadSampleError>([&] { ds->get(2, rng); }, {dir.file("2.png")});
    data::LoaderConfig cfg;
    cfg.batch_size  = 2;
    cfg.num_workers = 2;
    {
        data::DataLoader loader(ds, cfg);
        expect_error([&] { run_epochs(loader, 1); }, {dir.file("2.png")});
    }
    cfg.skip_bad_samples = true;
    data::DataLoader loader(ds, cfg);
    int64_t samples = 0;
    for (auto& b : run_epochs(loader, 2)) samples += b.pixel_values.size(0);
    EXPECT_EQ(samples, 8);
    EXPECT_EQ(loader.skipped(), 2);
}

}  // namespace
}  // namespace t2i
