// Tests: models/lora (adapters, merging, the file layouts) and `t2i train-lora` (training only
// the LoRA, exact resume, diffusers' file layout), against the merged-weight formula
// W_eff = W + (alpha / r) B A and its gradients dL/dA = s B^T G, dL/dB = s G A^T.
#include <gtest/gtest.h>

#include <set>

#include "io/file_util.h"
#include "models/attention.h"
#include "models/lora.h"
#include "pipeline/ldm_keys.h"
#include "pipeline/model_dir.h"
#include "test_util.h"
#include "training/checkpoint.h"
#include "training/optimizer.h"
#include "training/trainer.h"

namespace t2i {
namespace {

using testing::fixture;
using testing::TempDir;

models::UNet2DConditionModel tiny_unet() {
    return pipeline::load_unet(fixture("tiny-sd1/unet"), {});
}

// The golden UNet inputs of tiny-sd1 and a fixed random projection of the output as the loss.
struct UnetInputs {
    torch::Tensor sample, timesteps, context, probe;
};

UnetInputs golden_inputs() {
    const auto g = io::load_safetensors(fixture("golden/tiny-sd1/unet.safetensors"));
    torch::manual_seed(11);
    return {g.at("sample"), g.at("timesteps"), g.at("encoder_hidden_states"),
            torch::randn(g.at("sample").sizes())};
}

// ||a - b|| / ||b||: the two gradient paths (through B A, through W + B A) sum the same terms in
// a different order in float32 (measured: up to 4e-5; a wrong scale or transpose gives ~1).
double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
    return ((a - b).norm() / b.norm()).item<double>();
}

TEST(Lora, AddsRankRAdaptersOnTheFourAttentionProjectionsWithPeftInit) {
    auto unet         = tiny_unet();
    auto gen          = at::make_generator<at::CPUGeneratorImpl>(5);
    const auto params = models::add_trainable_lora(unet, 4, gen);
    // tiny-sd1: 2 + 3 transformer blocks (down 1 x 2, up 0 x 3) + mid 1 = 6 blocks x 2 attentions
    // x 4 projections x (A, B).
    EXPECT_EQ(params.size(), 6u * 2 * 4 * 2);
    ASSERT_TRUE(
        params.contains("mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"));
    ASSERT_TRUE(params.contains(
        "up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_out.0.lora_B.weight"));
    for (const auto& p : unet->named_parameters())
        EXPECT_EQ(p.value().requires_grad(), params.contains(p.key())) << p.key();
    // A ~ N(0, 1/r): over all A entries the std is close to 0.25; B is zero.
    std::vector<torch::Tensor> a_all;
    for (const auto& p : params) {
        if (p.key().find("lora_B") != std::string::npos)
            EXPECT_EQ(p.value().abs().max().item<float>(), 0.f) << p.key();
        else
            a_all.push_back(p.value().flatten());
    }
    const auto a = torch::cat(a_all);
    EXPECT_GT(a.numel(), 5000);
    EXPECT_NEAR(a.std().item<double>(), 0.25, 0.01);
    EXPECT_NEAR(a.mean().item<double>(), 0.0, 0.01);
    // attn2.to_k reads the text encoder's 32 channels: A is [r, 32].
    EXPECT_EQ(
        params["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"].sizes(),
        (std::vector<int64_t>{4, 32}));
}

// A LoRA step against the merged-weight formula: the same forward as W + B A, gradients
// B^T G and G A^T from G = dL/dW_eff, and one AdamW update of only the LoRA parameters.
TEST(Lora, GradientAndUpdateEqualTheMergedWeightFormula) {
    const auto in = golden_inputs();
    auto unet     = tiny_unet();
    auto gen      = at::make_generator<at::CPUGeneratorImpl>(5);
    auto params   = models::add_trainable_lora(unet, 2, gen);
    {
        torch::NoGradGuard ng;  // B != 0, so that dL/dA is not zero
        torch::manual_seed(12);
        for (auto& p : params)
            if (p.key().find("lora_B") != std::string::npos) p.value().normal_(0, 0.3);
    }
    const auto base_before = tiny_unet()->named_parameters();

    // Reference: a plain UNet whose target weights are W + B A, differentiated directly.
    auto merged = tiny_unet();
    std::map<std::string, torch::Tensor> weff;  // module -> its merged weight (requires grad)
    {
        torch::NoGradGuard ng;
        for (auto& p : merged->parameters()) p.requires_grad_(false);
        auto mp = merged->named_parameters();
        for (const auto& p : params) {
            const auto key = p.key();
            const auto at  = key.find(".lora_A.weight");
            if (at == std::string::npos) continue;
            const auto module = key.substr(0, at);
            auto& w           = mp[module + ".weight"];
            w.add_(torch::mm(params[module + ".lora_B.weight"], p.value()));
            w.requires_grad_(true);
            weff[module] = w;
        }
    }
    auto out_lora   = unet->forward(in.sample, in.timesteps, in.context);
    auto out_merged = merged->forward(in.sample, in.timesteps, in.context);
    EXPECT_TRUE(testing::allclose(out_lora, out_merged, 1e-5, 1e-4));
    (out_lora * in.probe).sum().backward();
    (out_merged * in.probe).sum().backward();
    ASSERT_EQ(weff.size(), 48u);
    for (const auto& [module, w] : weff) {
        const auto& A = params[module + ".lora_A.weight"];
        const auto& B = params[module + ".lora_B.weight"];
        const auto G  = w.grad();
        ASSERT_TRUE(A.grad().defined()) << module;
        EXPECT_LT(relative_error(A.grad(), torch::mm(B.t(), G)), 2e-4) << module;
        EXPECT_LT(relative_error(B.grad(), torch::mm(G, A.t())), 2e-4) << module;
    }
    // One AdamW step (bias-corrected first step: p(1 - lr wd) - lr g / (|g| + eps)).
    std::map<std::string, torch::Tensor> before, grads;
    for (const auto& p : params)
        before[p.key()] = p.value().detach().clone(), grads[p.key()] = p.value().grad().clone();
    training::AdamWOptions o;
    o.lr           = 1e-3;
    o.weight_decay = 1e-2;
    auto opt       = training::make_adamw(params, o, /*use_8bit=*/false);
    opt->step();
    for (const auto& p : params) {
        const auto& p0      = before[p.key()];
        const auto& g       = grads[p.key()];
        const auto expected = p0 * (1 - o.lr * o.weight_decay) - o.lr * g / (g.abs() + o.eps);
        EXPECT_TRUE(testing::allclose(p.value(), expected, 1e-7, 1e-5)) << p.key();
    }
    // The base weights are untouched.
    for (const auto& p : unet->named_parameters())
        if (!params.contains(p.key()))
            EXPECT_TRUE(torch::equal(p.value(), base_before[p.key()])) << p.key();
}

// A kohya file written by hand with kohya's naming rule (the diffusers module name with '_'
// for '.'), alpha 2 at rank 4: scale 0.5.
io::TensorMap hand_written_kohya(torch::Tensor* down_q, torch::Tensor* up_q) {
    torch::manual_seed(21);
    io::TensorMap k;
    const std::string q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";
    *down_q             = torch::randn({4, 64});
    *up_q               = torch::randn({64, 4});
    k[q + ".lora_down.weight"] = *down_q;
    k[q + ".lora_up.weight"]   = *up_q;
    k[q + ".alpha"]            = torch::full({}, 2.0);
    // proj_in is a 1x1 convolution in tiny-sd1: a conv-shaped LoRA.
    const std::string p        = "lora_unet_mid_block_attentions_0_proj_in";
    k[p + ".lora_down.weight"] = torch::randn({4, 64, 1, 1});
    k[p + ".lora_up.weight"]   = torch::randn({64, 4, 1, 1});
    k[p + ".alpha"]            = torch::full({}, 2.0);
    const std::string t        = "lora_te_text_model_encoder_layers_0_self_attn_k_proj";
    k[t + ".lora_down.weight"] = torch::randn({4, 32});
    k[t + ".lora_up.weight"]   = torch::randn({32, 4});
    k[t + ".alpha"]            = torch::full({}, 2.0);
    return k;
}

TEST(Lora, KohyaKeysMapToTheDiffusersModulesAndDeltas) {
    TempDir dir;
    torch::Tensor down, up;
    io::save_safetensors(dir.file("k.safetensors"), hand_written_kohya(&down, &up));
    auto unet       = tiny_unet();
    auto te         = pipeline::load_text_encoder(fixture("tiny-sd1/text_encoder"), {});
    const auto lora = models::read_lora_file(dir.file("k.safetensors"), unet.get(), te.get());
    EXPECT_EQ(lora.format, "kohya");
    std::map<std::string, const models::LoraModule*> by_module;
    for (const auto& m : lora.modules) by_module[m.component + ":" + m.module] = &m;
    ASSERT_EQ(by_module.size(), 3u);
    ASSERT_TRUE(by_module.count("unet:down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"));
    ASSERT_TRUE(by_module.count("unet:mid_block.attentions.0.proj_in"));
    ASSERT_TRUE(by_module.count("text_encoder:text_model.encoder.layers.0.self_attn.k_proj"));
    for (const auto& m : lora.modules) EXPECT_DOUBLE_EQ(m.alpha_scale, 0.5);

    // Fused at scale 0.4: W + 0.4 x 0.5 x up @ down, for a Linear, a 1x1 conv and the text encoder.
    const auto w_q0 = unet->named_parameters()
                          ["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"]
                              .clone();
    const auto w_p0 = unet->named_parameters()["mid_block.attentions.0.proj_in.weight"].clone();
    const auto w_t0 =
        te->named_parameters()["text_model.encoder.layers.0.self_attn.k_proj.weight"].clone();
    models::apply_lora(lora, 0.4, /*fuse=*/true, unet, te);
    const auto w_q1 = unet->named_parameters()
                          ["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"];
    EXPECT_TRUE(testing::allclose(w_q1, w_q0 + 0.2 * torch::mm(up, down), 1e-6, 1e-6));
    const auto& pm  = *by_module["unet:mid_block.attentions.0.proj_in"];
    const auto w_p1 = unet->named_parameters()["mid_block.attentions.0.proj_in.weight"];
    EXPECT_TRUE(testing::allclose(
        w_p1, w_p0 + 0.2 * torch::mm(pm.up.flatten(1), pm.down.flatten(1)).view({64, 64, 1, 1}),
        1e-6, 1e-6));
    const auto& pt = *by_module["text_encoder:text_model.encoder.layers.0.self_attn.k_proj"];
    EXPECT_TRUE(testing::allclose(
        te->named_parameters()["text_model.encoder.layers.0.self_attn.k_proj.weight"],
        w_t0 + 0.2 * torch::mm(pt.up, pt.down), 1e-6, 1e-6));
}

TEST(Lora, TheSameLoraInEveryLayoutGivesTheSameUnetOutput) {
    TempDir dir;
    torch::Tensor down, up;
    hand_written_kohya(&down, &up);
    const std::string q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q";
    // diffusers / PEFT (no alpha: scale 1, so up carries alpha / r = 0.5), the attention-
    // processor layout, and kohya with alpha.
    io::save_safetensors(
        dir.file("peft.safetensors"),
        {{"unet." + q + ".lora_A.weight", down}, {"unet." + q + ".lora_B.weight", up * 0.5}});
    io::save_safetensors(dir.file("procs.safetensors"),
                         {{"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor."
                           "to_q_lora.down.weight",
                           down},
                          {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor."
                           "to_q_lora.up.weight",
                           up * 0.5}});
    io::save_safetensors(
        dir.file("kohya.safetensors"),
        {{"lora_unet_" +
              std::string(
                  "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"),
          down},
         {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
          up},
         {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.alpha",
          torch::full({}, 2.0)}});
    const auto in = golden_inputs();
    torch::NoGradGuard ng;
    auto plain          = tiny_unet();
    const auto base_out = plain->forward(in.sample, in.timesteps, in.context);
    std::vector<torch::Tensor> outs;
    for (const char* f : {"peft", "procs", "kohya"}) {
        for (bool fuse : {false, true}) {
            auto unet       = tiny_unet();
            auto te         = pipeline::load_text_encoder(fixture("tiny-sd1/text_encoder"), {});
            const auto lora = models::read_lora_file(dir.file(std::string(f) + ".safetensors"),
                                                     unet.get(), te.get());
            ASSERT_EQ(lora.modules.size(), 1u) << f;
            EXPECT_EQ(lora.modules[0].module, q) << f;
            models::apply_lora(lora, 0.7, fuse, unet, te);
            outs.push_back(unet->forward(in.sample, in.timesteps, in.context));
        }
    }
    EXPECT_GT((outs[0] - base_out).abs().max().item<double>(), 1e-3);  // the LoRA does something
    // The formula: a plain UNet with W + 0.7 x (alpha / r = 0.5) x up @ down.
    auto merged = tiny_unet();
    merged->named_parameters()[q + ".weight"].add_(0.7 * 0.5 * torch::mm(up, down));
    EXPECT_TRUE(testing::allclose(merged->forward(in.sample, in.timesteps, in.context), outs[0],
                                  1e-5, 1e-5));
    for (size_t i = 1; i < outs.size(); ++i)
        EXPECT_TRUE(testing::allclose(outs[i], outs[0], 1e-5, 1e-5)) << i;
    // Scale 0 is the base model.
    auto unet = tiny_unet();
    auto te   = pipeline::load_text_encoder(fixture("tiny-sd1/text_encoder"), {});
    models::apply_lora(models::read_lora_file(dir.file("peft.safetensors"), unet.get(), te.get()),
                       0.0, false, unet, te);
    EXPECT_TRUE(torch::equal(unet->forward(in.sample, in.timesteps, in.context), base_out));
}

// Some kohya files name UNet modules by the original (LDM) layout: tiny-sd1 (layers_per_block
// 2, block 0 without attention) has down_blocks.1.attentions.0 at input_blocks.4.1 and
// up_blocks.0.attentions.2 at output_blocks.2.1 (the LDM numbering, worked out by hand).
TEST(Lora, KohyaKeysWithOriginalLayoutNamesMapThroughTheLdmNumbering) {
    TempDir dir;
    torch::manual_seed(22);
    const auto down = torch::randn({2, 64}), up = torch::randn({64, 2});
    io::save_safetensors(
        dir.file("ldm.safetensors"),
        {{"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight", down},
         {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight", up},
         {"lora_unet_output_blocks_2_1_proj_out.lora_down.weight", torch::randn({2, 64, 1, 1})},
         {"lora_unet_output_blocks_2_1_proj_out.lora_up.weight", torch::randn({64, 2, 1, 1})}});
    auto unet       = tiny_unet();
    auto te         = pipeline::load_text_encoder(fixture("tiny-sd1/text_encoder"), {});
    const auto lora = models::read_lora_file(dir.file("ldm.safetensors"), unet.get(), te.get(),
                                             pipeline::ldm_unet_module_names(unet));
    std::set<std::string> modules;
    for (const auto& m : lora.modules) modules.insert(m.module);
    EXPECT_EQ(modules,
              (std::set<std::string>{"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                                     "up_blocks.0.attentions.2.proj_out"}));
    // Without the aliases the same file is refused, naming the key.
    testing::expect_error<std::invalid_argument>(
        [&] { models::read_lora_file(dir.file("ldm.safetensors"), unet.get(), te.get()); },
        {"lora_unet_input_blocks_4_1"});
}

TEST(Lora, ToKohyaRoundTripsAndBadFilesNameTheKey) {
    TempDir dir;
    torch::Tensor down, up;
    io::save_safetensors(dir.file("k.safetensors"), hand_written_kohya(&down, &up));
    auto unet       = tiny_unet();
    auto te         = pipeline::load_text_encoder(fixture("tiny-sd1/text_encoder"), {});
    const auto lora = models::read_lora_file(dir.file("k.safetensors"), unet.get(), te.get());
    const auto back = models::to_kohya(lora);
    const auto orig = io::load_safetensors(dir.file("k.safetensors"));
    ASSERT_EQ(back.size(), orig.size());
    for (const auto& [k, v] : orig) {
        ASSERT_TRUE(back.count(k)) << k;
        EXPECT_TRUE(torch::equal(back.at(k).to(torch::kFloat32), v.to(torch::kFloat32))) << k;
    }
    // A module this model lacks, a key of no known layout, a half pair, a pickle.
    io::save_safetensors(dir.file("bad1.safetensors"),
                         {{"lora_unet_down_blocks_7_attn1_to_q.lora_down.weight", down},
                          {"lora_unet_down_blocks_7_attn1_to_q.lora_up.weight", up}});
    testing::expect_error<std::invalid_argument>(
        [&] { models::read_lora_file(dir.file("bad1.safetensors"), unet.get(), te.get()); },
        {"bad1.safetensors", "lora_unet_down_blocks_7_attn1_to_q.lora_down.weight",
         "another model"});
    io::save_safetensors(dir.file("bad2.safetensors"), {{"something.else", down}});
    testing::expect_error<std::invalid_argument>(
        [&] { models::read_lora_file(dir.file("bad2.safetensors"), unet.get(), te.get()); },
        {"bad2.safetensors", "'something.else'", "known layout"});
    io::save_safetensors(dir.file("bad3.safetensors"),
                         {{"unet.mid_block.attentions.0.proj_in.lora_A.weight", down}});
    testing::expect_error<std::invalid_argument>(
        [&] { models::read_lora_file(dir.file("bad3.safetensors"), unet.get(), te.get()); },
        {"bad3.safetensors", "mid_block.attentions.0.proj_in", "incomplete"});
    testing::write_bytes(dir.file("x.ckpt"), "PK");
    testing::expect_error<std::invalid_argument>(
        [&] { models::read_lora_file(dir.file("x.ckpt"), unet.get(), te.get()); },
        {"x.ckpt", "arbitrary code", ".safetensors"});
    // Shapes of another model: named with the key and both shapes.
    io::save_safetensors(
        dir.file("bad4.safetensors"),
        {{"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
          torch::zeros({4, 320})},
         {"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight",
          torch::zeros({320, 4})}});
    const auto bad4 = models::read_lora_file(dir.file("bad4.safetensors"), unet.get(), te.get());
    testing::expect_error<std::invalid_argument>(
        [&] { models::apply_lora(bad4, 1.0, false, unet, te); },
        {"bad4.safetensors", "attn1.to_q.lora_A.weight", "320"});
}

training::TrainConfig tiny_lora_config(const TempDir& dir, const std::string& data) {
    auto c                          = training::TrainConfig::lora_defaults();
    const auto t                    = testing::tiny_train_config(dir, data);
    c.pretrained_model_name_or_path = t.pretrained_model_name_or_path;
    c.train_data_dir                = t.train_data_dir;
    c.output_dir                    = t.output_dir;
    c.resolution                    = t.resolution;
    c.train_batch_size              = t.train_batch_size;
    c.num_threads                   = t.num_threads;
    c.lr_warmup_steps               = 0;
    c.learning_rate                 = 1e-3;
    c.rank                          = 4;
    c.seed                          = 3;
    c.report_to                     = "none";
    return c;
}

TEST(TrainLora, InterruptedAndResumedEqualsStraightRunBitForBitAndOnlyTheLoraIsWritten) {
    TempDir dir;
    const auto data               = testing::make_image_dataset(dir, 6);
    auto c                        = tiny_lora_config(dir, data);
    c.max_train_steps             = 5;
    c.gradient_accumulation_steps = 2;
    c.random_flip                 = true;
    c.snr_gamma                   = 5.0;
    c.lr_scheduler                = "cosine";
    c.checkpointing_steps         = 100;
    auto straight                 = c;
    straight.output_dir           = dir.file("straight");
    straight.save_single_file     = true;  // also the kohya layout, straight/straight.safetensors
    ASSERT_EQ(training::train(straight), training::TrainResult::kFinished);
    auto first             = c;
    first.output_dir       = dir.file("resumed");
    first.stop_after_steps = 2;
    ASSERT_EQ(training::train(first), training::TrainResult::kInterrupted);
    ASSERT_TRUE(
        io::file_exists(first.output_dir + "/checkpoint-2/pytorch_lora_weights.safetensors"));
    EXPECT_FALSE(io::dir_exists(first.output_dir + "/checkpoint-2/unet"));
    auto second                   = c;
    second.output_dir             = first.output_dir;
    second.resume_from_checkpoint = "latest";
    ASSERT_EQ(training::train(second), training::TrainResult::kFinished);

    const auto a = io::load_safetensors(straight.output_dir + "/pytorch_lora_weights.safetensors");
    const auto b = io::load_safetensors(second.output_dir + "/pytorch_lora_weights.safetensors");
    ASSERT_EQ(a.size(), 6u * 2 * 4 * 2);
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [k, v] : a) {
        EXPECT_EQ(k.rfind("unet.", 0), 0u) << k;  // save_lora_weights' prefix
        EXPECT_EQ(v.scalar_type(), torch::kFloat32) << k;
        EXPECT_TRUE(torch::equal(v, b.at(k))) << k;
    }
    // It trained: B moved away from zero. Nothing but the LoRA file is the model.
    EXPECT_GT(a.at("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.weight")
                  .abs()
                  .max()
                  .item<float>(),
              0.f);
    EXPECT_FALSE(io::file_exists(straight.output_dir + "/model_index.json"));
    EXPECT_FALSE(io::dir_exists(straight.output_dir + "/unet"));
    // That finished run left no checkpoint: a new run there, or a resume, would overwrite it.
    auto again = straight;
    testing::expect_error<training::FlagError>([&] { training::train(again); }, {"earlier run"});
    again.resume_from_checkpoint = "latest";
    testing::expect_error<training::FlagError>([&] { training::train(again); }, {"finished run"});
    const auto kohya = io::load_safetensors(straight.output_dir + "/straight.safetensors");
    ASSERT_EQ(kohya.size(), a.size() / 2 * 3);  // down, up, alpha per module
    const std::string k = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v";
    EXPECT_TRUE(torch::equal(
        kohya.at(k + ".lora_up.weight"),
        a.at("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.weight")));
    EXPECT_EQ(kohya.at(k + ".alpha").item<float>(), 4.f);  // lora_alpha = rank
    // generate: the LoRA folder is not a model (a hint names --lora); with --lora it samples.
    auto r = testing::run_t2i({"generate", "--model", straight.output_dir, "--prompt", "a",
                               "--output", dir.file("x.png")});
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.out.find("--lora"), std::string::npos) << r.out;
    r = testing::run_t2i({"generate", "--model", fixture("tiny-sd1"), "--lora",
                          straight.output_dir + ":0.5", "--lora",
                          straight.output_dir + "/straight.safetensors", "--prompt", "a",
                          "--num_inference_steps", "2", "--output", dir.file("x.png")});
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("kohya layout, 48 modules) x 1"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("diffusers layout, 48 modules) x 0.5"), std::string::npos) << r.out;
}

// t2i convert --lora_path: diffusers -> kohya with the names diffusers' convert_state_dict_to_kohya
// gives, and back (kohya names resolved against --model_path) to the same tensors.
TEST(TrainLora, ConvertsALoraToKohyaAndBack) {
    TempDir dir;
    torch::manual_seed(4);
    const std::string q = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0";
    const io::TensorMap peft{{"unet." + q + ".lora_A.weight", torch::randn({2, 64})},
                             {"unet." + q + ".lora_B.weight", torch::randn({64, 2})}};
    io::save_safetensors(dir.file("peft.safetensors"), peft);
    auto r = testing::run_t2i({"convert", "--lora_path", dir.file("peft.safetensors"),
                               "--dump_path", dir.file("kohya.safetensors")});
    ASSERT_EQ(r.code, 0) << r.out;
    const auto kohya = io::load_safetensors(dir.file("kohya.safetensors"));
    const std::string k =
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0";
    ASSERT_EQ(kohya.size(), 3u);
    EXPECT_TRUE(
        torch::equal(kohya.at(k + ".lora_down.weight"), peft.at("unet." + q + ".lora_A.weight")));
    EXPECT_TRUE(
        torch::equal(kohya.at(k + ".lora_up.weight"), peft.at("unet." + q + ".lora_B.weight")));
    EXPECT_EQ(kohya.at(k + ".alpha").item<float>(), 2.f);
    // Back: without the model the kohya names cannot be resolved; with it, the same tensors.
    r = testing::run_t2i({"convert", "--lora_path", dir.file("kohya.safetensors"), "--dump_path",
                          dir.file("back.safetensors")});
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.out.find("--model_path"), std::string::npos) << r.out;
    r = testing::run_t2i({"convert", "--lora_path", dir.file("kohya.safetensors"), "--dump_path",
                          dir.file("back.safetensors"), "--model_path", fixture("tiny-sd1")});
    ASSERT_EQ(r.code, 0) << r.out;
    const auto back = io::load_safetensors(dir.file("back.safetensors"));
    ASSERT_EQ(back.size(), peft.size());
    for (const auto& [key, v] : peft) EXPECT_TRUE(torch::equal(back.at(key), v)) << key;
    // An existing file is never replaced.
    r = testing::run_t2i({"convert", "--lora_path", dir.file("peft.safetensors"), "--dump_path",
                          dir.file("kohya.safetensors")});
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.out.find("exists"), std::string::npos) << r.out;
}

TEST(TrainLora, CommandTakesTheLoraScriptsFlagsOnly) {
    auto r = testing::run_t2i({"train-lora", "--help"});
    EXPECT_EQ(r.code, 0);
    for (const char* f :
         {"--rank", "--validation_prompt", "--num_validation_images", "--snr_gamma"})
        EXPECT_NE(r.out.find(f), std::string::npos) << f;
    EXPECT_EQ(r.out.find("--use_ema"), std::string::npos);
    EXPECT_EQ(r.out.find("--dream_training"), std::string::npos);
    r = testing::run_t2i({"train-lora", "--pretrained_model_name_or_path", fixture("tiny-sd1"),
                          "--train_data_dir", "x", "--use_ema"});
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.out.find("--use_ema"), std::string::npos) << r.out;
    r = testing::run_t2i({"train", "--rank", "4"});
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.out.find("--rank"), std::string::npos) << r.out;
    const auto j = training::TrainConfig::lora_defaults().to_json();
    EXPECT_EQ(j.at("output_dir"), "sd-model-finetuned-lora");
    EXPECT_EQ(j.at("validation_epochs"), 1);
    EXPECT_EQ(j.at("rank"), 4);
    EXPECT_EQ(j.at("num_validation_images"), 4);
    EXPECT_FALSE(j.contains("use_ema"));
}

}  // namespace
}  // namespace t2i
