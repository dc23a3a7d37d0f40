// Tests: pipeline/single_file and pipeline/ldm_keys on the tiny-sd1 / tiny-sd2 fixtures: the
// diffusers -> original -> diffusers round trip bit for bit, original key names worked out by hand
// from the LDM numbering, the OpenCLIP fused q/k/v, configs inferred from the weights, what is
// refused (pickles, unknown keys, a --config of another family) and what is tolerated (EMA,
// schedule buffers, OpenCLIP extras, older key names); `t2i convert`, `inspect`, `generate` and
// `train` with a single file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/file_util.h"
#include "io/json_config.h"
#include "io/output_folder.h"
#include "io/safetensors.h"
#include "models/weights.h"
#include "pipeline/model_dir.h"
#include "pipeline/single_file.h"
#include "test_util.h"
#include "training/trainer.h"

namespace t2i {
namespace {

namespace fs = std::filesystem;
using testing::fixture;
using testing::TempDir;

io::TensorMap component_tensors(const std::string& dir) {
    const bool text = fs::exists(dir + "/model.safetensors");
    return io::load_safetensors(
        dir + (text ? "/model.safetensors" : "/diffusion_pytorch_model.safetensors"));
}

// Same keys, dtypes, shapes and bits.
void expect_same_tensors(const io::TensorMap& actual, const io::TensorMap& expected,
                         const std::string& what) {
    ASSERT_EQ(actual.size(), expected.size()) << what;
    for (const auto& [key, e] : expected) {
        const auto it = actual.find(key);
        ASSERT_NE(it, actual.end()) << what << ": missing " << key;
        EXPECT_EQ(it->second.scalar_type(), e.scalar_type()) << what << ": " << key;
        EXPECT_TRUE(torch::equal(it->second, e)) << what << ": " << key;
    }
}

nlohmann::json read(const std::string& path) { return io::read_json(path).json(); }

// tiny-<cfg> written as one file by t2i, the path returned.
std::string export_fixture(const TempDir& dir, const std::string& cfg) {
    const std::string path = dir.file(cfg + ".safetensors");
    pipeline::save_single_file(pipeline::ModelFolder::open(fixture(cfg)), path, /*half=*/false);
    return path;
}

// (a) diffusers -> single file -> diffusers: every tensor and every config as before.
TEST(SingleFile, RoundTripIsBitIdenticalForSd1AndSd2) {
    for (const std::string cfg : {"tiny-sd1", "tiny-sd2"}) {
        SCOPED_TRACE(cfg);
        TempDir dir;
        const std::string file = export_fixture(dir, cfg);
        const auto model       = pipeline::ModelFolder::open(file, "", fixture(cfg));
        {
            io::OutputFolder out(dir.file("back"));
            pipeline::save_pipeline_folder(out, model, model.load_unet({}),
                                           model.scheduler_config().json(), "");
        }
        for (const char* c : {"unet", "vae", "text_encoder"}) {
            expect_same_tensors(component_tensors(dir.file("back/") + c),
                                component_tensors(fixture(cfg + "/" + c)), c);
            EXPECT_EQ(read(dir.file("back/") + c + "/config.json"),
                      read(fixture(cfg + "/" + c + "/config.json")))
                << c;
        }
        EXPECT_EQ(read(dir.file("back/scheduler/scheduler_config.json")),
                  read(fixture(cfg + "/scheduler/scheduler_config.json")));
        EXPECT_EQ(read(dir.file("back/model_index.json")),
                  read(fixture(cfg + "/model_index.json")));
        for (const char* f : {"vocab.json", "merges.txt", "tokenizer_config.json"})
            EXPECT_EQ(io::read_text_file(dir.file("back/tokenizer/") + f),
                      io::read_text_file(fixture(cfg + "/tokenizer/") + f));
    }
}

// (b) Key names from the LDM numbering, by hand. tiny-sd1: layers_per_block 2 (3 input_blocks per
// level: 2 resnets + a downsampler), down (DownBlock2D, CrossAttnDownBlock2D), up
// (CrossAttnUpBlock2D, UpBlock2D), VAE of 2 levels.
TEST(SingleFile, Sd1KeyNamesFollowTheLdmNumbering) {
    TempDir dir;
    const auto file = io::load_safetensors(export_fixture(dir, "tiny-sd1"));
    const auto unet = component_tensors(fixture("tiny-sd1/unet"));
    const auto vae  = component_tensors(fixture("tiny-sd1/vae"));
    const auto text = component_tensors(fixture("tiny-sd1/text_encoder"));
    const std::vector<std::pair<std::string, std::string>> unet_names = {
        // input_blocks.{1 + i*3 + j}: down block 1, attention 0 -> 4.1
        {"down_blocks.1.attentions.0.proj_in.weight", "input_blocks.4.1.proj_in.weight"},
        {"down_blocks.0.resnets.1.norm1.weight", "input_blocks.2.0.in_layers.0.weight"},
        {"down_blocks.0.downsamplers.0.conv.weight", "input_blocks.3.0.op.weight"},
        {"down_blocks.1.resnets.0.conv_shortcut.weight", "input_blocks.4.0.skip_connection.weight"},
        {"mid_block.resnets.1.time_emb_proj.weight", "middle_block.2.emb_layers.1.weight"},
        {"mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
         "middle_block.1.transformer_blocks.0.attn2.to_k.weight"},
        // output_blocks.{i*3 + j}; up block 0 has attentions, so its upsampler is .2.conv
        {"up_blocks.0.attentions.2.transformer_blocks.0.ff.net.2.weight",
         "output_blocks.2.1.transformer_blocks.0.ff.net.2.weight"},
        {"up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.2.conv.weight"},
        {"up_blocks.1.resnets.2.conv2.weight", "output_blocks.5.0.out_layers.3.weight"},
        {"time_embedding.linear_2.bias", "time_embed.2.bias"},
        {"conv_in.weight", "input_blocks.0.0.weight"},
        {"conv_norm_out.weight", "out.0.weight"},
        {"conv_out.bias", "out.2.bias"},
    };
    for (const auto& [diffusers, ldm] : unet_names) {
        const std::string key = "model.diffusion_model." + ldm;
        ASSERT_TRUE(file.count(key)) << key;
        EXPECT_TRUE(torch::equal(file.at(key), unet.at(diffusers))) << key;
    }
    // VAE: the decoder numbers its levels from the bottom; attention weights are 1x1 convs.
    const std::vector<std::pair<std::string, std::string>> vae_names = {
        {"decoder.up_blocks.0.upsamplers.0.conv.weight", "decoder.up.1.upsample.conv.weight"},
        {"decoder.up_blocks.1.resnets.1.norm2.bias", "decoder.up.0.block.1.norm2.bias"},
        {"encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
         "encoder.down.1.block.0.nin_shortcut.weight"},
        {"encoder.down_blocks.0.downsamplers.0.conv.bias", "encoder.down.0.downsample.conv.bias"},
        {"encoder.mid_block.resnets.1.conv1.weight", "encoder.mid.block_2.conv1.weight"},
        {"decoder.mid_block.attentions.0.group_norm.weight", "decoder.mid.attn_1.norm.weight"},
        {"decoder.mid_block.attentions.0.to_out.0.bias", "decoder.mid.attn_1.proj_out.bias"},
        {"decoder.conv_norm_out.weight", "decoder.norm_out.weight"},
        {"post_quant_conv.weight", "post_quant_conv.weight"},
    };
    for (const auto& [diffusers, ldm] : vae_names) {
        const std::string key = "first_stage_model." + ldm;
        ASSERT_TRUE(file.count(key)) << key;
        EXPECT_TRUE(torch::equal(file.at(key), vae.at(diffusers))) << key;
    }
    const auto& q = file.at("first_stage_model.encoder.mid.attn_1.q.weight");
    EXPECT_EQ(q.sizes(), (std::vector<int64_t>{64, 64, 1, 1}));
    EXPECT_TRUE(torch::equal(q.flatten(1), vae.at("encoder.mid_block.attentions.0.to_q.weight")));
    // SD 1.x text encoder: the HF CLIP names under cond_stage_model.transformer.
    for (const auto& [key, t] : text)
        EXPECT_TRUE(torch::equal(file.at("cond_stage_model.transformer." + key), t)) << key;
    EXPECT_EQ(file.size(), unet.size() + vae.size() + text.size());
}

// (b) tiny-sd2: OpenCLIP names with in_proj = cat(q, k, v); up block 0 has no attention, so its
// upsampler is output_blocks.2.1.conv.
TEST(SingleFile, Sd2TextEncoderIsOpenClipWithFusedQkv) {
    TempDir dir;
    const auto file     = io::load_safetensors(export_fixture(dir, "tiny-sd2"));
    const auto text     = component_tensors(fixture("tiny-sd2/text_encoder"));
    const auto unet     = component_tensors(fixture("tiny-sd2/unet"));
    const std::string O = "cond_stage_model.model.";
    for (int layer = 0; layer < 5; ++layer) {
        const std::string d = "text_model.encoder.layers." + std::to_string(layer) + ".self_attn.";
        const std::string r = O + "transformer.resblocks." + std::to_string(layer) + ".";
        for (const std::string leaf : {"weight", "bias"}) {
            const auto fused =
                torch::cat({text.at(d + "q_proj." + leaf), text.at(d + "k_proj." + leaf),
                            text.at(d + "v_proj." + leaf)});
            EXPECT_TRUE(torch::equal(file.at(r + "attn.in_proj_" + leaf), fused)) << r << leaf;
        }
        EXPECT_TRUE(torch::equal(
            file.at(r + "mlp.c_fc.weight"),
            text.at("text_model.encoder.layers." + std::to_string(layer) + ".mlp.fc1.weight")));
        EXPECT_TRUE(torch::equal(
            file.at(r + "ln_2.bias"),
            text.at("text_model.encoder.layers." + std::to_string(layer) + ".layer_norm2.bias")));
    }
    EXPECT_TRUE(torch::equal(file.at(O + "positional_embedding"),
                             text.at("text_model.embeddings.position_embedding.weight")));
    EXPECT_TRUE(torch::equal(file.at(O + "ln_final.weight"),
                             text.at("text_model.final_layer_norm.weight")));
    EXPECT_TRUE(torch::equal(file.at("model.diffusion_model.output_blocks.2.1.conv.weight"),
                             unet.at("up_blocks.0.upsamplers.0.conv.weight")));
    size_t text_keys = 0;
    for (const auto& [key, _] : file) text_keys += key.rfind(O, 0) == 0;
    EXPECT_EQ(text_keys, text.size() - 5 * 4);  // q/k/v weight + bias -> in_proj weight + bias
}

// (c) What the weights determine equals the fixture's config.json.
TEST(SingleFile, InferredConfigsEqualTheFixtureConfigs) {
    for (const std::string cfg : {"tiny-sd1", "tiny-sd2"}) {
        SCOPED_TRACE(cfg);
        TempDir dir;
        const io::SafetensorsFile file(export_fixture(dir, cfg));
        const auto c = pipeline::infer_single_file_configs(file);
        EXPECT_EQ(c.open_clip, cfg == "tiny-sd2");
        const auto unet = read(fixture(cfg + "/unet/config.json"));
        for (const char* k :
             {"block_out_channels", "layers_per_block", "in_channels", "out_channels",
              "cross_attention_dim", "use_linear_projection", "down_block_types", "up_block_types",
              "transformer_layers_per_block", "mid_block_type"})
            EXPECT_EQ(c.unet.at(k), unet.at(k)) << k;
        const auto vae = read(fixture(cfg + "/vae/config.json"));
        for (const char* k : {"block_out_channels", "layers_per_block", "latent_channels",
                              "in_channels", "out_channels", "down_block_types", "up_block_types"})
            EXPECT_EQ(c.vae.at(k), vae.at(k)) << k;
        const auto text = read(fixture(cfg + "/text_encoder/config.json"));
        for (const char* k : {"hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size",
                              "max_position_embeddings", "hidden_act"})
            EXPECT_EQ(c.text_encoder.at(k), text.at(k)) << k;
        EXPECT_EQ(c.scheduler.at("prediction_type"),
                  cfg == "tiny-sd2" ? "v_prediction" : "epsilon");
        // Without --config the components load from the inferred configs, weights unchanged.
        const auto model = pipeline::ModelFolder::open(file.path());
        expect_same_tensors(models::state_dict(*model.load_unet({})),
                            component_tensors(fixture(cfg + "/unet")), "unet");
        expect_same_tensors(models::state_dict(*model.load_text_encoder({})),
                            component_tensors(fixture(cfg + "/text_encoder")), "text_encoder");
        testing::expect_error<std::invalid_argument>([&] { model.tokenizer(); },
                                                     {"carries no tokenizer", "--config DIR"});
    }
}

// (d) Refused: pickles, unknown keys (named), missing keys (named), a --config of another family.
TEST(SingleFile, RefusesPicklesUnknownKeysAndAConfigOfAnotherFamily) {
    TempDir dir;
    testing::write_bytes(dir.file("model.ckpt"), "PK\x03\x04 not read");
    testing::expect_error<std::invalid_argument>(
        [&] { pipeline::ModelFolder::open(dir.file("model.ckpt")); },
        {"model.ckpt", "pickle", "arbitrary code", ".safetensors"});
    const std::string path                                  = export_fixture(dir, "tiny-sd1");
    auto tensors                                            = io::load_safetensors(path);
    tensors["cond_stage_model.extra.weight"]                = torch::zeros({2});
    tensors["model.diffusion_model.input_blocks.1.2.extra"] = torch::zeros({2});
    io::save_safetensors(dir.file("unknown.safetensors"), tensors);
    testing::expect_error([&] { pipeline::SingleFile::open(dir.file("unknown.safetensors")); },
                          {"2 key(s)", "cond_stage_model.extra.weight", "input_blocks.1.2.extra"});
    tensors = io::load_safetensors(path);
    tensors.erase("first_stage_model.decoder.mid.attn_1.k.bias");
    io::save_safetensors(dir.file("missing.safetensors"), tensors);
    const auto model = pipeline::ModelFolder::open(dir.file("missing.safetensors"));
    testing::expect_error([&] { model.load_vae({}); },
                          {"missing", "decoder.mid_block.attentions.0.to_k.bias"});
    testing::expect_error(
        [&] { pipeline::SingleFile::open(export_fixture(dir, "tiny-sd2"), fixture("tiny-sd1")); },
        {"tiny-sd1/unet/config.json", "use_linear_projection", "same model family"});
}

// (d) Tolerated, as from_single_file: the EMA copy, schedule buffers, OpenCLIP's text_projection,
// logit_scale and a 6th resblock beyond the 5 layers used; older names (no `text_model.` level,
// VAE attention `to_q` as [C, C]).
TEST(SingleFile, SkipsTrainingExtrasAndReadsOlderNames) {
    TempDir dir;
    auto sd2            = io::load_safetensors(export_fixture(dir, "tiny-sd2"));
    const std::string R = "cond_stage_model.model.transformer.resblocks.";
    for (const auto& [key, t] : io::load_safetensors(dir.file("tiny-sd2.safetensors")))
        if (key.rfind(R + "4.", 0) == 0) sd2[R + "5." + key.substr(R.size() + 2)] = t + 1;
    sd2["cond_stage_model.model.text_projection"] = torch::eye(32);
    sd2["cond_stage_model.model.logit_scale"]     = torch::ones({});
    sd2["alphas_cumprod"]                         = torch::ones({1000});
    sd2["model_ema.decay"]                        = torch::ones({});
    sd2["model_ema.diffusion_modelconv_inweight"] = torch::ones({2});
    io::save_safetensors(dir.file("sd2-extras.safetensors"), sd2);
    // The original training's file: 6 resblocks + text_projection -> the penultimate, 5 layers.
    const auto inferred = pipeline::ModelFolder::open(dir.file("sd2-extras.safetensors"));
    EXPECT_EQ(inferred.single_file->configs().text_encoder.at("num_hidden_layers"), 5);
    expect_same_tensors(models::state_dict(*inferred.load_text_encoder({})),
                        component_tensors(fixture("tiny-sd2/text_encoder")), "text_encoder");

    io::TensorMap old;
    for (const auto& [key, t] : io::load_safetensors(export_fixture(dir, "tiny-sd1"))) {
        std::string k          = key;
        const std::string text = "cond_stage_model.transformer.text_model.";
        if (k.rfind(text, 0) == 0) k = "cond_stage_model.transformer." + k.substr(text.size());
        const auto q = k.find("mid.attn_1.q.weight");
        if (q != std::string::npos) {
            old[k.substr(0, q) + "mid.attn_1.to_q.weight"] = t.flatten(1);
            continue;
        }
        old[k] = t;
    }
    io::save_safetensors(dir.file("old.safetensors"), old);
    const auto model =
        pipeline::ModelFolder::open(dir.file("old.safetensors"), "", fixture("tiny-sd1"));
    expect_same_tensors(models::state_dict(*model.load_text_encoder({})),
                        component_tensors(fixture("tiny-sd1/text_encoder")), "text_encoder");
    expect_same_tensors(models::state_dict(*model.load_vae({})),
                        component_tensors(fixture("tiny-sd1/vae")), "vae");
}

// (e) The binary: convert both ways, refusals, inspect and generate from a single file.
TEST(SingleFile, ConvertCommandBothWays) {
    TempDir dir;
    const std::string file = dir.file("sd1.safetensors");
    auto r                 = testing::run_t2i(
                        {"convert", "--model_path", fixture("tiny-sd1"), "--checkpoint_path", file, "--half"});
    ASSERT_EQ(r.code, 0) << r.out;
    for (const auto& [key, t] : io::load_safetensors(file))
        EXPECT_EQ(t.scalar_type(), torch::kHalf) << key;
    r = testing::run_t2i(
        {"convert", "--model_path", fixture("tiny-sd1"), "--checkpoint_path", file});
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_NE(r.out.find("exists"), std::string::npos) << r.out;
    const std::string fp32 = dir.file("sd1-fp32.safetensors");
    ASSERT_EQ(testing::run_t2i(
                  {"convert", "--model_path", fixture("tiny-sd1"), "--checkpoint_path", fp32})
                  .code,
              0);
    r = testing::run_t2i({"convert", "--checkpoint_path", fp32, "--dump_path", dir.file("none")});
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("carries no tokenizer"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(dir.file("none/unet")));
    // A --dump_path holding a folder of the user's (here tokenizer/) is refused before anything
    // is written there.
    fs::create_directories(dir.file("users/tokenizer"));
    r = testing::run_t2i({"convert", "--checkpoint_path", fp32, "--dump_path", dir.file("users"),
                          "--config", fixture("tiny-sd1")});
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_NE(r.out.find("'tokenizer', which t2i did not write"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(dir.file("users/vae")));
    r = testing::run_t2i({"convert", "--checkpoint_path", fp32, "--dump_path", dir.file("back"),
                          "--config", fixture("tiny-sd1")});
    ASSERT_EQ(r.code, 0) << r.out;
    for (const char* c : {"unet", "vae", "text_encoder"})
        expect_same_tensors(component_tensors(dir.file("back/") + c),
                            component_tensors(fixture(std::string("tiny-sd1/") + c)), c);
    EXPECT_TRUE(fs::exists(dir.file("back/tokenizer/vocab.json")));
    r = testing::run_t2i({"inspect", dir.file("back")});
    EXPECT_EQ(r.code, 0) << r.out;
    testing::write_bytes(dir.file("x.ckpt"), "pickle");
    r = testing::run_t2i(
        {"convert", "--checkpoint_path", dir.file("x.ckpt"), "--dump_path", dir.file("y")});
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_NE(r.out.find("arbitrary code"), std::string::npos) << r.out;
}

TEST(SingleFile, InspectAndGenerateFromAFileEqualTheFolder) {
    TempDir dir;
    const std::string file = export_fixture(dir, "tiny-sd2");
    const auto counts      = read(fixture("manifests/param_counts.json"))["tiny-sd2"];
    for (const bool config : {false, true}) {
        std::vector<std::string> args = {"inspect", file};
        if (config) args.insert(args.end(), {"--config", fixture("tiny-sd2")});
        const auto r = testing::run_t2i(args);
        ASSERT_EQ(r.code, 0) << r.out;
        for (const char* c : {"unet", "vae", "text_encoder"}) {
            const std::string n = std::to_string(counts[c].get<int64_t>());
            std::string with_commas;
            for (size_t i = 0; i < n.size(); ++i)
                with_commas += std::string(i > 0 && (n.size() - i) % 3 == 0 ? "," : "") + n[i];
            EXPECT_NE(r.out.find("parameters: " + with_commas), std::string::npos) << c << r.out;
        }
        EXPECT_NE(r.out.find(config ? "vocab_size: 1000" : "pass --config DIR"), std::string::npos)
            << r.out;
    }
    std::vector<std::string> common = {
        "--prompt", "a red square", "--num_inference_steps", "2", "--seed", "7", "--num_threads",
        "2"};
    auto from_folder = common, from_file = common;
    from_folder.insert(from_folder.begin(),
                       {"generate", "--model", fixture("tiny-sd2"), "--output", dir.file("a.png")});
    from_file.insert(from_file.begin(), {"generate", "--model", file, "--config",
                                         fixture("tiny-sd2"), "--output", dir.file("b.png")});
    ASSERT_EQ(testing::run_t2i(from_folder).code, 0);
    const auto r = testing::run_t2i(from_file);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(io::read_text_file(dir.file("a.png")), io::read_text_file(dir.file("b.png")));
}

// `t2i train` from a single file trains the same weights as from the folder, and
// --save_single_file writes the result as one file equal to the saved folder.
TEST(SingleFile, TrainFromAFileEqualsTheFolderAndSavesOneFile) {
    TempDir dir;
    const std::string data = testing::make_image_dataset(dir, 2);
    auto c                 = testing::tiny_train_config(dir, data);
    c.max_train_steps      = 2;
    c.seed                 = 11;
    c.center_crop          = true;
    c.report_to            = "none";
    ASSERT_EQ(training::train(c), training::TrainResult::kFinished);
    auto s                          = c;
    s.pretrained_model_name_or_path = export_fixture(dir, "tiny-sd1");
    s.single_file_config            = fixture("tiny-sd1");
    s.output_dir                    = dir.file("from-file");
    s.save_single_file              = true;
    ASSERT_EQ(training::train(s), training::TrainResult::kFinished);
    const auto trained = component_tensors(dir.file("out/unet"));
    expect_same_tensors(component_tensors(dir.file("from-file/unet")), trained, "unet");
    expect_same_tensors(component_tensors(dir.file("from-file/vae")),
                        component_tensors(fixture("tiny-sd1/vae")), "vae");
    const auto one = io::load_safetensors(dir.file("from-file/from-file.safetensors"));
    EXPECT_TRUE(torch::equal(one.at("model.diffusion_model.input_blocks.4.1.proj_in.weight"),
                             trained.at("down_blocks.1.attentions.0.proj_in.weight")));
    EXPECT_FALSE(torch::equal(trained.at("down_blocks.1.attentions.0.proj_in.weight"),
                              component_tensors(fixture("tiny-sd1/unet"))
                                  .at("down_blocks.1.attentions.0.proj_in.weight")));
    EXPECT_TRUE(io::OutputFolder(dir.file("from-file")).owns("from-file.safetensors"));
}

}  // namespace
}  // namespace t2i
