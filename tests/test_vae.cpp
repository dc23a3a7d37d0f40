// Tests: AutoencoderKL encode / decode against diffusers on tiny-sd1 / tiny-sd2.
#include <gtest/gtest.h>

#include "models/weights.h"
#include "pipeline/model_dir.h"
#include "test_util.h"

namespace t2i {
namespace {

using testing::fixture;
using testing::forward_close;

class VaeGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(VaeGolden, EncodeAndDecodeMatchDiffusers) {
    for (const bool channels_last : {false, true}) {  // the training VAE runs channels-last
        SCOPED_TRACE(channels_last ? "channels-last weights" : "contiguous weights");
        const std::string cfg = GetParam();
        auto vae              = pipeline::load_vae(fixture(cfg + "/vae"), {});
        if (channels_last) models::to_channels_last(*vae);
        io::SafetensorsFile golden(fixture("golden/" + cfg + "/vae.safetensors"));
        torch::NoGradGuard no_grad;
        const auto x = golden.get("pixel_values");

        auto h = vae->encoder(x);
        EXPECT_TRUE(forward_close(h, golden.get("encoder_output")));
        EXPECT_TRUE(forward_close(vae->quant_conv(h), golden.get("moments")));
        auto dist = vae->encode(x);
        EXPECT_TRUE(forward_close(dist.mean, golden.get("latent_dist.mean")));
        EXPECT_TRUE(forward_close(dist.logvar, golden.get("latent_dist.logvar")));
        EXPECT_TRUE(forward_close(dist.std, golden.get("latent_dist.std")));
        EXPECT_TRUE(forward_close(dist.var, golden.get("latent_dist.var")));
        EXPECT_TRUE(
            forward_close(dist.sample(golden.get("sample_eps")), golden.get("latent_dist.sample")));

        const auto z = golden.get("decode_input");
        EXPECT_TRUE(forward_close(vae->post_quant_conv(z), golden.get("post_quant_conv")));
        EXPECT_TRUE(forward_close(vae->decode(z), golden.get("decode_output")));
        // The round trip chains encoder and decoder, so float rounding of the encoder is amplified
        // by the decoder (measured up to 1.9e-5 at |ref| ~ 0.6): a 10x looser bound than one
        // module.
        EXPECT_TRUE(testing::allclose(vae->decode(dist.mode()),
                                      golden.get("roundtrip_decode_of_mean"), 1e-4, 1e-4));
        EXPECT_DOUBLE_EQ(vae->config.scaling_factor, 0.18215);
    }
}

TEST_P(VaeGolden, ParameterCountMatchesManifest) {
    auto counts = io::read_json(fixture("manifests/param_counts.json")).json();
    auto vae    = models::AutoencoderKL(models::AutoencoderKLConfig::from_json(
           io::read_json(fixture(GetParam() + "/vae/config.json"))));
    EXPECT_EQ(models::count_parameters(*vae), counts[GetParam()]["vae"].get<int64_t>());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, VaeGolden, ::testing::Values("tiny-sd1", "tiny-sd2"));

TEST(Vae, StableDiffusionVaeParameterCount) {
    // The SD 1.x / 2.x VAE (stabilityai/sd-vae-ft-mse): 83,653,863 parameters.
    const auto cfg =
        models::AutoencoderKLConfig::from_json(io::JsonConfig(nlohmann::json::parse(R"({
        "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
        "out_channels": 3, "sample_size": 512,
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]})"),
                                                              "inline"));
    EXPECT_EQ(models::count_parameters(*models::AutoencoderKL(cfg)), 83653863);
    EXPECT_EQ(cfg.vae_scale_factor(), 8);
}

}  // namespace
}  // namespace t2i

namespace t2i {
namespace {

TEST(Vae, MidBlockWithoutAttentionKeepsBothResnets) {
    // diffusers' UNetMidBlock2D(add_attention=False) still has resnets.0 and resnets.1.
    auto json = io::read_json(testing::fixture("tiny-sd1/vae/config.json")).json();
    json["mid_block_add_attention"] = false;
    models::AutoencoderKL vae(
        models::AutoencoderKLConfig::from_json(io::JsonConfig(json, "inline")));
    const auto keys = models::state_dict(*vae);
    EXPECT_TRUE(keys.count("encoder.mid_block.resnets.1.conv1.weight"));
    EXPECT_TRUE(keys.count("decoder.mid_block.resnets.1.conv1.weight"));
    for (const auto& [k, _] : keys) EXPECT_EQ(k.find("attentions"), std::string::npos) << k;
    torch::NoGradGuard no_grad;
    EXPECT_EQ(vae->decode(torch::randn({1, 4, 8, 8})).sizes(),
              (std::vector<int64_t>{1, 3, 16, 16}));
}

}  // namespace
}  // namespace t2i
