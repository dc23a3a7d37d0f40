// Tests: models/weights and pipeline/model_dir weight discovery on the tiny-sd1 fixtures: strict
// loading (missing / unexpected / wrong shape), the legacy VAE attention names, the ignored CLIP
// position_ids, dtype conversion, variants, .bin hints, sharded files, save round trip and the
// Hub-id error.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "io/json_config.h"
#include "io/safetensors.h"
#include "models/weights.h"
#include "pipeline/model_dir.h"
#include "test_util.h"

namespace t2i {
namespace {

namespace fs = std::filesystem;
using testing::fixture;
using testing::TempDir;

const std::string kVaeFile = "diffusion_pytorch_model.safetensors";

io::TensorMap fixture_vae_tensors() {
    return io::load_safetensors(fixture("tiny-sd1/vae/" + kVaeFile));
}

models::AutoencoderKL fresh_vae() {
    return models::AutoencoderKL(
        models::AutoencoderKLConfig::from_json(io::read_json(fixture("tiny-sd1/vae/config.json"))));
}

// A component folder `dir/<name>` with the fixture's config.json and `tensors` saved as `file`.
std::string make_component(const TempDir& dir, const std::string& name, const std::string& source,
                           const io::TensorMap& tensors, const std::string& file) {
    const std::string path = dir.file(name);
    fs::create_directories(path);
    fs::copy_file(fixture(source + "/config.json"), path + "/config.json");
    if (!file.empty()) io::save_safetensors(path + "/" + file, tensors);
    return path;
}

// `f` throws std::runtime_error whose message contains every needle.
template <typename F>
::testing::AssertionResult throws_with(F&& f, const std::vector<std::string>& needles) {
    try {
        f();
    } catch (const std::runtime_error& e) {
        const std::string msg = e.what();
        for (const auto& needle : needles)
            if (msg.find(needle) == std::string::npos)
                return ::testing::AssertionFailure() << "message lacks '" << needle << "': " << msg;
        return ::testing::AssertionSuccess() << msg;
    } catch (const std::exception& e) {
        return ::testing::AssertionFailure() << "not a std::runtime_error: " << e.what();
    }
    return ::testing::AssertionFailure() << "did not throw";
}

// Same keys, dtypes and bitwise-equal values.
::testing::AssertionResult same_tensors(const io::TensorMap& actual,
                                        const io::TensorMap& expected) {
    if (actual.size() != expected.size())
        return ::testing::AssertionFailure()
               << actual.size() << " tensors vs " << expected.size() << " expected";
    for (const auto& [key, e] : expected) {
        auto it = actual.find(key);
        if (it == actual.end()) return ::testing::AssertionFailure() << "missing " << key;
        if (it->second.scalar_type() != e.scalar_type())
            return ::testing::AssertionFailure()
                   << key << ": dtype " << it->second.scalar_type() << " vs " << e.scalar_type();
        if (!torch::equal(it->second, e)) return ::testing::AssertionFailure() << key << " differs";
    }
    return ::testing::AssertionSuccess();
}

io::TensorMap converted(const io::TensorMap& tensors, torch::ScalarType dtype) {
    io::TensorMap out;
    for (const auto& [k, t] : tensors) out[k] = t.to(dtype);
    return out;
}

TEST(LoadWeights, FixtureVaeLoadsExactly) {
    auto vae = fresh_vae();
    models::load_weights(*vae, {fixture("tiny-sd1/vae/" + kVaeFile)}, "vae");
    EXPECT_TRUE(same_tensors(models::state_dict(*vae), fixture_vae_tensors()));
}

TEST(LoadWeights, MissingKeyIsListed) {
    TempDir dir;
    auto tensors = fixture_vae_tensors();
    ASSERT_EQ(tensors.erase("decoder.conv_out.bias"), 1u);
    const auto path = dir.file("w.safetensors");
    io::save_safetensors(path, tensors);
    auto vae = fresh_vae();
    EXPECT_TRUE(throws_with([&] { models::load_weights(*vae, {path}, "vae"); },
                            {"vae", path, "missing keys (1)", "decoder.conv_out.bias"}));
}

TEST(LoadWeights, UnexpectedKeyIsListed) {
    TempDir dir;
    auto tensors                    = fixture_vae_tensors();
    tensors["decoder.extra.weight"] = torch::zeros({2});
    const auto path                 = dir.file("w.safetensors");
    io::save_safetensors(path, tensors);
    auto vae = fresh_vae();
    EXPECT_TRUE(throws_with([&] { models::load_weights(*vae, {path}, "vae"); },
                            {"vae", path, "unexpected keys (1)", "decoder.extra.weight"}));
}

TEST(LoadWeights, WrongShapeNamesKeyAndBothShapes) {
    TempDir dir;
    auto tensors = fixture_vae_tensors();
    ASSERT_EQ(tensors.at("encoder.conv_in.weight").sizes(), (std::vector<int64_t>{32, 3, 3, 3}));
    tensors["encoder.conv_in.weight"] = torch::zeros({32, 3, 1, 1});
    const auto path                   = dir.file("w.safetensors");
    io::save_safetensors(path, tensors);
    auto vae = fresh_vae();
    EXPECT_TRUE(
        throws_with([&] { models::load_weights(*vae, {path}, "vae"); },
                    {"vae", path, "encoder.conv_in.weight", "[32, 3, 1, 1]", "[32, 3, 3, 3]"}));
}

TEST(LoadWeights, NoFilesIsAnError) {
    auto vae = fresh_vae();
    EXPECT_TRUE(throws_with([&] { models::load_weights(*vae, {}, "vae"); }, {"vae"}));
}

TEST(LoadWeights, DuplicateKeyAcrossFilesIsAnError) {
    TempDir dir;
    const auto tensors = fixture_vae_tensors();
    io::TensorMap a, b;
    for (const auto& [k, t] : tensors) (k.rfind("encoder.", 0) == 0 ? a : b)[k] = t;
    a["decoder.conv_out.bias"] = tensors.at("decoder.conv_out.bias");
    io::save_safetensors(dir.file("a.safetensors"), a);
    io::save_safetensors(dir.file("b.safetensors"), b);
    auto vae = fresh_vae();
    EXPECT_TRUE(throws_with(
        [&] {
            models::load_weights(*vae, {dir.file("a.safetensors"), dir.file("b.safetensors")},
                                 "vae");
        },
        {"decoder.conv_out.bias", "more than once"}));
}

TEST(LoadWeights, CanonicalKeysAndIgnoreList) {
    EXPECT_EQ(models::canonical_key("encoder.mid_block.attentions.0.query.weight"),
              "encoder.mid_block.attentions.0.to_q.weight");
    EXPECT_EQ(models::canonical_key("decoder.mid_block.attentions.0.key.bias"),
              "decoder.mid_block.attentions.0.to_k.bias");
    EXPECT_EQ(models::canonical_key("decoder.mid_block.attentions.0.value.weight"),
              "decoder.mid_block.attentions.0.to_v.weight");
    EXPECT_EQ(models::canonical_key("encoder.mid_block.attentions.0.proj_attn.bias"),
              "encoder.mid_block.attentions.0.to_out.0.bias");
    for (const std::string key :
         {"encoder.mid_block.attentions.0.to_q.weight",
          "text_model.encoder.layers.0.self_attn.k_proj.weight",
          "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"})
        EXPECT_EQ(models::canonical_key(key), key);
    EXPECT_TRUE(models::is_ignored_key("text_model.embeddings.position_ids"));
    EXPECT_FALSE(models::is_ignored_key("text_model.embeddings.position_embedding.weight"));
}

TEST(LoadWeights, LegacyVaeAttentionNamesLoadIdentically) {
    const std::vector<std::pair<std::string, std::string>> renames = {
        {".to_q.", ".query."},
        {".to_k.", ".key."},
        {".to_v.", ".value."},
        {".to_out.0.", ".proj_attn."}};
    io::TensorMap legacy;
    int renamed = 0;
    for (const auto& [key, t] : fixture_vae_tensors()) {
        std::string k = key;
        if (k.find("mid_block.attentions.0.") != std::string::npos)
            for (const auto& [from, to] : renames)
                if (auto pos = k.find(from); pos != std::string::npos) {
                    k.replace(pos, from.size(), to);
                    ++renamed;
                }
        legacy[k] = t;
    }
    ASSERT_EQ(renamed, 16);  // {encoder, decoder} x {q, k, v, out} x {weight, bias}
    ASSERT_TRUE(legacy.count("encoder.mid_block.attentions.0.proj_attn.weight"));

    TempDir dir;
    const auto folder = make_component(dir, "vae", "tiny-sd1/vae", legacy, kVaeFile);
    auto vae          = pipeline::load_vae(folder, {});
    auto ref          = pipeline::load_vae(fixture("tiny-sd1/vae"), {});
    EXPECT_TRUE(same_tensors(models::state_dict(*vae), models::state_dict(*ref)));
}

TEST(LoadWeights, ClipPositionIdsAreIgnored) {
    auto tensors = io::load_safetensors(fixture("tiny-sd1/text_encoder/model.safetensors"));
    tensors["text_model.embeddings.position_ids"] = torch::arange(77, torch::kInt64).unsqueeze(0);
    TempDir dir;
    const auto folder =
        make_component(dir, "text_encoder", "tiny-sd1/text_encoder", tensors, "model.safetensors");
    ASSERT_EQ(io::SafetensorsFile(folder + "/model.safetensors")
                  .info("text_model.embeddings.position_ids")
                  .shape,
              (std::vector<int64_t>{1, 77}));
    auto text_encoder = pipeline::load_text_encoder(folder, {});
    auto ref          = pipeline::load_text_encoder(fixture("tiny-sd1/text_encoder"), {});
    EXPECT_TRUE(same_tensors(models::state_dict(*text_encoder), models::state_dict(*ref)));
    EXPECT_FALSE(models::state_dict(*text_encoder).count("text_model.embeddings.position_ids"));
}

TEST(LoadWeights, HalfFileLoadsIntoFloatModule) {
    const auto original = fixture_vae_tensors();
    const auto half     = converted(original, torch::kFloat16);
    TempDir dir;
    const auto folder = make_component(dir, "vae", "tiny-sd1/vae", half, kVaeFile);
    auto vae          = pipeline::load_vae(folder, {});
    EXPECT_TRUE(same_tensors(models::state_dict(*vae), converted(half, torch::kFloat32)));
    // Rounding to f16 did change something, so the comparison above is not vacuous.
    EXPECT_FALSE(torch::equal(models::state_dict(*vae).at("encoder.conv_in.weight"),
                              original.at("encoder.conv_in.weight")));
}

TEST(LoadWeights, LoadOptionsDtypeGivesBf16Parameters) {
    pipeline::LoadOptions options;
    options.dtype = torch::kBFloat16;
    auto vae      = pipeline::load_vae(fixture("tiny-sd1/vae"), options);
    for (const auto& p : vae->parameters()) EXPECT_EQ(p.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(
        same_tensors(models::state_dict(*vae), converted(fixture_vae_tensors(), torch::kBFloat16)));
}

TEST(FindWeightFiles, VariantOnlyFolderHintsAtVariant) {
    TempDir dir;
    const auto folder = make_component(dir, "vae", "tiny-sd1/vae", fixture_vae_tensors(),
                                       "diffusion_pytorch_model.fp16.safetensors");
    EXPECT_TRUE(
        throws_with([&] { pipeline::find_weight_files(folder, "diffusion_pytorch_model", ""); },
                    {folder, "diffusion_pytorch_model.safetensors", "--variant fp16"}));
    EXPECT_EQ(pipeline::find_weight_files(folder, "diffusion_pytorch_model", "fp16"),
              std::vector<std::string>{folder + "/diffusion_pytorch_model.fp16.safetensors"});
    pipeline::LoadOptions options;
    options.variant = "fp16";
    auto vae        = pipeline::load_vae(folder, options);
    EXPECT_TRUE(same_tensors(models::state_dict(*vae), fixture_vae_tensors()));
}

TEST(FindWeightFiles, VariantFallsBackToPlainWeightsPerComponent) {
    // diffusers applies --variant per component: a folder without variant files loads the plain
    // weights; one with neither is still an error.
    TempDir dir;
    const auto folder = make_component(dir, "vae", "tiny-sd1/vae", fixture_vae_tensors(),
                                       "diffusion_pytorch_model.safetensors");
    EXPECT_EQ(pipeline::find_weight_files(folder, "diffusion_pytorch_model", "fp16"),
              std::vector<std::string>{folder + "/diffusion_pytorch_model.safetensors"});
    const auto empty = make_component(dir, "empty", "tiny-sd1/vae", {}, "");
    EXPECT_TRUE(
        throws_with([&] { pipeline::find_weight_files(empty, "diffusion_pytorch_model", "fp16"); },
                    {empty, "diffusion_pytorch_model.fp16.safetensors"}));
}

TEST(FindWeightFiles, BinOnlyFolderExplainsSafetensors) {
    TempDir dir;
    const auto folder = make_component(dir, "vae", "tiny-sd1/vae", {}, "");
    std::ofstream(folder + "/diffusion_pytorch_model.bin") << "pickle";
    EXPECT_TRUE(
        throws_with([&] { pipeline::find_weight_files(folder, "diffusion_pytorch_model", ""); },
                    {folder, "diffusion_pytorch_model.bin", ".safetensors", ".bin"}));
}

TEST(FindWeightFiles, MissingFolder) {
    TempDir dir;
    EXPECT_TRUE(throws_with(
        [&] { pipeline::find_weight_files(dir.file("nope"), "diffusion_pytorch_model", ""); },
        {dir.file("nope")}));
}

TEST(FindWeightFiles, ShardedIndexLoadsLikeSingleFile) {
    const auto tensors = fixture_vae_tensors();
    TempDir dir;
    const auto folder        = make_component(dir, "vae", "tiny-sd1/vae", {}, "");
    const std::string shard1 = "diffusion_pytorch_model-00001-of-00002.safetensors";
    const std::string shard2 = "diffusion_pytorch_model-00002-of-00002.safetensors";
    io::TensorMap a, b;
    nlohmann::json weight_map = nlohmann::json::object();
    for (const auto& [k, t] : tensors) {
        const bool first   = k.rfind("encoder.", 0) == 0;
        (first ? a : b)[k] = t;
        weight_map[k]      = first ? shard1 : shard2;
    }
    ASSERT_FALSE(a.empty());
    ASSERT_FALSE(b.empty());
    io::save_safetensors(folder + "/" + shard1, a);
    io::save_safetensors(folder + "/" + shard2, b);
    std::ofstream(folder + "/diffusion_pytorch_model.safetensors.index.json")
        << nlohmann::json{{"metadata", {{"total_size", 123}}}, {"weight_map", weight_map}}.dump(2);

    const auto files = pipeline::find_weight_files(folder, "diffusion_pytorch_model", "");
    EXPECT_EQ(files, (std::vector<std::string>{folder + "/" + shard1, folder + "/" + shard2}));
    auto vae = pipeline::load_vae(folder, {});
    auto ref = pipeline::load_vae(fixture("tiny-sd1/vae"), {});
    EXPECT_TRUE(same_tensors(models::state_dict(*vae), models::state_dict(*ref)));
}

TEST(SaveWeights, RoundTripEqualsStateDict) {
    auto vae = pipeline::load_vae(fixture("tiny-sd1/vae"), {});
    TempDir dir;
    const auto path = dir.file("vae.safetensors");
    models::save_weights(*vae, path);
    io::SafetensorsFile file(path);
    EXPECT_EQ(file.metadata().at("format"), "pt");
    EXPECT_TRUE(same_tensors(file.get_all(), models::state_dict(*vae)));

    auto again = fresh_vae();
    models::load_weights(*again, {path}, "vae");
    EXPECT_TRUE(same_tensors(models::state_dict(*again), models::state_dict(*vae)));

    const auto half = dir.file("vae16.safetensors");
    models::save_weights(*vae, half, torch::kFloat16);
    EXPECT_TRUE(same_tensors(io::load_safetensors(half),
                             converted(models::state_dict(*vae), torch::kFloat16)));
}

TEST(CheckModelDir, HubIdExplainsLocalFolders) {
    EXPECT_TRUE(throws_with([] { pipeline::check_model_dir("runwayml/stable-diffusion-v1-5"); },
                            {"runwayml/stable-diffusion-v1-5", "local folders", "download"}));
}

TEST(CheckModelDir, FolderWithoutModelIndex) {
    TempDir dir;
    EXPECT_TRUE(throws_with([&] { pipeline::check_model_dir(dir.path()); },
                            {dir.path(), "model_index.json"}));
    EXPECT_NO_THROW(pipeline::check_model_dir(fixture("tiny-sd1")));
}

}  // namespace
}  // namespace t2i
