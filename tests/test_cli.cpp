// Tests: the `t2i` binary's contract (CLI.md): inspect and tokenize output, exit codes 0 / 1 / 2,
// errors that name the problem.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/file_util.h"
#include "io/json_config.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace t2i {
namespace {

namespace fs = std::filesystem;
using testing::fixture;
using testing::run_t2i;

TEST(Cli, InspectSummarizesEveryComponent) {
    auto r = run_t2i({"inspect", fixture("tiny-sd1")});
    ASSERT_EQ(r.code, 0) << r.out;
    const auto counts = io::read_json(fixture("manifests/param_counts.json")).json()["tiny-sd1"];
    auto with_commas  = [](int64_t n) {
        std::string s = std::to_string(n), out;
        for (size_t i = 0; i < s.size(); ++i) {
            if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
            out += s[i];
        }
        return out;
    };
    for (const char* c : {"unet", "vae", "text_encoder"})
        EXPECT_NE(r.out.find("parameters: " + with_commas(counts[c].get<int64_t>())),
                  std::string::npos)
            << c << "\n"
            << r.out;
    for (const char* s :
         {"unet: UNet2DConditionModel", "vae: AutoencoderKL", "text_encoder: CLIPTextModel",
          "tokenizer: CLIPTokenizer", "scheduler: DDPMScheduler", "stored dtype: F32",
          "prediction_type: \"epsilon\"", "scaling_factor: 0.18215"})
        EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
}

TEST(Cli, InspectFailsWithExitOneOnMissingWeights) {
    testing::TempDir tmp;
    fs::copy(fixture("tiny-sd1"), tmp.path() + "/m", fs::copy_options::recursive);
    fs::permissions(tmp.path() + "/m", fs::perms::owner_all, fs::perm_options::add);
    for (auto& e : fs::recursive_directory_iterator(tmp.path() + "/m"))
        fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
    // Drop one UNet tensor: the error must list it as missing.
    const std::string unet_file = tmp.path() + "/m/unet/diffusion_pytorch_model.safetensors";
    auto tensors                = io::load_safetensors(unet_file);
    tensors.erase("conv_out.bias");
    io::save_safetensors(unet_file, tensors);
    auto r = run_t2i({"inspect", tmp.path() + "/m"});
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("conv_out.bias"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("missing"), std::string::npos) << r.out;
}

TEST(Cli, InspectNamesAHubIdAsNotLocal) {
    auto r = run_t2i({"inspect", "runwayml/stable-diffusion-v1-5"});
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.out.find("local"), std::string::npos) << r.out;
}

TEST(Cli, UnknownFlagOrCommandExitsTwo) {
    auto r = run_t2i({"inspect", "--bogus", fixture("tiny-sd1")});
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.out.find("--bogus"), std::string::npos) << r.out;
    EXPECT_EQ(run_t2i({"frobnicate"}).code, 2);
    auto m = run_t2i({"tokenize", "--model", fixture("tiny-sd1"), "--mode", "weird", "x"});
    EXPECT_EQ(m.code, 2);
    EXPECT_NE(m.out.find("--mode"), std::string::npos) << m.out;
}

TEST(Cli, HelpExitsZero) {
    for (const char* cmd : {"inspect", "tokenize"}) {
        auto r = run_t2i({cmd, "--help"});
        EXPECT_EQ(r.code, 0) << cmd;
        EXPECT_NE(r.out.find("usage: t2i"), std::string::npos) << r.out;
    }
}

TEST(Cli, TokenizePrintsTransformersIdsAsJsonLines) {
    const auto golden  = io::read_json(fixture("golden/tokenizer_ids.json")).json();
    const auto prompts = golden["prompts"];
    for (const std::string mode : {"ftfy", "basic"}) {
        std::vector<std::string> args{"tokenize", "--model", fixture("tiny-sd2"),
                                      "--mode",   mode,      "--"};
        for (const auto& p : prompts) args.push_back(p.get<std::string>());
        auto r = run_t2i(args);
        ASSERT_EQ(r.code, 0) << r.out;
        std::istringstream lines(r.out);
        std::string line;
        size_t i = 0;
        for (; std::getline(lines, line); ++i) {
            ASSERT_LT(i, prompts.size());
            const auto j        = nlohmann::json::parse(line);
            const auto expected = golden["tokenizers"]["tiny-sd2"][mode]["per_prompt"][i];
            EXPECT_EQ(j["prompt"], prompts[i]);
            EXPECT_EQ(j["input_ids"], expected["input_ids"]) << mode << " prompt " << i;
            const size_t n_ids = expected["ids_no_truncation"].size();
            EXPECT_EQ(j["length"].get<size_t>(), std::min<size_t>(n_ids, 77)) << i;
        }
        EXPECT_EQ(i, prompts.size());
    }
}

TEST(Cli, TokenizeAcceptsAPromptStartingWithDashAfterDoubleDash) {
    auto r = run_t2i({"tokenize", "--model", fixture("tiny-sd1"), "--", "-a cat"});
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(nlohmann::json::parse(r.out)["prompt"], "-a cat");
    EXPECT_EQ(run_t2i({"tokenize", "--model", fixture("tiny-sd1"), "-a cat"}).code, 2);
}

TEST(Cli, GenerateWritesImagesAndLatents) {
    testing::TempDir tmp;
    auto r = run_t2i({"generate", "--model", fixture("tiny-sd1"), "--prompt", "a cat", "a dog",
                      "--scheduler", "ddim", "--num_inference_steps", "2", "--seed", "0",
                      "--save_latents", tmp.file("latents.safetensors"), "--output",
                      tmp.file("out"), "--num_threads", "1"});
    ASSERT_EQ(r.code, 0) << r.out;
    for (const char* name : {"000000.png", "000001.png"})
        EXPECT_TRUE(io::file_exists(tmp.file(std::string("out/") + name))) << name;
    const auto latents = io::load_safetensors(tmp.file("latents.safetensors"));
    ASSERT_TRUE(latents.count("latents"));
    EXPECT_EQ(latents.at("latents").sizes(), (std::vector<int64_t>{2, 4, 32, 32}));
    // The same seed gives the same latents; a different seed does not.
    auto again = run_t2i({"generate", "--model", fixture("tiny-sd1"), "--prompt", "a cat", "a dog",
                          "--scheduler", "ddim", "--num_inference_steps", "2", "--seed", "0",
                          "--save_latents", tmp.file("again.safetensors"), "--output",
                          tmp.file("out2"), "--num_threads", "1"});
    ASSERT_EQ(again.code, 0) << again.out;
    EXPECT_TRUE(torch::equal(latents.at("latents"),
                             io::load_safetensors(tmp.file("again.safetensors")).at("latents")));
}

TEST(Cli, GenerateExplainsBadSizesAndMissingBaseModel) {
    testing::TempDir tmp;
    auto r = run_t2i({"generate", "--model", fixture("tiny-sd1"), "--prompt", "x", "--height", "63",
                      "--output", tmp.file("x.png")});
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.out.find("multiples"), std::string::npos) << r.out;
    std::filesystem::create_directories(tmp.file("checkpoint-5/unet"));
    auto c = run_t2i({"generate", "--model", tmp.file("checkpoint-5"), "--prompt", "x", "--output",
                      tmp.file("x.png")});
    EXPECT_EQ(c.code, 2);
    EXPECT_NE(c.out.find("--base_model"), std::string::npos) << c.out;
    // A .jpg output is refused before any work, and nothing is created; the progress line
    // carries no terminal escape codes when stderr is not a terminal (here: a pipe).
    auto j = run_t2i({"generate", "--model", fixture("tiny-sd1"), "--prompt", "x", "--output",
                      tmp.file("x.jpg")});
    EXPECT_EQ(j.code, 2);
    EXPECT_NE(j.out.find("PNG"), std::string::npos) << j.out;
    EXPECT_FALSE(fs::exists(tmp.file("x.jpg")));
    auto ok = run_t2i({"generate", "--model", fixture("tiny-sd1"), "--prompt", "x",
                       "--num_inference_steps", "2", "--output", tmp.file("y.png")});
    EXPECT_EQ(ok.code, 0) << ok.out;
    EXPECT_EQ(ok.out.find('\033'), std::string::npos) << ok.out;
}

// The "--lr_warmup_steps is ignored by constant" warning only when the flag was given; the
// singular --validation_prompt (the LoRA / SDXL scripts' flag) in train: N images of it.
TEST(Cli, TrainWarnsOnlyAboutFlagsGivenAndTakesValidationPrompt) {
    testing::TempDir tmp;
    const auto data = testing::make_image_dataset(tmp, 2);
    const std::vector<std::string> base{"train",
                                        "--pretrained_model_name_or_path",
                                        fixture("tiny-sd1"),
                                        "--train_data_dir",
                                        data,
                                        "--resolution",
                                        "32",
                                        "--center_crop",
                                        "--train_batch_size",
                                        "2",
                                        "--max_train_steps",
                                        "1",
                                        "--num_threads",
                                        "1",
                                        "--report_to",
                                        "none",
                                        "--seed",
                                        "1"};
    auto args = base;
    args.insert(args.end(), {"--output_dir", tmp.file("a"), "--validation_prompt", "a red shape",
                             "--num_validation_images", "2"});
    auto r = run_t2i(args);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(r.out.find("lr_warmup_steps"), std::string::npos) << r.out;
    for (const char* f :
         {"/a/validation/step-1/0-a-red-shape.png", "/a/validation/step-1/1-a-red-shape.png"})
        EXPECT_TRUE(fs::exists(tmp.path() + f)) << f;
    args = base;
    args.insert(args.end(), {"--output_dir", tmp.file("b"), "--lr_warmup_steps", "10"});
    r = run_t2i(args);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("--lr_warmup_steps 10 is ignored"), std::string::npos) << r.out;
}

// A write to a pipe or socket whose reader is gone returns an error instead of killing t2i with
// SIGPIPE (as under Python, which ignores it: Gloo writes to a dead rank's socket with writev,
// which cannot ask for MSG_NOSIGNAL). Here: --help into a pipe that nobody reads.
TEST(Cli, AWriteToAClosedPipeDoesNotKillT2i) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    ::close(fds[0]);  // no reader
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::signal(SIGPIPE, SIG_DFL);  // not inherited from this process: t2i must set it itself
        ::dup2(fds[1], 1);
        const int null = ::open("/dev/null", O_WRONLY);
        ::dup2(null, 2);
        ::execl(T2I_BINARY, T2I_BINARY, "--help", static_cast<char*>(nullptr));
        ::_exit(127);
    }
    ::close(fds[1]);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_FALSE(WIFSIGNALED(status)) << "killed by " << strsignal(WTERMSIG(status));
    EXPECT_TRUE(WIFEXITED(status));
}

}  // namespace
}  // namespace t2i
