// Tests: StableDiffusionPipeline against diffusers' golden sampling runs (tiny-sd1 / tiny-sd2,
// "a photo of a cat", CFG 7.5, 4 steps, fixed init_latents) for DDIM, Euler and DPM-Solver++,
// and seeded initial latents equal to torch.randn with a seeded CPU generator.
#include <gtest/gtest.h>

#include <regex>

#include "io/file_util.h"
#include "io/json_config.h"
#include "pipeline/model_dir.h"
#include "pipeline/text_to_image.h"
#include "test_util.h"
#include "train_golden.h"

namespace t2i {
namespace {

using testing::fixture;

pipeline::StableDiffusionPipeline load_pipeline(const std::string& cfg) {
    const std::string dir = fixture(cfg);
    return pipeline::StableDiffusionPipeline(
        pipeline::load_unet(dir + "/unet", {}), pipeline::load_vae(dir + "/vae", {}),
        pipeline::load_text_encoder(dir + "/text_encoder", {}),
        tokenizer::CLIPTokenizer::from_pretrained(dir + "/tokenizer"));
}

class PipelineGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(PipelineGolden, MatchesDiffusersForEverySampler) {
    const std::string cfg = GetParam();
    const auto info       = testing::read_golden_info(cfg)["sampling"];
    io::SafetensorsFile golden(fixture("golden/" + cfg + "/sampling.safetensors"));
    auto pipe = load_pipeline(cfg);
    {
        auto embeds = torch::cat({pipe.encode_prompt({info["negative_prompt"].get<std::string>()}),
                                  pipe.encode_prompt({info["prompt"].get<std::string>()})});
        EXPECT_TRUE(testing::forward_close(embeds, golden.get("prompt_embeds")));
    }
    for (const auto& [name, sampler] : info["samplers"].items()) {
        auto scheduler = schedulers::make_scheduler("", io::JsonConfig(sampler["config"], name));
        pipeline::GenerateOptions o;
        o.prompts             = {info["prompt"].get<std::string>()};
        o.negative_prompts    = {info["negative_prompt"].get<std::string>()};
        o.num_inference_steps = info["num_inference_steps"].get<int64_t>();
        o.guidance_scale      = info["guidance_scale"].get<double>();
        o.latents             = golden.get("init_latents");
        const auto result     = pipe(o, *scheduler);
        EXPECT_TRUE(torch::equal(scheduler->timesteps().to(torch::kInt64),
                                 golden.get(name + ".timesteps").to(torch::kInt64)))
            << name;
        // CFG multiplies the UNet's float rounding by 7.5 at every step.
        EXPECT_TRUE(
            testing::allclose(result.latents, golden.get(name + ".final_latents"), 1e-4, 1e-4))
            << name;
        const auto expected = (golden.get(name + ".image_0_1").permute({0, 2, 3, 1}) * 255).round();
        EXPECT_TRUE(testing::allclose(result.images.to(torch::kFloat32), expected, 1.0, 0.0))
            << name;
    }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PipelineGolden, ::testing::Values("tiny-sd1", "tiny-sd2"));

TEST(Pipeline, CpuGeneratorMatchesPyTorchsKnownSequence) {
    // Python: torch.Generator("cpu").manual_seed(0); torch.randn(3, generator=g)
    //   -> tensor([ 1.5410, -0.2934, -2.1788])  (the values PyTorch's docs and tutorials show)
    auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
    auto x   = at::randn({3}, gen, torch::TensorOptions().dtype(torch::kFloat32));
    EXPECT_TRUE(testing::allclose(x, torch::tensor({1.5410f, -0.2934f, -2.1788f}), 1e-4, 0));
}

TEST(Pipeline, SeededLatentsAreTorchRandnOfASeededCpuGenerator) {
    // With guidance off and DDIM at 1 step from a seed, the initial latents are randn(seed); the
    // pipeline must draw exactly at::randn with a CPU generator seeded like torch.Generator.
    auto pipe      = load_pipeline("tiny-sd1");
    auto scheduler = schedulers::make_scheduler(
        "ddim", io::read_json(fixture("tiny-sd1/scheduler/scheduler_config.json")));
    pipeline::GenerateOptions o;
    o.prompts                      = {"a cat", "a dog"};
    o.num_images_per_prompt        = 2;
    o.seed                         = 12345;
    o.num_inference_steps          = 1;
    o.decode                       = false;
    pipeline::GenerateOptions same = o;
    auto a                         = pipe(o, *scheduler).latents;
    auto b                         = pipe(same, *scheduler).latents;
    EXPECT_TRUE(torch::equal(a, b));
    EXPECT_EQ(a.sizes(), (std::vector<int64_t>{4, 4, 32, 32}));
    auto gen      = at::make_generator<at::CPUGeneratorImpl>(12345);
    auto expected = at::randn({4, 4, 32, 32}, gen, torch::TensorOptions().dtype(torch::kFloat32));
    pipeline::GenerateOptions from_latents = o;
    from_latents.seed.reset();
    from_latents.latents = expected;
    EXPECT_TRUE(torch::equal(pipe(from_latents, *scheduler).latents, a));
}

}  // namespace
}  // namespace t2i
