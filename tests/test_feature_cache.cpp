// Tests: --cache_latents / --cache_text_encoder_outputs (training/feature_cache.h) against the
// uncached path: the cached posterior and hidden states equal what the VAE and text encoder give
// for the pixels and ids of the ordinary training transform, a micro-step computes the same loss
// from either, a training run with the caches gives the same weights as one without (both draw
// the same noise), the loader without decoding draws what it draws with decoding, a disk cache is
// reused and a changed image (or transform flag) is encoded again, and a random crop with a
// choice is refused.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "data/caption_dataset.h"
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

using testing::fixture;
using testing::TempDir;

namespace fs = std::filesystem;

training::TrainConfig cache_config(const TempDir& dir, const std::string& data) {
    auto c                       = testing::tiny_train_config(dir, data);
    c.center_crop                = true;
    c.random_flip                = true;
    c.max_train_steps            = 3;
    c.checkpointing_steps        = 100;
    c.seed                       = 5;
    c.cache_latents              = true;
    c.cache_text_encoder_outputs = true;
    return c;
}

// The models, dataset and a one-process DataParallel of a config, as train() sets them up.
struct CacheSetup {
    explicit CacheSetup(const training::TrainConfig& config)
        : c(config),
          folder(pipeline::ModelFolder::open(c.pretrained_model_name_or_path)),
          dataset(data::CaptionDataset::open(training::dataset_config(c, 5), folder.tokenizer())),
          dp(c, dist::WorldInfo{}, torch::kCPU),
          models(training::load_models(c, folder, folder.scheduler_config(), folder.tokenizer(),
                                       torch::kCPU)) {}
    training::FeatureCache build(io::OutputFolder* out = nullptr) {
        return training::build_feature_cache(c, dp, dataset, models, torch::kFloat32, out,
                                             torch::kCPU);
    }
    training::TrainConfig c;
    pipeline::ModelFolder folder;
    data::CaptionDataset dataset;
    training::DataParallel dp;
    training::TrainingModels models;
};

TEST(FeatureCache, CachedPosteriorAndHiddenStatesEqualTheEncodersOutputs) {
    TempDir dir;
    CacheSetup s(cache_config(dir, testing::make_image_dataset(dir, 3)));
    const auto cache = s.build();
    ASSERT_TRUE(cache.has_latents());
    ASSERT_TRUE(cache.has_text());
    EXPECT_EQ(cache.flips, 2);
    EXPECT_EQ(cache.latent_mean.size(0), 6);
    torch::NoGradGuard no_grad;
    int flipped = 0;
    for (int64_t i = 0; i < s.dataset.size(); ++i)
        for (uint64_t seed = 0; seed < 4; ++seed) {
            data::Rng rng(seed * 31 + i);
            const auto ex     = s.dataset.get(i, rng);  // the ordinary training transform
            const auto dist   = s.models.vae->encode(ex.pixel_values.unsqueeze(0));
            const int64_t row = i * 2 + (ex.flipped ? 1 : 0);
            flipped += ex.flipped;
            EXPECT_TRUE(testing::allclose(cache.latent_mean[row], dist.mean[0], 1e-5, 1e-6)) << row;
            EXPECT_TRUE(testing::allclose(cache.latent_std[row], dist.std[0], 1e-5, 1e-6)) << row;
            const auto states =
                s.models.text_encoder->forward(ex.input_ids.unsqueeze(0)).last_hidden_state;
            const auto text = cache.hidden_states[cache.text_row[size_t(i)][0]];
            EXPECT_TRUE(testing::allclose(text, states[0], 1e-5, 1e-6)) << i;
        }
    EXPECT_GT(flipped, 0);  // both rows were compared
    EXPECT_LT(flipped, 12);
}

TEST(FeatureCache, AMicroStepFromTheCacheEqualsOneFromPixels) {
    TempDir dir;
    CacheSetup s(cache_config(dir, testing::make_image_dataset(dir, 2)));
    const auto cache = s.build();
    auto lc          = training::loader_config(s.c, 5, torch::kCPU, s.dp, training::FeatureCache{});
    data::DataLoader loader(std::make_shared<const data::CaptionDataset>(s.dataset), lc);
    const auto batch = loader.next();
    ASSERT_TRUE(batch && batch->size() == 2);
    auto generator   = at::detail::createCPUGenerator(9);
    const auto cfg   = training::loss_config(s.c);
    const auto draws = training::draw_step_randoms(
        training::latent_shape(s.models.vae->config, {2, 3, 64, 64}), 1000, generator, cfg, false);
    training::StepInputs pixels, cached;
    pixels.pixel_values = batch->pixel_values;
    pixels.input_ids    = batch->input_ids;
    cache.fill(*batch, torch::kCPU, &cached);
    const auto a = training::compute_step(s.models, pixels, draws, cfg);
    const auto b = training::compute_step(s.models, cached, draws, cfg);
    EXPECT_TRUE(testing::allclose(b.latents, a.latents, 1e-5, 1e-6));
    EXPECT_TRUE(testing::allclose(b.loss, a.loss, 1e-5, 1e-7));
}

TEST(FeatureCache, TheLoaderWithoutDecodingDrawsWhatItDrawsWithDecoding) {
    TempDir dir;
    const auto data = testing::make_image_dataset(dir, 5);
    // Captions as lists: the caption choice draws too.
    std::string meta;
    for (int i = 0; i < 5; ++i)
        meta += nlohmann::json{{"file_name", "img" + std::to_string(i) + ".png"},
                               {"text", {"first " + std::to_string(i), "second", "third"}}}
                    .dump() +
                "\n";
    std::ofstream(data + "/metadata.jsonl") << meta;
    auto c        = cache_config(dir, data);
    const auto ds = std::make_shared<const data::CaptionDataset>(
        data::CaptionDataset::open(training::dataset_config(c, 5),
                                   pipeline::ModelFolder::open(fixture("tiny-sd1")).tokenizer()));
    data::LoaderConfig decode;
    decode.batch_size       = 2;
    decode.seed             = 11;
    auto no_decode          = decode;
    no_decode.decode_images = false;
    data::DataLoader a(ds, decode), b(ds, no_decode);
    int flips = 0, choices = 0;
    for (int k = 0; k < 9; ++k) {  // three epochs
        auto x = a.next(), y = b.next();
        ASSERT_EQ(x.has_value(), y.has_value());
        if (!x) continue;
        EXPECT_FALSE(y->pixel_values.defined());
        EXPECT_EQ(x->indices, y->indices);
        EXPECT_EQ(x->flipped, y->flipped);
        EXPECT_EQ(x->caption_index, y->caption_index);
        EXPECT_TRUE(torch::equal(x->input_ids, y->input_ids));
        for (auto f : x->flipped) flips += f;
        for (auto ci : x->caption_index) choices += ci != 0;
    }
    EXPECT_GT(flips, 0);
    EXPECT_GT(choices, 0);
}

TEST(FeatureCache, TrainingWithTheCachesGivesTheWeightsOfTrainingWithout) {
    TempDir dir;
    auto cached                        = cache_config(dir, testing::make_image_dataset(dir, 4));
    cached.output_dir                  = dir.file("cached");
    cached.cache_latents_to_disk       = true;
    cached.gradient_accumulation_steps = 2;
    cached.noise_offset                = 0.05;
    // Adam turns gradients that are zero up to rounding into full +-lr steps of random sign; a
    // larger epsilon keeps rounding noise at rounding size (as tests/test_dist.cpp does).
    cached.adam_epsilon = 1e-3;
    auto plain          = cached;
    plain.output_dir    = dir.file("plain");
    plain.cache_latents = plain.cache_latents_to_disk = plain.cache_text_encoder_outputs = false;
    ASSERT_EQ(training::train(plain), training::TrainResult::kFinished);
    ASSERT_EQ(training::train(cached), training::TrainResult::kFinished);
    EXPECT_TRUE(io::file_exists(cached.output_dir + "/cache/latents.safetensors"));
    const auto a =
        io::load_safetensors(plain.output_dir + "/unet/diffusion_pytorch_model.safetensors");
    const auto b =
        io::load_safetensors(cached.output_dir + "/unet/diffusion_pytorch_model.safetensors");
    // The same losses step by step (a wrong flip or caption row changes them at the 1e-3
    // level) and the same weights.
    auto losses = [](const std::string& dir) {
        std::vector<double> l;
        std::ifstream in(dir + "/logs/metrics.jsonl");
        for (std::string line; std::getline(in, line);)
            l.push_back(nlohmann::json::parse(line)["train_loss"].get<double>());
        return l;
    };
    const auto la = losses(plain.output_dir), lb = losses(cached.output_dir);
    ASSERT_EQ(la.size(), 3u);
    ASSERT_EQ(lb.size(), 3u);
    for (size_t k = 0; k < la.size(); ++k) EXPECT_NEAR(lb[k], la[k], 1e-5 * la[k]) << k;
    ASSERT_EQ(a.size(), b.size());
    double changed = 0;
    const auto base =
        io::load_safetensors(fixture("tiny-sd1/unet/diffusion_pytorch_model.safetensors"));
    for (const auto& [k, v] : a) {
        EXPECT_TRUE(testing::allclose(b.at(k), v, 2e-6, 1e-5)) << k;
        changed += (v - base.at(k)).abs().max().item<double>();
    }
    EXPECT_GT(changed, 0);  // the runs trained
}

// kohya's repeat folders list an image N times: its latents are encoded once and every copy
// holds the same rows.
TEST(FeatureCache, AnImageRepeatedByItsFolderIsEncodedOnce) {
    TempDir dir;
    const std::string data = dir.file("data"), folder = data + "/3_shapes";
    fs::create_directories(folder);
    torch::manual_seed(4);
    for (const char* stem : {"a", "b"}) {
        io::write_png(folder + "/" + stem + ".png",
                      torch::randint(0, 256, {64, 64, 3}, torch::kUInt8));
        std::ofstream(folder + "/" + stem + ".txt") << "a picture " << stem;
    }
    auto c                       = cache_config(dir, data);
    c.cache_text_encoder_outputs = false;
    CacheSetup s(c);
    ASSERT_EQ(s.dataset.size(), 6);  // 2 images x 3 repeats
    const auto cache = s.build();
    EXPECT_EQ(cache.latents_encoded, 2);
    EXPECT_EQ(cache.latents_reused, 4);
    for (int64_t i = 0; i < 6; ++i)
        for (int64_t j = 0; j < 6; ++j) {
            const bool same_image =
                s.dataset.record(i).image_path == s.dataset.record(j).image_path;
            EXPECT_EQ(torch::equal(cache.latent_mean.narrow(0, 2 * i, 2),
                                   cache.latent_mean.narrow(0, 2 * j, 2)),
                      same_image)
                << i << " " << j;
        }
}

TEST(FeatureCache, ADiskCacheIsReusedAndAChangedImageOrFlagIsEncodedAgain) {
    TempDir dir;
    const auto data                      = testing::make_image_dataset(dir, 3);
    auto c                               = cache_config(dir, data);
    c.cache_latents_to_disk              = true;
    c.cache_text_encoder_outputs_to_disk = true;
    io::OutputFolder out(c.output_dir);
    torch::Tensor first_mean;
    {
        CacheSetup s(c);
        const auto cache = s.build(&out);
        EXPECT_EQ(cache.latents_encoded, 3);
        EXPECT_EQ(cache.latents_reused, 0);
        EXPECT_EQ(cache.texts_encoded, 3);
        first_mean = cache.latent_mean.clone();
    }
    {
        CacheSetup s(c);
        const auto cache = s.build(&out);
        EXPECT_EQ(cache.latents_reused, 3);
        EXPECT_EQ(cache.latents_encoded, 0);
        EXPECT_EQ(cache.texts_reused, 3);
        EXPECT_EQ(cache.texts_encoded, 0);
        EXPECT_TRUE(torch::equal(cache.latent_mean, first_mean));
    }
    // A changed image: only it is encoded again, and its rows change.
    torch::manual_seed(99);
    io::write_png(data + "/img1.png", torch::randint(0, 256, {72, 80, 3}, torch::kUInt8));
    {
        CacheSetup s(c);
        const auto cache = s.build(&out);
        EXPECT_EQ(cache.latents_reused, 2);
        EXPECT_EQ(cache.latents_encoded, 1);
        EXPECT_TRUE(torch::equal(cache.latent_mean.narrow(0, 0, 2), first_mean.narrow(0, 0, 2)));
        EXPECT_FALSE(
            torch::allclose(cache.latent_mean.narrow(0, 2, 2), first_mean.narrow(0, 2, 2)));
    }
    // Another transform: every image again.
    c.resolution = 32;
    {
        CacheSetup s(c);
        const auto cache = s.build(&out);
        EXPECT_EQ(cache.latents_reused, 0);
        EXPECT_EQ(cache.latents_encoded, 3);
        EXPECT_EQ(cache.latent_mean.size(-1) * 2, first_mean.size(-1));
    }
}

TEST(FeatureCache, ARandomCropWithAChoiceIsRefusedNamingTheImage) {
    TempDir dir;
    auto c        = cache_config(dir, testing::make_image_dataset(dir, 2));
    c.center_crop = false;  // 80x72 -> 71x64 at resolution 64: the crop has a choice
    CacheSetup s(c);
    testing::expect_error([&] { s.build(); }, {"img0.png", "71x64", "--center_crop"});
    // Square images have no choice: allowed.
    c.resolution = 64;
    TempDir square;
    const std::string data = square.file("data");
    std::filesystem::create_directories(data);
    io::write_png(data + "/a.png", torch::randint(0, 256, {96, 96, 3}, torch::kUInt8));
    std::ofstream(data + "/metadata.jsonl") << R"({"file_name": "a.png", "text": "a"})"
                                            << "\n";
    c.train_data_dir = data;
    CacheSetup t(c);
    EXPECT_TRUE(t.build().has_latents());
}

TEST(FeatureCache, EncodersAreReleasedOnlyWhenNothingElseNeedsThem) {
    TempDir dir;
    auto c     = cache_config(dir, testing::make_image_dataset(dir, 2));
    auto count = [](torch::nn::Module& m) {
        int64_t n = 0;
        for (const auto& p : m.parameters()) n += p.numel();
        return n;
    };
    {
        c.validation_prompts = {"a cat"};  // validation encodes prompts and decodes latents
        CacheSetup s(c);
        const auto cache  = s.build();
        const int64_t vae = count(*s.models.vae), text = count(*s.models.text_encoder);
        EXPECT_EQ(training::release_cached_encoders(s.c, cache, s.models), 0);
        EXPECT_EQ(count(*s.models.vae), vae);
        EXPECT_EQ(count(*s.models.text_encoder), text);
    }
    c.validation_prompts.clear();
    c.cache_text_encoder_outputs = false;  // only the VAE is cached: the text encoder stays
    CacheSetup s(c);
    const auto cache    = s.build();
    const int64_t text  = count(*s.models.text_encoder);
    const double vae_mb = double(count(*s.models.vae)) * 4 / (1 << 20);
    EXPECT_NEAR(training::release_cached_encoders(s.c, cache, s.models), vae_mb, 0.01);
    EXPECT_EQ(count(*s.models.vae), 0);
    EXPECT_EQ(count(*s.models.text_encoder), text);
    EXPECT_GT(s.models.vae->config.scaling_factor, 0);  // the config stays for the step
}

TEST(FeatureCache, ADamagedDiskCacheIsRebuiltAndAnyFileNameWorks) {
    TempDir dir;
    // kohya's layout (sidecar captions): file names come from the folder listing and need not be
    // UTF-8; the cache records them byte for byte.
    const std::string data = dir.file("data");
    std::filesystem::create_directories(data);
    for (const std::string name : {"caf\xe9", "plain"}) {
        io::write_png(data + "/" + name + ".png",
                      testing::random_image(64, 64, int64_t(name.size())));
        std::ofstream(data + "/" + name + ".txt") << "a photo of " << name.size() << "\n";
    }
    auto c                  = cache_config(dir, data);
    c.cache_latents_to_disk = true;
    io::OutputFolder out(c.output_dir);
    const std::string file = c.output_dir + "/cache/latents.safetensors";
    {
        CacheSetup s(c);
        EXPECT_EQ(s.build(&out).latents_encoded, 2);
    }
    {
        CacheSetup s(c);
        EXPECT_EQ(s.build(&out).latents_reused, 2);
    }
    // The record is intact but a tensor is missing: encoded again, not a failed run.
    const io::SafetensorsFile f(file);
    io::save_safetensors(file, {{"std", f.get("std")}}, f.metadata());
    CacheSetup s(c);
    const auto cache = s.build(&out);
    EXPECT_EQ(cache.latents_encoded, 2);
    EXPECT_EQ(cache.latents_reused, 0);
}

TEST(FeatureCache, TheWeightsFingerprintChangesWithAnyWeight) {
    torch::manual_seed(0);
    torch::nn::Linear a(4, 3), b(4, 3);
    {
        torch::NoGradGuard no_grad;
        b->weight.copy_(a->weight);
        b->bias.copy_(a->bias);
    }
    const auto fa = training::weights_fingerprint(*a);
    EXPECT_EQ(training::weights_fingerprint(*b), fa);  // the same weights, another module
    {
        torch::NoGradGuard no_grad;
        b->bias[2].add_(1e-6);  // one element, slightly
    }
    EXPECT_NE(training::weights_fingerprint(*b), fa);
    EXPECT_EQ(fa.size(), 16u);
}

}  // namespace
}  // namespace t2i
