// Tests: `t2i train` end to end on tiny-sd1: flag validation, the saved diffusers folder, metrics,
// checkpoint rotation, bit-identical resume, SIGTERM (kill -9 and full disks: test_output_safety).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "io/file_util.h"
#include "io/image_io.h"
#include "io/json_config.h"
#include "models/weights.h"
#include "pipeline/init_model.h"
#include "pipeline/model_dir.h"
#include "tensorboard_reader.h"
#include "test_util.h"
#include "tokenizer/clip_tokenizer.h"
#include "training/checkpoint.h"
#include "training/trainer.h"

namespace t2i {
namespace {

namespace fs = std::filesystem;
using testing::fixture;
using testing::TempDir;

// Eight 80x72 images with captions, imagefolder layout.
std::string make_dataset(const TempDir& dir) { return testing::make_image_dataset(dir, 8); }

training::TrainConfig tiny_config(const TempDir& dir, const std::string& data) {
    auto c                = testing::tiny_train_config(dir, data);
    c.max_train_steps     = 6;
    c.checkpointing_steps = 2;
    c.seed                = 42;
    return c;
}

TEST(TrainConfig, RejectsBadValuesNamingTheFlag) {
    TempDir dir;
    auto rejects = [&](const std::function<void(training::TrainConfig&)>& change,
                       const std::vector<std::string>& parts) {
        auto c = tiny_config(dir, dir.file("data"));
        change(c);
        testing::expect_error<std::exception>([&] { c.validate(); }, parts);
    };
    rejects([](auto& c) { c.resolution = 100; }, {"--resolution"});
    rejects([](auto& c) { c.lr_scheduler = "cosine_annealing"; },
            {"--lr_scheduler", "constant_with_warmup"});
    rejects([](auto& c) { c.report_to = "wandb"; }, {"tensorboard"});
    rejects([](auto& c) { c.gradient_accumulation_steps = 0; }, {"--gradient_accumulation_steps"});
    rejects([](auto& c) { c.train_data_dir.reset(); }, {"--train_data_dir"});
    rejects([](auto& c) { c.revision = "main"; }, {"local folders"});
}

TEST(TrainConfig, JsonHasEveryFlagOfTheOriginal) {
    const auto j = training::TrainConfig().to_json();
    for (const char* flag : {"pretrained_model_name_or_path",
                             "revision",
                             "variant",
                             "dataset_name",
                             "dataset_config_name",
                             "train_data_dir",
                             "image_column",
                             "caption_column",
                             "max_train_samples",
                             "validation_prompts",
                             "output_dir",
                             "cache_dir",
                             "seed",
                             "resolution",
                             "center_crop",
                             "random_flip",
                             "train_batch_size",
                             "num_train_epochs",
                             "max_train_steps",
                             "gradient_accumulation_steps",
                             "gradient_checkpointing",
                             "learning_rate",
                             "scale_lr",
                             "lr_scheduler",
                             "lr_warmup_steps",
                             "snr_gamma",
                             "dream_training",
                             "dream_detail_preservation",
                             "use_8bit_adam",
                             "allow_tf32",
                             "use_ema",
                             "offload_ema",
                             "foreach_ema",
                             "non_ema_revision",
                             "dataloader_num_workers",
                             "adam_beta1",
                             "adam_beta2",
                             "adam_weight_decay",
                             "adam_epsilon",
                             "max_grad_norm",
                             "push_to_hub",
                             "hub_token",
                             "prediction_type",
                             "hub_model_id",
                             "logging_dir",
                             "mixed_precision",
                             "report_to",
                             "local_rank",
                             "checkpointing_steps",
                             "checkpoints_total_limit",
                             "resume_from_checkpoint",
                             "enable_xformers_memory_efficient_attention",
                             "noise_offset",
                             "validation_epochs",
                             "tracker_project_name",
                             "image_interpolation_mode",
                             "input_perturbation"})
        EXPECT_TRUE(j.contains(flag)) << flag;
    EXPECT_EQ(j["train_batch_size"], 16);
    EXPECT_EQ(j["learning_rate"], 1e-4);
    EXPECT_EQ(j["lr_warmup_steps"], 500);
    EXPECT_EQ(j["image_interpolation_mode"], "lanczos");
}

TEST(Train, TinyRunWritesADiffusersFolderCheckpointsAndMetrics) {
    TempDir dir;
    auto c                    = tiny_config(dir, make_dataset(dir));
    c.checkpoints_total_limit = 2;
    c.use_ema                 = true;
    c.prediction_type         = "v_prediction";
    ASSERT_EQ(training::train(c), training::TrainResult::kFinished);
    const std::string out = c.output_dir;
    // Rotation: steps 2, 4, 6 were saved, the oldest pruned.
    std::vector<int64_t> steps;
    for (const auto& [step, _] : training::list_checkpoints(out)) steps.push_back(step);
    EXPECT_EQ(steps, (std::vector<int64_t>{4, 6}));
    EXPECT_TRUE(io::file_exists(out + "/checkpoint-6/unet_ema/config.json"));
    const auto ema_cfg = io::read_json(out + "/checkpoint-6/unet_ema/config.json");
    EXPECT_EQ(ema_cfg.get<int64_t>("optimization_step"), 6);
    EXPECT_DOUBLE_EQ(ema_cfg.get<double>("decay"), 0.9999);
    // The final folder loads as a model; the scheduler carries the trained prediction type.
    auto unet = pipeline::load_unet(out + "/unet", {});
    auto vae  = pipeline::load_vae(out + "/vae", {});
    auto te   = pipeline::load_text_encoder(out + "/text_encoder", {});
    EXPECT_EQ(
        io::read_json(out + "/scheduler/scheduler_config.json").get<std::string>("prediction_type"),
        "v_prediction");
    EXPECT_TRUE(io::file_exists(out + "/model_index.json"));
    EXPECT_TRUE(io::file_exists(out + "/tokenizer/vocab.json"));
    EXPECT_TRUE(io::file_exists(out + "/train_config.json"));
    // The saved UNet is the EMA of the last checkpoint, not the raw weights.
    const auto ema =
        io::load_safetensors(out + "/checkpoint-6/unet_ema/diffusion_pytorch_model.safetensors");
    const auto final = models::state_dict(*unet);
    for (const auto& [k, v] : ema) EXPECT_TRUE(torch::equal(v, final.at(k))) << k;
    // The VAE is copied unchanged from the base model.
    EXPECT_TRUE(torch::equal(models::state_dict(*vae).at("decoder.conv_out.weight"),
                             models::state_dict(*pipeline::load_vae(fixture("tiny-sd1/vae"), {}))
                                 .at("decoder.conv_out.weight")));
    // One metrics line per optimizer step, numbered from 1, finite losses.
    std::ifstream metrics(out + "/logs/metrics.jsonl");
    std::string line;
    int64_t n = 0;
    while (std::getline(metrics, line)) {
        const auto j = nlohmann::json::parse(line);
        EXPECT_EQ(j["step"], ++n);
        EXPECT_TRUE(std::isfinite(j["train_loss"].get<double>()));
    }
    EXPECT_EQ(n, 6);
}

io::TensorMap final_unet(const std::string& out) {
    return io::load_safetensors(out + "/unet/diffusion_pytorch_model.safetensors");
}

TEST(Train, InterruptedAndResumedEqualsStraightRunBitForBit) {
    TempDir dir;
    const auto data               = make_dataset(dir);
    auto c                        = tiny_config(dir, data);
    c.max_train_steps             = 5;
    c.gradient_accumulation_steps = 2;  // 4 batches/epoch -> 2 steps/epoch: crosses epochs
    c.use_ema                     = true;
    c.random_flip                 = true;
    c.lr_scheduler                = "cosine";
    c.lr_warmup_steps             = 2;
    c.noise_offset                = 0.05;
    c.dataloader_num_workers      = 1;
    c.checkpointing_steps         = 100;
    auto straight                 = c;
    straight.output_dir           = dir.file("straight");
    ASSERT_EQ(training::train(straight), training::TrainResult::kFinished);

    auto first             = c;
    first.output_dir       = dir.file("resumed");
    first.stop_after_steps = 3;  // stops mid-epoch with a checkpoint
    ASSERT_EQ(training::train(first), training::TrainResult::kInterrupted);
    ASSERT_TRUE(io::dir_exists(first.output_dir + "/checkpoint-3"));
    EXPECT_FALSE(io::file_exists(first.output_dir + "/model_index.json"));
    auto second                   = c;
    second.output_dir             = first.output_dir;
    second.resume_from_checkpoint = "latest";
    ASSERT_EQ(training::train(second), training::TrainResult::kFinished);

    const auto a = final_unet(straight.output_dir), b = final_unet(second.output_dir);
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [k, v] : a) EXPECT_TRUE(torch::equal(v, b.at(k))) << k;
}

TEST(InitModel, SmallPresetHasTheShapesOfTheSmallSdBenchmarkModel) {
    testing::TempDir dir;
    pipeline::init_model(dir.file("m"), "small", testing::fixture("small-sd/tokenizer"), 0);
    const auto counts =
        io::read_json(testing::fixture("manifests/param_counts.json")).json()["small-sd"];
    EXPECT_EQ(models::count_parameters(*pipeline::load_unet(dir.file("m/unet"), {})),
              counts["unet"].get<int64_t>());
    EXPECT_EQ(models::count_parameters(*pipeline::load_vae(dir.file("m/vae"), {})),
              counts["vae"].get<int64_t>());
    EXPECT_EQ(
        models::count_parameters(*pipeline::load_text_encoder(dir.file("m/text_encoder"), {})),
        counts["text_encoder"].get<int64_t>());
    EXPECT_THROW(pipeline::init_model(dir.file("m"), "small", "", 0),
                 std::runtime_error);  // not empty
}

TEST(InitModel, TinyPresetWithTheGeneratedTokenizerTrains) {
    testing::TempDir dir;
    pipeline::init_model(dir.file("m"), "tiny", "", 0);
    const auto tok = tokenizer::CLIPTokenizer::from_pretrained(dir.file("m/tokenizer"));
    EXPECT_EQ(tok.vocab_size(), 514);
    // Byte-level: every character of any text is a token, then EOS; nothing is unknown.
    const auto ids = tok.encode("a cat!", tokenizer::TextCleanMode::kBasic);
    EXPECT_EQ(ids.size(), 7u);  // BOS a</w> c a t</w> !</w> EOS
    auto c                          = tiny_config(dir, make_dataset(dir));
    c.pretrained_model_name_or_path = dir.file("m");
    c.max_train_steps               = 2;
    EXPECT_EQ(training::train(c), training::TrainResult::kFinished);
    EXPECT_TRUE(io::file_exists(c.output_dir + "/model_index.json"));
}

TEST(Train, SigtermFinishesTheStepWritesACheckpointAndExits130) {
    testing::TempDir dir;
    const auto data       = make_dataset(dir);
    const std::string out = dir.file("out");
    const pid_t pid       = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::execl(T2I_BINARY, T2I_BINARY, "train", "--pretrained_model_name_or_path",
                testing::fixture("tiny-sd1").c_str(), "--train_data_dir", data.c_str(),
                "--output_dir", out.c_str(), "--resolution", "64", "--train_batch_size", "2",
                "--max_train_steps", "100000", "--checkpointing_steps", "100000", "--seed", "1",
                "--num_threads", "1", "--report_to", "none", static_cast<char*>(nullptr));
        ::_exit(127);
    }
    // Wait until a few steps have run (the log would tell; polling the clock keeps this simple).
    std::this_thread::sleep_for(std::chrono::milliseconds(4000));
    ::kill(pid, SIGTERM);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 130);
    const auto checkpoints = training::list_checkpoints(out);
    ASSERT_EQ(checkpoints.size(), 1u);
    EXPECT_GT(checkpoints[0].first, 0);
    EXPECT_FALSE(io::file_exists(out + "/model_index.json"));  // not finished: no final model
}

TEST(Train, ValidationImagesAndTensorBoardEventsAreWritten) {
    testing::TempDir dir;
    auto c               = tiny_config(dir, make_dataset(dir));
    c.max_train_steps    = 3;
    c.validation_prompts = {"a red fox", "a cat"};
    c.validation_steps   = 2;
    c.validation_epochs  = 100;
    c.use_ema            = true;
    c.report_to          = "tensorboard";
    ASSERT_EQ(training::train(c), training::TrainResult::kFinished);
    for (const char* name : {"0-a-red-fox.png", "1-a-cat.png"}) {
        const auto img = io::decode_image(c.output_dir + "/validation/step-2/" + name);
        EXPECT_EQ(img.sizes(), (std::vector<int64_t>{64, 64, 3})) << name;
    }
    std::string events;
    // accelerate's layout: logging_dir/<tracker_project_name>/events.out.tfevents.*
    for (const auto& e : fs::directory_iterator(c.output_dir + "/logs/text2image-fine-tune"))
        if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) events = e.path();
    ASSERT_FALSE(events.empty());
    const auto values = io::read_tensorboard_events(events);  // verifies every record's CRCs
    std::vector<int64_t> loss_steps;
    int images = 0, texts = 0;
    for (const auto& v : values) {
        if (v.kind == io::TensorBoardValue::Kind::kScalar && v.tag == "train_loss")
            loss_steps.push_back(v.step);
        if (v.kind == io::TensorBoardValue::Kind::kImage && v.tag == "validation") {
            ++images;
            EXPECT_EQ(v.step, 2);
            EXPECT_EQ(v.height, 64);
            EXPECT_EQ(v.width, 128);  // two 64x64 images side by side, as add_images' grid
        }
        if (v.kind == io::TensorBoardValue::Kind::kText) ++texts;
    }
    EXPECT_EQ(loss_steps, (std::vector<int64_t>{1, 2, 3}));
    EXPECT_EQ(images, 1);
    EXPECT_EQ(texts, 1);
}

TEST(Train, Bf16CheckpointingAnd8bitAdamRunTogether) {
    testing::TempDir dir;
    auto c                   = tiny_config(dir, make_dataset(dir));
    c.max_train_steps        = 2;
    c.mixed_precision        = "bf16";
    c.gradient_checkpointing = true;
    c.use_8bit_adam          = true;
    c.snr_gamma              = 5.0;
    c.input_perturbation     = 0.1;
    c.report_to              = "jsonl";
    ASSERT_EQ(training::train(c), training::TrainResult::kFinished);
    std::ifstream metrics(c.output_dir + "/logs/metrics.jsonl");
    std::string line;
    int n = 0;
    for (; std::getline(metrics, line); ++n)
        EXPECT_TRUE(std::isfinite(nlohmann::json::parse(line)["train_loss"].get<double>()));
    EXPECT_EQ(n, 2);
    // The saved UNet stays fp32 (master weights); the VAE keeps its original precision.
    const auto unet =
        io::load_safetensors(c.output_dir + "/unet/diffusion_pytorch_model.safetensors");
    EXPECT_EQ(unet.at("conv_in.weight").scalar_type(), torch::kFloat32);
}

}  // namespace
}  // namespace t2i
