// Tests: models/clip_text against transformers 4.38 outputs of the tiny SD1 / SD2 text encoders
// (fixtures/golden/<cfg>/text_encoder.safetensors), parameter counts of the real SD 1.5 / SD 2.1
// text encoders, and config validation.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io/json_config.h"
#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/weights.h"
#include "test_util.h"

using t2i::testing::fixture;
using t2i::testing::forward_close;
using namespace t2i::models;

namespace {

CLIPTextModel load_model(const std::string& folder) {
    auto config = CLIPTextConfig::from_json(t2i::io::read_json(fixture(folder + "/config.json")));
    CLIPTextModel model(config);
    load_weights(*model, {fixture(folder + "/model.safetensors")}, "text_encoder");
    model->eval();
    return model;
}

CLIPTextConfig config_from_string(const std::string& text) {
    return CLIPTextConfig::from_json(t2i::io::JsonConfig(nlohmann::json::parse(text), "inline"));
}

void check_against_golden(const std::string& cfg) {
    torch::NoGradGuard no_grad;
    auto model  = load_model(cfg + "/text_encoder");
    auto golden = t2i::io::load_safetensors(fixture("golden/" + cfg + "/text_encoder.safetensors"));
    auto out    = model->forward(golden.at("input_ids"), /*output_hidden_states=*/true);

    EXPECT_TRUE(forward_close(out.last_hidden_state, golden.at("last_hidden_state")));
    EXPECT_TRUE(forward_close(out.pooler_output, golden.at("pooler_output")));
    ASSERT_EQ(out.hidden_states.size(), 6u);
    for (size_t i = 0; i < out.hidden_states.size(); ++i)
        EXPECT_TRUE(
            forward_close(out.hidden_states[i], golden.at("hidden_states." + std::to_string(i))))
            << "hidden_states." << i;
    EXPECT_FALSE(out.text_embeds.defined());
    EXPECT_EQ(count_parameters(*model), 68473);
}

}  // namespace

TEST(CLIPTextModel, TinySd1MatchesTransformers) { check_against_golden("tiny-sd1"); }

TEST(CLIPTextModel, TinySd2MatchesTransformers) { check_against_golden("tiny-sd2"); }

TEST(CLIPTextModel, WithProjectionMatchesTransformers) {
    torch::NoGradGuard no_grad;
    auto model = load_model("tiny-sd2-extras/text_encoder_with_projection");
    ASSERT_TRUE(model->has_projection());
    auto golden = t2i::io::load_safetensors(fixture("golden/tiny-sd2/text_encoder.safetensors"));
    auto out    = model->forward(golden.at("input_ids"));
    EXPECT_TRUE(out.hidden_states.empty());
    EXPECT_TRUE(forward_close(out.text_embeds, golden.at("with_projection.text_embeds")));
    EXPECT_TRUE(
        forward_close(out.last_hidden_state, golden.at("with_projection.last_hidden_state")));
    EXPECT_EQ(count_parameters(*model), 68473 + 24 * 32);
}

TEST(CLIPTextModel, KeysEqualTransformersNames) {
    auto config = CLIPTextConfig::from_json(
        t2i::io::read_json(fixture("tiny-sd2-extras/text_encoder_with_projection/config.json")));
    CLIPTextModel model(config);
    auto params = model->named_parameters();
    EXPECT_TRUE(params.contains("text_model.embeddings.token_embedding.weight"));
    EXPECT_TRUE(params.contains("text_model.embeddings.position_embedding.weight"));
    EXPECT_TRUE(params.contains("text_model.encoder.layers.4.self_attn.q_proj.bias"));
    EXPECT_TRUE(params.contains("text_model.encoder.layers.0.mlp.fc2.weight"));
    EXPECT_TRUE(params.contains("text_model.final_layer_norm.weight"));
    EXPECT_TRUE(params.contains("text_projection.weight"));
    EXPECT_FALSE(params.contains("text_projection.bias"));
    EXPECT_TRUE(model->named_buffers().is_empty());  // no position_ids buffer
    // The constructor flag overrides architectures.
    CLIPTextModel plain(config, /*with_projection=*/false);
    EXPECT_FALSE(plain->has_projection());
    EXPECT_EQ(count_parameters(*plain), 68473);
}

TEST(CLIPTextModel, LegacyAndEosPooling) {
    torch::NoGradGuard no_grad;
    // With eos_token_id == 2 (legacy) the pooled position is argmax(ids); otherwise the first
    // position holding eos_token_id. Ids: 5 = "eos" in the new rule, 9 is the largest id.
    auto config = config_from_string(R"({"vocab_size": 16, "hidden_size": 8,
        "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2,
        "max_position_embeddings": 6, "eos_token_id": 5})");
    CLIPTextModel model(config);
    auto ids = torch::tensor({1, 5, 9, 5, 3, 0}, torch::kLong).view({1, 6});
    auto out = model->forward(ids);
    EXPECT_TRUE(out.pooler_output.equal(out.last_hidden_state.select(1, 1)));
    model->text_model->config.eos_token_id = 2;
    out                                    = model->forward(ids);
    EXPECT_TRUE(out.pooler_output.equal(out.last_hidden_state.select(1, 2)));
}

TEST(CLIPTextModel, RealSdParameterCounts) {
    torch::NoGradGuard no_grad;
    // openai/clip-vit-large-patch14 (SD 1.x): 12 x 7,087,872 per layer + 49408x768 + 77x768 + 1536.
    auto sd15 = config_from_string(R"({"architectures": ["CLIPTextModel"], "hidden_size": 768,
        "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
        "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-05, "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 2,
        "pad_token_id": 1})");
    EXPECT_EQ(count_parameters(*CLIPTextModel(sd15)), 123060480);
    // stabilityai/stable-diffusion-2-1 text_encoder (OpenCLIP ViT-H, 23 of 24 layers):
    // 23 x 12,596,224 + 49408x1024 + 77x1024 + 2048.
    auto sd21 = config_from_string(R"({"architectures": ["CLIPTextModel"], "hidden_size": 1024,
        "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
        "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "gelu",
        "layer_norm_eps": 1e-05, "projection_dim": 512, "bos_token_id": 0, "eos_token_id": 2,
        "pad_token_id": 1})");
    EXPECT_EQ(sd21.hidden_act, "gelu");
    EXPECT_EQ(count_parameters(*CLIPTextModel(sd21)), 340387840);
}

TEST(CLIPTextConfig, RejectsBadConfigs) {
    try {
        config_from_string(R"({"hidden_act": "relu"})");
        FAIL() << "expected a throw";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("relu"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("quick_gelu"), std::string::npos) << e.what();
    }
    EXPECT_THROW(config_from_string(R"({"hidden_size": 30, "num_attention_heads": 4})"),
                 std::runtime_error);
    EXPECT_THROW(config_from_string(R"({"hidden_size": "big"})"), std::runtime_error);
    // Null keys take the defaults, as in transformers.
    auto c = config_from_string(R"({"hidden_act": null})");
    EXPECT_EQ(c.hidden_act, "quick_gelu");
    EXPECT_EQ(c.eos_token_id, 49407);
}

TEST(CLIPTextModel, RejectsBadInputs) {
    auto config = config_from_string(R"({"vocab_size": 16, "hidden_size": 8,
        "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2,
        "max_position_embeddings": 4})");
    CLIPTextModel model(config);
    EXPECT_THROW(model->forward(torch::zeros({1, 5}, torch::kLong)), std::runtime_error);
    EXPECT_THROW(model->forward(torch::full({1, 3}, 16, torch::kLong)), std::runtime_error);
    EXPECT_THROW(model->forward(torch::zeros({3}, torch::kLong)), std::runtime_error);
    EXPECT_THROW(model->forward(torch::zeros({1, 3}, torch::kInt)), std::runtime_error);
}
