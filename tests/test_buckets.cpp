// Tests: --enable_bucket (data/buckets.h, the bucketed loader, training). The bucket lists equal
// kohya's make_bucket_resolutions (derived here by hand from its rule), the bucket choice for
// portrait, landscape, square and --bucket_no_upscale images, header sizes equal decoded sizes,
// every batch holds one bucket and every image once per epoch, the order is a function of
// (seed, epoch), two ranks split a step's batch as one process with the combined batch; a run
// stopped and resumed equals a straight one bit for bit; cached latents train like uncached
// ones; two processes train like one (also with cached latents).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <set>

#include "data/buckets.h"
#include "data/loader.h"
#include "io/file_util.h"
#include "io/image_io.h"
#include "io/output_folder.h"
#include "io/safetensors.h"
#include "pipeline/model_dir.h"
#include "test_util.h"
#include "training/feature_cache.h"
#include "training/train_setup.h"
#include "training/trainer.h"

namespace t2i {
namespace {

namespace fs = std::filesystem;
using data::BucketSize;
using testing::fixture;
using testing::TempDir;

data::BucketConfig bucket_config(int64_t res, int64_t min, int64_t max, int64_t steps) {
    data::BucketConfig c;
    c.width      = res;
    c.height     = res;
    c.min_reso   = min;
    c.max_reso   = max;
    c.reso_steps = steps;
    return c;
}

TEST(Buckets, ResolutionsEqualKohyasRule) {
    // kohya's defaults at 512: area 262144; width w from 256 by 64 takes height
    // min(1024, 262144 // w // 64 * 64): 256->1024, 320->768, 384->640, 448->576, 512->512,
    // 576->448, 640->384, 704->320, 768->320, 832..1024->256; plus the square 512.
    const std::vector<BucketSize> sd{{256, 832}, {256, 896}, {256, 960}, {256, 1024}, {320, 704},
                                     {320, 768}, {384, 640}, {448, 576}, {512, 512},  {576, 448},
                                     {640, 384}, {704, 320}, {768, 320}, {832, 256},  {896, 256},
                                     {960, 256}, {1024, 256}};
    EXPECT_EQ(data::make_bucket_resolutions(bucket_config(512, 256, 1024, 64)), sd);
    // 64 px, steps 16: 32->128, 48->80, 64->64, 80->48, 96->32, 112->32, 128->32.
    const std::vector<BucketSize> tiny{{32, 96}, {32, 112}, {32, 128}, {48, 80}, {64, 64},
                                       {80, 48}, {96, 32},  {112, 32}, {128, 32}};
    EXPECT_EQ(data::make_bucket_resolutions(bucket_config(64, 32, 128, 16)), tiny);
    // A larger minimum drops the heights below it (704 -> 320 < 384).
    const std::vector<BucketSize> narrow{
        {384, 640}, {448, 576}, {512, 512}, {576, 448}, {640, 384}};
    EXPECT_EQ(data::make_bucket_resolutions(bucket_config(512, 384, 768, 64)), narrow);
}

TEST(Buckets, EachImageTakesTheBucketOfNearestAspectAndCoversIt) {
    const auto config = bucket_config(512, 256, 1024, 64);
    const auto sd     = data::make_bucket_resolutions(config);
    auto choose       = [&](int64_t w, int64_t h) {
        const auto t = data::select_bucket(sd, {w, h}, config);
        return std::vector<int64_t>{t.width, t.height, t.resized_w, t.resized_h};
    };
    // Square: 512 x 512, scaled by the width.
    EXPECT_EQ(choose(1000, 1000), (std::vector<int64_t>{512, 512, 512, 512}));
    // Portrait 2:3: |384/640 - 0.667| = 0.067 beats |448/576 - 0.667| = 0.111. Wider than the
    // bucket, so the height matches: 600 x 640/900 = 426.7 -> 427.
    EXPECT_EQ(choose(600, 900), (std::vector<int64_t>{384, 640, 427, 640}));
    // Landscape 2:1: 704/320 = 2.2 is nearest; narrower than it, so the width matches.
    EXPECT_EQ(choose(1024, 512), (std::vector<int64_t>{704, 320, 704, 352}));
    // An image at a bucket's size keeps it.
    EXPECT_EQ(choose(448, 576), (std::vector<int64_t>{448, 576, 448, 576}));
    // --bucket_no_upscale: a small image keeps its size, its bucket is rounded down to the steps.
    auto no_up       = config;
    no_up.no_upscale = true;
    auto t           = data::select_bucket({}, {300, 200}, no_up);
    EXPECT_EQ((std::vector<int64_t>{t.width, t.height, t.resized_w, t.resized_h}),
              (std::vector<int64_t>{256, 192, 300, 200}));
    // A large one is scaled to the area: 2000 x 1000 -> sqrt(2 x 262144) = 724 wide; by width
    // 704 x 320 (2.2), by height 640 x 320 (2.0) keeps the aspect better.
    t = data::select_bucket({}, {2000, 1000}, no_up);
    EXPECT_EQ((std::vector<int64_t>{t.width, t.height, t.resized_w, t.resized_h}),
              (std::vector<int64_t>{640, 320, 640, 320}));
    testing::expect_error(
        [&] {
            data::select_bucket({}, {40, 500}, no_up);
        },
        {"40 x 500", "--bucket_reso_steps 64"});
}

TEST(Buckets, HeaderSizesEqualDecodedSizes) {
    int checked = 0;
    for (const auto& entry : fs::directory_iterator(std::string(T2I_FUZZ_CORPUS) + "/image")) {
        torch::Tensor image;
        try {
            image = io::decode_image(entry.path().string());
        } catch (const std::exception&) {
            continue;  // the corpus also holds broken files
        }
        const auto size = io::read_image_size(entry.path().string());
        EXPECT_EQ(size.width, image.size(1)) << entry.path();
        EXPECT_EQ(size.height, image.size(0)) << entry.path();
        ++checked;
    }
    EXPECT_GE(checked, 10);  // PNG, JPEG (gray, CMYK, progressive), WebP (lossy, lossless, anim)
    testing::expect_error([] { io::read_image_size_bytes("GIF89a....", "x.gif"); },
                          {"x.gif", "GIF"});
}

// Images of three shapes in dir/data: `landscape` 96x64, `portrait` 64x96, `square` 64x64.
std::string make_bucket_dataset(const TempDir& dir, int landscape, int portrait, int square = 0) {
    const std::string data = dir.file("data");
    fs::create_directories(data);
    torch::manual_seed(11);
    std::string meta;
    int i    = 0;
    auto add = [&](int64_t w, int64_t h) {
        const std::string name = "img" + std::to_string(i) + ".png";
        io::write_png(data + "/" + name, torch::randint(0, 256, {h, w, 3}, torch::kUInt8));
        meta +=
            nlohmann::json{{"file_name", name}, {"text", "shape " + std::to_string(i++)}}.dump() +
            "\n";
    };
    for (int k = 0; k < landscape; ++k) add(96, 64);
    for (int k = 0; k < portrait; ++k) add(64, 96);
    for (int k = 0; k < square; ++k) add(64, 64);
    std::ofstream(data + "/metadata.jsonl") << meta;
    return data;
}

struct LoaderSetup {
    explicit LoaderSetup(const std::string& data) {
        data::DatasetConfig dc;
        dc.train_data_dir        = data;
        dc.transform.resolution  = 64;
        dc.transform.random_flip = true;
        dataset                  = std::make_shared<const data::CaptionDataset>(
            data::CaptionDataset::open(dc, testing::tiny_tokenizer()));
        plan = std::make_shared<const data::BucketPlan>(
            data::plan_buckets(*dataset, bucket_config(64, 32, 128, 16), false));
    }
    data::LoaderConfig config(int64_t batch, int rank = 0, int world = 1) const {
        data::LoaderConfig lc;
        lc.batch_size = batch;
        lc.seed       = 3;
        lc.rank       = rank;
        lc.world_size = world;
        lc.buckets    = plan;
        return lc;
    }
    std::shared_ptr<const data::CaptionDataset> dataset;
    std::shared_ptr<const data::BucketPlan> plan;
};

TEST(Buckets, EveryBatchHoldsOneBucketAndEveryImageOncePerEpoch) {
    TempDir dir;
    LoaderSetup s(make_bucket_dataset(dir, 5, 3, 2));
    // 96x64 (1.5) -> 80x48 (1.67); 64x96 -> 48x80; 64x64 -> 64x64.
    ASSERT_EQ(s.plan->buckets(), (std::vector<BucketSize>{{48, 80}, {64, 64}, {80, 48}}));
    EXPECT_EQ(s.plan->target(0).resized_w, 80);  // 96 x 80/96, 64 x 80/96 = 53.3 -> 53
    EXPECT_EQ(s.plan->target(0).resized_h, 53);
    data::DataLoader loader(s.dataset, s.config(2));
    EXPECT_EQ(loader.batches_per_epoch(), 3 + 2 + 1);  // ceil(5/2) + ceil(3/2) + ceil(2/2)
    std::vector<std::vector<int64_t>> first_epoch;
    for (int epoch = 0; epoch < 2; ++epoch) {
        std::multiset<int64_t> seen;
        int64_t batches = 0;
        for (auto b = loader.next(); b; b = loader.next(), ++batches) {
            const auto bucket = s.plan->bucket_of(b->indices.at(0));
            for (auto i : b->indices) EXPECT_EQ(s.plan->bucket_of(i), bucket);
            EXPECT_EQ(b->width, s.plan->buckets()[size_t(bucket)].width);
            EXPECT_EQ(b->height, s.plan->buckets()[size_t(bucket)].height);
            EXPECT_EQ(b->pixel_values.sizes(),
                      (std::vector<int64_t>{b->size(), 3, b->height, b->width}));
            seen.insert(b->indices.begin(), b->indices.end());
            if (epoch == 0) first_epoch.push_back(b->indices);
        }
        EXPECT_EQ(batches, loader.batches_per_epoch());
        EXPECT_EQ(seen, (std::multiset<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})) << epoch;
    }
    // A function of (seed, epoch): another loader, a seek, the next epoch differs.
    data::DataLoader again(s.dataset, s.config(2));
    for (size_t k = 0; k < first_epoch.size(); ++k)
        EXPECT_EQ(again.batch_indices(0, int64_t(k)), first_epoch[k]) << k;
    std::vector<std::vector<int64_t>> second_epoch;
    for (int64_t k = 0; k < again.batches_per_epoch(); ++k)
        second_epoch.push_back(again.batch_indices(1, k));
    EXPECT_NE(second_epoch, first_epoch);
    again.seek(1, 4);
    const auto resumed = again.next();
    ASSERT_TRUE(resumed);
    EXPECT_EQ(resumed->indices, second_epoch[4]);
    data::LoaderConfig other = s.config(2);
    other.seed               = 4;
    data::DataLoader reseeded(s.dataset, other);
    std::vector<std::vector<int64_t>> other_epoch;
    for (int64_t k = 0; k < reseeded.batches_per_epoch(); ++k)
        other_epoch.push_back(reseeded.batch_indices(0, k));
    EXPECT_NE(other_epoch, first_epoch);
}

// Step batch k of W ranks x B is batch k of one process with W x B, split by rank, with the same
// pixels (per-sample seeding) and the bucket known on every rank, even one without a sample.
TEST(Buckets, RanksSplitEachStepsBucketBatchLikeOneProcessWithTheCombinedBatch) {
    TempDir dir;
    LoaderSetup s(make_bucket_dataset(dir, 3, 2));
    data::DataLoader single(s.dataset, s.config(2));
    std::vector<data::Batch> expected;
    for (auto b = single.next(); b; b = single.next()) expected.push_back(*b);
    ASSERT_EQ(expected.size(), 3u);  // 2 + 1 landscape, 2 portrait
    for (int r = 0; r < 2; ++r) {
        data::DataLoader rank(s.dataset, s.config(1, r, 2));
        ASSERT_EQ(rank.batches_per_epoch(), 3);
        size_t k = 0;
        for (auto b = rank.next(); b; b = rank.next(), ++k) {
            const auto& e = expected[k];
            EXPECT_EQ(b->global_size, e.size());
            EXPECT_EQ(b->global_offset, r);
            EXPECT_EQ(b->width, e.width);
            EXPECT_EQ(b->height, e.height);
            if (r < e.size()) {
                ASSERT_EQ(b->size(), 1);
                EXPECT_EQ(b->indices[0], e.indices[size_t(r)]);
                EXPECT_TRUE(torch::equal(b->pixel_values[0], e.pixel_values[r]));
            } else {
                EXPECT_EQ(b->size(), 0);
            }
        }
        EXPECT_EQ(k, 3u);
    }
}

training::TrainConfig bucket_train_config(const TempDir& dir, const std::string& data) {
    auto c                = testing::tiny_train_config(dir, data);
    c.enable_bucket       = true;
    c.min_bucket_reso     = 32;
    c.max_bucket_reso     = 128;
    c.bucket_reso_steps   = 16;
    c.seed                = 9;
    c.checkpointing_steps = 100;
    return c;
}

io::TensorMap final_unet(const std::string& out) {
    return io::load_safetensors(out + "/unet/diffusion_pytorch_model.safetensors");
}

TEST(Buckets, InterruptedAndResumedEqualsStraightRunBitForBit) {
    TempDir dir;
    auto c                   = bucket_train_config(dir, make_bucket_dataset(dir, 3, 3));
    c.max_train_steps        = 5;  // 4 batches per epoch: crosses an epoch
    c.random_flip            = true;
    c.use_ema                = true;
    c.lr_scheduler           = "cosine";
    c.noise_offset           = 0.05;
    c.dataloader_num_workers = 1;
    auto straight            = c;
    straight.output_dir      = dir.file("straight");
    ASSERT_EQ(training::train(straight), training::TrainResult::kFinished);

    auto first             = c;
    first.output_dir       = dir.file("resumed");
    first.stop_after_steps = 3;  // stops mid-epoch with a checkpoint
    ASSERT_EQ(training::train(first), training::TrainResult::kInterrupted);
    auto second                   = c;
    second.output_dir             = first.output_dir;
    second.resume_from_checkpoint = "latest";
    ASSERT_EQ(training::train(second), training::TrainResult::kFinished);

    const auto a = final_unet(straight.output_dir), b = final_unet(second.output_dir);
    const auto base = final_unet(fixture("tiny-sd1"));
    ASSERT_EQ(a.size(), b.size());
    double moved = 0;
    for (const auto& [k, v] : a) {
        EXPECT_TRUE(torch::equal(v, b.at(k))) << k;
        moved = std::max(moved, (v - base.at(k)).abs().max().item<double>());
    }
    EXPECT_GT(moved, 0);
}

std::vector<double> losses(const std::string& out) {
    std::vector<double> l;
    std::ifstream in(out + "/logs/metrics.jsonl");
    for (std::string line; std::getline(in, line);)
        l.push_back(nlohmann::json::parse(line)["train_loss"].get<double>());
    return l;
}

// Same weights to fp32 accumulation-order tolerance and the same losses; training moved them.
void expect_same_training(const std::string& a, const std::string& b, const std::string& what) {
    const auto wa = final_unet(a), wb = final_unet(b), base = final_unet(fixture("tiny-sd1"));
    ASSERT_EQ(wa.size(), wb.size());
    double moved = 0;
    for (const auto& [k, v] : wa) {
        EXPECT_TRUE(testing::allclose(wb.at(k), v, 2e-6, 1e-5)) << what << ": " << k;
        moved = std::max(moved, (v - base.at(k)).abs().max().item<double>());
    }
    EXPECT_GT(moved, 1e-4) << what;
    const auto la = losses(a), lb = losses(b);
    ASSERT_EQ(la.size(), lb.size()) << what;
    for (size_t i = 0; i < la.size(); ++i) EXPECT_NEAR(lb[i], la[i], 1e-5 * la[i]) << what;
}

TEST(Buckets, CachedLatentsTrainLikeDecodedImages) {
    TempDir dir;
    auto plain            = bucket_train_config(dir, make_bucket_dataset(dir, 3, 2));
    plain.center_crop     = true;  // cached latents hold one crop
    plain.random_flip     = true;
    plain.max_train_steps = 3;
    plain.adam_epsilon    = 1e-3;  // rounding noise stays rounding-sized (tests/test_dist.cpp)
    plain.report_to       = "jsonl";
    plain.output_dir      = dir.file("plain");
    auto cached           = plain;
    cached.output_dir     = dir.file("cached");
    cached.cache_latents_to_disk = true;
    ASSERT_EQ(training::train(plain), training::TrainResult::kFinished);
    ASSERT_EQ(training::train(cached), training::TrainResult::kFinished);
    expect_same_training(plain.output_dir, cached.output_dir, "cached latents");
    // One tensor pair per bucket on disk (tiny-sd1's VAE halves the size).
    const auto file = io::load_safetensors(cached.output_dir + "/cache/latents.safetensors");
    EXPECT_EQ(file.at("mean.80x48").sizes(), (std::vector<int64_t>{3 * 2, 4, 24, 40}));
    EXPECT_EQ(file.at("std.48x80").sizes(), (std::vector<int64_t>{2 * 2, 4, 40, 24}));
}

// Each image's cached posterior is the VAE's for its bucket's pixels; a disk cache is reused.
TEST(Buckets, CachedLatentsHoldEachBucketsPixelsAndAreReused) {
    TempDir dir;
    auto c                  = bucket_train_config(dir, make_bucket_dataset(dir, 2, 1));
    c.center_crop           = true;
    c.cache_latents_to_disk = true;
    const auto folder       = pipeline::ModelFolder::open(c.pretrained_model_name_or_path);
    const auto dataset =
        data::CaptionDataset::open(training::dataset_config(c, 5), folder.tokenizer());
    training::DataParallel dp(c, dist::WorldInfo{}, torch::kCPU);
    auto models = training::load_models(c, folder, folder.scheduler_config(), folder.tokenizer(),
                                        torch::kCPU);
    const auto plan = training::plan_buckets(c, dataset);
    io::OutputFolder out(c.output_dir);
    auto build = [&] {
        return training::build_feature_cache(c, dp, dataset, models, torch::kFloat32, &out,
                                             torch::kCPU, plan.get());
    };
    const auto first = build();
    EXPECT_EQ(first.latents_encoded, 3);
    ASSERT_EQ(first.bucket_mean.size(), 2u);  // 48x80, 80x48
    for (int64_t i = 0; i < 3; ++i) {
        torch::NoGradGuard no_grad;
        const auto pixels = dataset.fixed_pixels(i, false, &plan->target(i)).unsqueeze(0);
        const auto mean   = models.vae->encode(pixels).mean[0];
        const auto b      = size_t(first.bucket_of[size_t(i)]);
        const auto row    = first.bucket_row[size_t(i)];
        EXPECT_TRUE(testing::allclose(first.bucket_mean[b][row], mean, 1e-5, 1e-5)) << i;
    }
    const auto second = build();
    EXPECT_EQ(second.latents_reused, 3);
    EXPECT_EQ(second.latents_encoded, 0);
    for (size_t b = 0; b < 2; ++b)
        EXPECT_TRUE(torch::equal(second.bucket_mean[b], first.bucket_mean[b])) << b;
}

// ---- two processes (t2i launch) ----

int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family      = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    socklen_t len = sizeof(addr);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    ::close(fd);
    return ntohs(addr.sin_port);
}

testing::RunResult launch(int nproc, const std::vector<std::string>& args) {
    std::vector<std::string> cmd{"train"};
    if (nproc > 1)
        cmd = {"launch",        "--nproc_per_node",          std::to_string(nproc),
               "--master_port", std::to_string(free_port()), "--",
               "train"};
    cmd.insert(cmd.end(), args.begin(), args.end());
    return testing::run_t2i(cmd);
}

TEST(Buckets, TwoProcessesTrainLikeOneWithTheirCombinedBatch) {
    TempDir dir;
    const auto data = make_bucket_dataset(dir, 3, 2, 1);
    auto args       = [&](const std::string& out, int batch) {
        return std::vector<std::string>{"--pretrained_model_name_or_path",
                                        fixture("tiny-sd1"),
                                        "--train_data_dir",
                                        data,
                                        "--output_dir",
                                        out,
                                        "--resolution",
                                        "64",
                                        "--enable_bucket",
                                        "--min_bucket_reso",
                                        "32",
                                        "--max_bucket_reso",
                                        "128",
                                        "--bucket_reso_steps",
                                        "16",
                                        "--center_crop",
                                        "--random_flip",
                                        "--train_batch_size",
                                        std::to_string(batch),
                                        "--max_train_steps",
                                        "4",
                                        "--learning_rate",
                                        "1e-3",
                                        "--seed",
                                        "7",
                                        "--num_threads",
                                        "1",
                                        "--report_to",
                                        "jsonl",
                                        "--checkpointing_steps",
                                        "1000",
                                        "--ddp_timeout",
                                        "60",
                                        "--adam_epsilon",
                                        "1e-3"};
    };
    for (const bool cache : {false, true}) {
        const std::string one = dir.file("one"), two = dir.file("two");
        fs::remove_all(one);
        fs::remove_all(two);
        auto a1 = args(one, 2), a2 = args(two, 1);
        if (cache) a1.push_back("--cache_latents_to_disk"), a2.push_back("--cache_latents_to_disk");
        const auto r1 = launch(1, a1);
        ASSERT_EQ(r1.code, 0) << r1.out;
        const auto r2 = launch(2, a2);
        ASSERT_EQ(r2.code, 0) << r2.out;
        EXPECT_NE(r2.out.find("x 2 process(es)"), std::string::npos) << r2.out;
        expect_same_training(one, two, cache ? "cached latents" : "decoded images");
    }
}

TEST(Buckets, FlagsAreCheckedNamingTheFlag) {
    TempDir dir;
    auto c = bucket_train_config(dir, "unused");
    EXPECT_NO_THROW(c.validate());
    auto rejects = [&](auto change, const std::string& flag) {
        auto bad = c;
        change(bad);
        testing::expect_error<training::FlagError>([&] { bad.validate(); }, {flag});
    };
    rejects([](auto& b) { b.bucket_reso_steps = 12; }, "--bucket_reso_steps");
    rejects([](auto& b) { b.min_bucket_reso = 40; }, "--min_bucket_reso");
    rejects([](auto& b) { b.min_bucket_reso = 96; }, "--min_bucket_reso");  // > --resolution
    rejects([](auto& b) { b.max_bucket_reso = 48; }, "--max_bucket_reso");  // < --resolution
    auto no_up              = c;
    no_up.bucket_no_upscale = true;
    no_up.min_bucket_reso   = 40;  // ignored, as kohya ignores it
    EXPECT_NO_THROW(no_up.validate());
}

}  // namespace
}  // namespace t2i
