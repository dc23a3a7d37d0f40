// Tests: UNet2DConditionModel against diffusers' outputs and activations on tiny-sd1 / tiny-sd2,
// and parameter counts of the real SD 1.5 / 2.1 configs.
#include <gtest/gtest.h>

#include "io/json_config.h"
#include "models/weights.h"
#include "pipeline/model_dir.h"
#include "test_util.h"

namespace t2i {
namespace {

using testing::fixture;
using testing::forward_close;

class UNetGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(UNetGolden, OutputsAndActivationsMatchDiffusers) {
    const std::string cfg = GetParam();
    auto unet             = pipeline::load_unet(fixture(cfg + "/unet"), {});
    io::SafetensorsFile golden(fixture("golden/" + cfg + "/unet.safetensors"));
    torch::NoGradGuard no_grad;
    const auto sample = golden.get("sample");
    const auto ehs    = golden.get("encoder_hidden_states");

    models::ActivationMap acts;
    auto out = unet->forward(sample, golden.get("timesteps"), ehs, &acts);
    EXPECT_TRUE(forward_close(out, golden.get("out")));
    for (const auto& info : golden.tensors()) {
        if (info.name.rfind("act0.", 0) != 0) continue;
        const std::string name = info.name.substr(5);
        ASSERT_TRUE(acts.count(name)) << "activation not recorded: " << name;
        EXPECT_TRUE(forward_close(acts[name].slice(0, 0, 1), golden.get(info.name))) << name;
    }
    // A 0-d timestep is broadcast over the batch, as the pipelines pass it.
    auto out_scalar = unet->forward(sample, golden.get("scalar_timestep"), ehs);
    EXPECT_TRUE(forward_close(out_scalar, golden.get("out_scalar_timestep")));
}

TEST_P(UNetGolden, ParameterCountMatchesManifest) {
    const std::string cfg = GetParam();
    auto counts           = io::read_json(fixture("manifests/param_counts.json")).json();
    auto unet             = models::UNet2DConditionModel(models::UNet2DConditionConfig::from_json(
                    io::read_json(fixture(cfg + "/unet/config.json"))));
    EXPECT_EQ(models::count_parameters(*unet), counts[cfg]["unet"].get<int64_t>());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, UNetGolden, ::testing::Values("tiny-sd1", "tiny-sd2"));

TEST(UNet, SmallSdParameterCount) {
    auto unet   = models::UNet2DConditionModel(models::UNet2DConditionConfig::from_json(
          io::read_json(fixture("small-sd/unet/config.json"))));
    auto counts = io::read_json(fixture("manifests/param_counts.json")).json();
    EXPECT_EQ(models::count_parameters(*unet), counts["small-sd"]["unet"].get<int64_t>());
}

// The real SD 1.5 and SD 2.1 UNet configs (runwayml/stable-diffusion-v1-5,
// stabilityai/stable-diffusion-2-1), as their unet/config.json files write them.
int64_t count_for(const std::string& json) {
    const auto cfg = models::UNet2DConditionConfig::from_json(
        io::JsonConfig(nlohmann::json::parse(json), "inline"));
    return models::count_parameters(*models::UNet2DConditionModel(cfg));
}

TEST(UNet, StableDiffusion15ParameterCount) {
    EXPECT_EQ(count_for(R"({"_class_name": "UNet2DConditionModel", "act_fn": "silu",
        "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": false, "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
        "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]})"),
              859520964);
}

TEST(UNet, StableDiffusion21ParameterCount) {
    EXPECT_EQ(count_for(R"({"_class_name": "UNet2DConditionModel", "act_fn": "silu",
        "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": false, "cross_attention_dim": 1024,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0,
        "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
        "norm_num_groups": 32, "num_class_embeds": null, "only_cross_attention": false,
        "out_channels": 4, "sample_size": 96,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "upcast_attention": true, "use_linear_projection": true})"),
              865910724);
}

TEST(UNet, OddLatentSizeUsesExplicitUpsampleSizes) {
    // 36 is not a multiple of 2^num_upsamplers... for tiny configs (1 upsampler) use 33: the
    // output must keep the input's size, as diffusers' forward_upsample_size does.
    auto unet = pipeline::load_unet(fixture("tiny-sd1/unet"), {});
    torch::NoGradGuard no_grad;
    auto out =
        unet->forward(torch::randn({1, 4, 33, 31}), torch::tensor(10), torch::randn({1, 77, 32}));
    EXPECT_EQ(out.sizes(), (std::vector<int64_t>{1, 4, 33, 31}));
}

TEST(UNet, UnsupportedConfigIsAClearError) {
    const auto bad =
        io::JsonConfig(nlohmann::json::parse(R"({"down_block_types": ["SimpleCrossAttnDownBlock2D"],
        "up_block_types": ["UpBlock2D"], "block_out_channels": [32]})"),
                       "bad/config.json");
    try {
        models::UNet2DConditionConfig::from_json(bad);
        FAIL() << "expected an error";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find("SimpleCrossAttnDownBlock2D"), std::string::npos)
            << e.what();
        EXPECT_NE(std::string(e.what()).find("bad/config.json"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace t2i
