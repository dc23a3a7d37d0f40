// Tests: a user's work is never lost (issue 10). The output folder is locked to one run, t2i
// replaces only what its manifest says it wrote, never writes into its inputs, never starts a
// new run over an earlier one's work; a loss that is not finite never reaches a checkpoint or
// the model; kill -9 and a full disk with --checkpoints_total_limit 1 always leave a loadable
// checkpoint and no temporary folder; damaged checkpoint state is named, not crashed on.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "io/file_util.h"
#include "io/json_config.h"
#include "io/output_folder.h"
#include "io/safetensors.h"
#include "pipeline/model_dir.h"
#include "test_util.h"
#include "training/checkpoint.h"
#include "training/trainer.h"

namespace t2i {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;
using testing::fixture;
using testing::run_t2i;
using testing::TempDir;

training::TrainConfig tiny_config(const TempDir& dir, const std::string& data) {
    auto c                    = testing::tiny_train_config(dir, data);
    c.max_train_steps         = 2;
    c.checkpointing_steps     = 1;
    c.checkpoints_total_limit = 1;
    c.seed                    = 7;
    c.report_to               = "none";
    return c;
}

// Every file below `dir` with its bytes: a snapshot that shows whether anything changed.
std::map<std::string, std::string> snapshot(const std::string& dir) {
    std::map<std::string, std::string> out;
    for (const auto& e : fs::recursive_directory_iterator(dir))
        if (e.is_regular_file()) out[fs::relative(e.path(), dir)] = io::read_text_file(e.path());
    return out;
}

// Starts `t2i ARGS` in the background; the caller waits for or kills it.
pid_t spawn_t2i(const std::vector<std::string>& args, int fsize_limit_bytes = 0) {
    std::vector<char*> argv{const_cast<char*>(T2I_BINARY)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
        if (fsize_limit_bytes > 0) {
            // A full disk: writes past the limit fail with EFBIG (SIGXFSZ ignored, as a write
            // to a full disk fails with ENOSPC without a signal).
            ::signal(SIGXFSZ, SIG_IGN);
            const rlimit limit{rlim_t(fsize_limit_bytes), rlim_t(fsize_limit_bytes)};
            ::setrlimit(RLIMIT_FSIZE, &limit);
        }
        const int devnull = ::open("/dev/null", O_WRONLY);
        ::dup2(devnull, 1);
        ::execv(T2I_BINARY, argv.data());
        ::_exit(127);
    }
    return pid;
}

int wait_exit_code(pid_t pid) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

std::vector<std::string> train_args(const std::string& data, const std::string& out) {
    return {"train",
            "--pretrained_model_name_or_path",
            fixture("tiny-sd1"),
            "--train_data_dir",
            data,
            "--output_dir",
            out,
            "--resolution",
            "64",
            "--train_batch_size",
            "2",
            "--seed",
            "1",
            "--num_threads",
            "1",
            "--report_to",
            "none",
            "--checkpointing_steps",
            "1",
            "--checkpoints_total_limit",
            "1",
            "--resume_from_checkpoint",
            "latest"};
}

void expect_loadable(const std::string& checkpoint, int64_t step) {
    auto unet        = pipeline::load_unet(fixture("tiny-sd1/unet"), {});
    auto opt         = training::make_adamw(unet->named_parameters(), {}, false);
    auto gen         = at::make_generator<at::CPUGeneratorImpl>(0);
    const auto state = training::load_checkpoint(checkpoint, unet, nullptr, *opt, gen);
    EXPECT_EQ(state.global_step, step) << checkpoint;
}

std::vector<std::string> temporaries(const std::string& out) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(out)) {
        const std::string n = e.path().filename();
        if (n.find(".tmp-") != std::string::npos || n.find(".deleting-") != std::string::npos ||
            n.find(".old-") != std::string::npos)
            names.push_back(n);
    }
    return names;
}

// ---- the output folder ---------------------------------------------------------------------

TEST(OutputFolder, OneWriterAtATimeAndOnlyWhatItsManifestLists) {
    TempDir dir;
    const std::string out = dir.file("out");
    {
        io::OutputFolder first(out);
        expect_error([&] { io::OutputFolder second(out); },
                     {out, "in use by another t2i run", "pid " + std::to_string(::getpid())});
        fs::create_directories(out + "/unet");
        std::ofstream(out + "/unet/notes.txt") << "mine";
        expect_error([&] { first.claim("unet"); }, {out + "/unet", "was not written by t2i"});
        EXPECT_EQ(io::read_text_file(out + "/unet/notes.txt"), "mine");
        first.claim("checkpoint-5");
        EXPECT_TRUE(first.owns("checkpoint-5"));
    }
    // The lock went with the first object; the manifest stayed.
    io::OutputFolder again(out);
    EXPECT_TRUE(again.owns("checkpoint-5"));
    EXPECT_FALSE(again.owns("unet"));
    expect_error(
        [&] {
            again.check_not_foreign({"vae", "unet"}, "HINT");
        },
        {"already holds 'unet'", "HINT"});
}

TEST(OutputFolder, TemporariesOfInterruptedWritesAreSweptOnlyForItsOwnEntries) {
    TempDir dir;
    const std::string out = dir.file("out");
    { io::OutputFolder(out).claim("checkpoint-5"); }
    for (const char* name :
         {".checkpoint-5.tmp-4242", ".checkpoint-5.deleting-17", ".user.tmp-1", "notes.old-3"})
        fs::create_directories(out + "/" + name + "/x");
    io::OutputFolder folder(out);
    EXPECT_FALSE(fs::exists(out + "/.checkpoint-5.tmp-4242"));
    EXPECT_FALSE(fs::exists(out + "/.checkpoint-5.deleting-17"));
    EXPECT_TRUE(fs::exists(out + "/.user.tmp-1/x"));  // not t2i's: kept
    EXPECT_TRUE(fs::exists(out + "/notes.old-3/x"));
}

TEST(Train, FilesT2iDidNotWriteAreNeverReplacedAndTheRunFailsBeforeWork) {
    TempDir dir;
    const auto data = testing::make_image_dataset(dir, 4);
    for (const std::string& entry : {"unet/notes.txt", "scheduler/mine.json", "train_config.json",
                                     "checkpoint-100/unet/x", "logs/events"}) {
        TempDir run;
        auto c       = tiny_config(run, data);
        const auto f = c.output_dir + "/" + entry;
        fs::create_directories(fs::path(f).parent_path());
        std::ofstream(f) << "user data";
        const auto before = snapshot(c.output_dir);
        expect_error<std::exception>(
            [&] { training::train(c); },
            {"already holds '" + entry.substr(0, entry.find('/')) + "'", "t2i did not write"});
        EXPECT_EQ(snapshot(c.output_dir).count(entry), 1u) << entry;
        EXPECT_EQ(io::read_text_file(f), "user data");
        EXPECT_FALSE(io::file_exists(c.output_dir + "/model_index.json"));
    }
}

TEST(Train, TheBaseModelOrTheDatasetAsOutputDirIsRefused) {
    TempDir dir;
    const auto data  = testing::make_image_dataset(dir, 4);
    const auto model = dir.file("model");
    fs::copy(fixture("tiny-sd1"), model, fs::copy_options::recursive);
    const auto before               = snapshot(model);
    auto c                          = tiny_config(dir, data);
    c.pretrained_model_name_or_path = model;
    c.output_dir                    = model;
    expect_error<training::FlagError>([&] { training::train(c); },
                                      {"--output_dir", "is the base model folder"});
    c.output_dir = model + "/unet";
    expect_error<training::FlagError>([&] { training::train(c); }, {"inside the base model"});
    c.output_dir = data + "/run";
    expect_error<training::FlagError>([&] { training::train(c); }, {"inside the dataset folder"});
    EXPECT_EQ(snapshot(model), before);
    EXPECT_FALSE(fs::exists(data + "/run"));
    // A record file lists its images: an output folder beside it is fine.
    std::ofstream(data + "/records.jsonl")
        << nlohmann::json{{"image", "img0.png"}, {"text", "x"}}.dump() << "\n"
        << nlohmann::json{{"image", "img1.png"}, {"text", "y"}}.dump() << "\n";
    c.pretrained_model_name_or_path = fixture("tiny-sd1");
    c.train_data_dir.reset();
    c.dataset_name    = data + "/records.jsonl";
    c.max_train_steps = 1;
    EXPECT_EQ(training::train(c), training::TrainResult::kFinished);
    EXPECT_TRUE(io::file_exists(data + "/run/model_index.json"));
}

TEST(Train, ANewRunNeverOverwritesAnEarlierRunsWork) {
    TempDir dir;
    auto c = tiny_config(dir, testing::make_image_dataset(dir, 4));
    ASSERT_EQ(training::train(c), training::TrainResult::kFinished);
    const auto finished = snapshot(c.output_dir);
    auto again          = c;
    again.learning_rate = 1e-3;
    expect_error<training::FlagError>(
        [&] { training::train(again); },
        {"holds the work of an earlier run", "checkpoint-2", "--resume_from_checkpoint latest"});
    EXPECT_EQ(snapshot(c.output_dir), finished);
    // Continuing it is fine.
    again.resume_from_checkpoint = "latest";
    again.max_train_steps        = 3;
    ASSERT_EQ(training::train(again), training::TrainResult::kFinished);
    EXPECT_EQ(training::list_checkpoints(c.output_dir).back().first, 3);
}

TEST(Train, AFolderWrittenBeforeTheManifestExistedCanStillBeResumed) {
    TempDir dir;
    auto c = tiny_config(dir, testing::make_image_dataset(dir, 4));
    ASSERT_EQ(training::train(c), training::TrainResult::kFinished);
    fs::remove(c.output_dir + "/.t2i-manifest.json");        // as t2i wrote folders before issue 10
    fs::create_directories(c.output_dir + "/checkpoint-9");  // not t2i's: no training_state.json
    auto resume                   = c;
    resume.resume_from_checkpoint = "latest";
    expect_error<std::exception>([&] { training::train(resume); },
                                 {"already holds 'checkpoint-9'"});
    fs::remove_all(c.output_dir + "/checkpoint-9");
    resume.max_train_steps = 3;
    ASSERT_EQ(training::train(resume), training::TrainResult::kFinished);
    EXPECT_EQ(training::list_checkpoints(c.output_dir).back().first, 3);
}

TEST(Train, ASecondRunInTheSameOutputDirFailsAtOnce) {
    TempDir dir;
    const auto data = testing::make_image_dataset(dir, 4);
    const auto out  = dir.file("out");
    auto args       = train_args(data, out);
    args.insert(args.end(), {"--max_train_steps", "100000", "--checkpointing_steps", "100000"});
    const pid_t first = spawn_t2i(args);
    for (int i = 0; i < 300 && !io::file_exists(out + "/train_config.json"); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_TRUE(io::file_exists(out + "/train_config.json"));
    const auto second = run_t2i(args);
    EXPECT_EQ(second.code, 1);
    EXPECT_NE(second.out.find("is in use by another t2i run (pid " + std::to_string(first)),
              std::string::npos)
        << second.out;
    EXPECT_EQ(::kill(first, 0), 0) << "the first run must go on";
    ::kill(first, SIGKILL);
    wait_exit_code(first);
}

// ---- non-finite losses ---------------------------------------------------------------------

bool holds_non_finite(const std::string& file) {
    for (const auto& [name, t] : io::load_safetensors(file))
        if (t.is_floating_point() && !t.isfinite().all().item<bool>()) return true;
    return false;
}

TEST(Train, ANonFiniteLossNeverReachesACheckpointOrTheModel) {
    TempDir dir;
    auto c = tiny_config(dir, testing::make_image_dataset(dir, 4));
    ASSERT_EQ(training::train(c), training::TrainResult::kFinished);
    const auto good = snapshot(c.output_dir);
    // The same run continued with a learning rate that makes it diverge (the first update
    // leaves finite garbage, the next loss is NaN).
    auto diverging                   = c;
    diverging.resume_from_checkpoint = "latest";
    diverging.max_train_steps        = 40;
    diverging.learning_rate          = 1e6;
    expect_error([&] { training::train(diverging); },
                 {"not finite for 5 steps in a row", "--learning_rate 1e+06"});
    // checkpoint-2 (and the saved model) are untouched and still `latest`; the checkpoint the
    // diverging weights produced before the first NaN was set aside, not rotated in.
    const auto after = snapshot(c.output_dir);
    for (const auto& [file, bytes] : good)
        if (file.rfind("logs/", 0) != 0 && file != ".t2i-manifest.json" &&
            file != "train_config.json")
            EXPECT_TRUE(after.count(file) && after.at(file) == bytes) << file;
    EXPECT_EQ(*training::resolve_checkpoint("latest", c.output_dir),
              c.output_dir + "/checkpoint-2");
    EXPECT_TRUE(fs::exists(c.output_dir + "/checkpoint-3-diverged"));
    for (const auto& [file, bytes] : after)
        if (file.size() > 12 && file.substr(file.size() - 12) == ".safetensors")
            EXPECT_FALSE(holds_non_finite(c.output_dir + "/" + file)) << file;
}

// ---- interruptions -------------------------------------------------------------------------

TEST(Train, KillMinusNineWithALimitOfOneAlwaysLeavesALoadableCheckpoint) {
    TempDir dir;
    const auto data = testing::make_image_dataset(dir, 4);
    const auto out  = dir.file("out");
    auto args       = train_args(data, out);
    args.insert(args.end(), {"--max_train_steps", "100000"});
    for (int attempt = 0; attempt < 6; ++attempt) {
        const auto before  = training::list_checkpoints(out);
        const int64_t last = before.empty() ? 0 : before.back().first;
        const pid_t pid    = spawn_t2i(args);
        if (attempt % 2 == 1) {
            // While a checkpoint is being written (its temporary folder exists).
            auto writing = [&] {
                for (const auto& n : temporaries(out))
                    if (n.rfind(".checkpoint-", 0) == 0) return true;
                return false;
            };
            for (int i = 0; i < 20000 && !writing(); ++i)
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
        } else {
            // Once the run has written a new checkpoint, a little later each time: in the
            // middle of a step, of writing the next checkpoint or of pruning the previous one.
            for (int i = 0; i < 800; ++i) {
                const auto now = training::list_checkpoints(out);
                if (!now.empty() && now.back().first > last) break;
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(15 + 25 * attempt));
        }
        ::kill(pid, SIGKILL);
        EXPECT_EQ(wait_exit_code(pid), -SIGKILL) << "the run ended before it was killed";
        const auto checkpoints = training::list_checkpoints(out);
        ASSERT_FALSE(checkpoints.empty()) << "attempt " << attempt;
        for (const auto& [step, path] : checkpoints) expect_loadable(path, step);
        EXPECT_EQ(*training::resolve_checkpoint("latest", out), checkpoints.back().second);
    }
    // Opening the folder again (as the next run does) sweeps what the kills left half-written.
    io::OutputFolder reopened(out);
    EXPECT_TRUE(temporaries(out).empty());
}

TEST(Train, AFullDiskDuringACheckpointKeepsThePreviousOneAndNoTemporaryFolder) {
    TempDir dir;
    const auto data = testing::make_image_dataset(dir, 4);
    const auto out  = dir.file("out");
    auto args       = train_args(data, out);
    args.insert(args.end(), {"--max_train_steps", "2"});
    ASSERT_EQ(wait_exit_code(spawn_t2i(args)), 0);
    const auto checkpoint = snapshot(out + "/checkpoint-2");
    // Continue with room for small files only: the UNet weights (5.7 MB) no longer fit.
    args.back() = "4";
    int pipe_fds[2];
    ASSERT_EQ(::pipe(pipe_fds), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(pipe_fds[1], 2);
        ::close(pipe_fds[0]);
        std::vector<char*> argv{const_cast<char*>(T2I_BINARY)};
        for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        ::signal(SIGXFSZ, SIG_IGN);
        const rlimit limit{1 << 20, 1 << 20};
        ::setrlimit(RLIMIT_FSIZE, &limit);
        ::execv(T2I_BINARY, argv.data());
        ::_exit(127);
    }
    ::close(pipe_fds[1]);
    std::string err;
    char buf[4096];
    for (ssize_t n; (n = ::read(pipe_fds[0], buf, sizeof buf)) > 0;) err.append(buf, size_t(n));
    ::close(pipe_fds[0]);
    EXPECT_EQ(wait_exit_code(pid), 1) << err;
    EXPECT_NE(err.find("writing checkpoint '" + out + "/checkpoint-3' failed"), std::string::npos)
        << err;
    EXPECT_NE(err.find("the last complete checkpoint is " + out + "/checkpoint-2"),
              std::string::npos)
        << err;
    EXPECT_EQ(snapshot(out + "/checkpoint-2"), checkpoint);
    expect_loadable(out + "/checkpoint-2", 2);
    EXPECT_TRUE(temporaries(out).empty());
    // With room again, the same command continues from checkpoint-2.
    ASSERT_EQ(wait_exit_code(spawn_t2i(args)), 0);
    EXPECT_EQ(training::list_checkpoints(out).back().first, 4);
}

// ---- damaged checkpoint state, other commands ------------------------------------------------

TEST(Train, DamagedCheckpointStateIsNamedNotCrashedOn) {
    TempDir dir;
    auto c = tiny_config(dir, testing::make_image_dataset(dir, 4));
    ASSERT_EQ(training::train(c), training::TrainResult::kFinished);
    const std::string state       = c.output_dir + "/checkpoint-2/training_state.json";
    const auto original           = io::read_json(state).json();
    auto resume                   = c;
    resume.resume_from_checkpoint = "latest";
    resume.max_train_steps        = 3;
    auto with                     = [&](const std::function<void(nlohmann::json&)>& change,
                    const std::vector<std::string>& parts) {
        auto j = original;
        change(j);
        std::ofstream(state) << j.dump();
        expect_error<std::exception>([&] { training::train(resume); }, parts);
    };
    with([](auto& j) { j["loader"]["batch"] = 999999; },
         {state, "not a position of this dataset", "was the dataset changed"});
    with([](auto& j) { j["global_step"] = "two"; }, {state, "'global_step'", "wrong type"});
    with([](auto& j) { j["loader"] = 3; }, {state, "'loader' must be an object"});
    with([](auto& j) { j["extra"]["grad_scaler"] = {{"scale", -1.0}}; }, {"'scale'"});
    with([](auto& j) { j.erase("lr_schedule"); }, {"missing key 'name'"});
    std::ofstream(state) << original.dump();
    io::save_safetensors(c.output_dir + "/checkpoint-2/random_states.safetensors",
                         {{"generator", torch::zeros({3}, torch::kUInt8)}});
    expect_error<std::exception>([&] { training::train(resume); },
                                 {"random_states.safetensors", "damaged"});
}

TEST(Train, SkippingBadSamplesWhenEveryImageIsBadStopsInsteadOfLooping) {
    TempDir dir;
    const auto data = testing::make_image_dataset(dir, 4);
    for (int i = 0; i < 4; ++i)
        testing::write_bytes(data + "/img" + std::to_string(i) + ".png", "not an image");
    auto c             = tiny_config(dir, data);
    c.skip_bad_samples = true;
    c.max_train_steps  = 1000;
    expect_error([&] { training::train(c); }, {"every one of the 4 samples", "img"});
}

TEST(DemoData, AnExistingDatasetIsNeverReplaced) {
    TempDir dir;
    ASSERT_EQ(run_t2i({"demo-data", "--output", dir.file("d"), "--count", "2", "--size", "8"}).code,
              0);
    const auto before = snapshot(dir.file("d"));
    const auto r = run_t2i({"demo-data", "--output", dir.file("d"), "--count", "3", "--size", "8"});
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.out.find("already exists and is not an empty folder"), std::string::npos);
    EXPECT_EQ(snapshot(dir.file("d")), before);
    fs::create_directories(dir.file("m/unet"));
    std::ofstream(dir.file("m/unet/mine.txt")) << "x";
    const auto m = run_t2i({"init-model", "--output", dir.file("m")});
    EXPECT_EQ(m.code, 1);
    EXPECT_NE(m.out.find("already holds 'unet'"), std::string::npos) << m.out;
    EXPECT_EQ(io::read_text_file(dir.file("m/unet/mine.txt")), "x");
}

TEST(Generate, NeverWritesIntoAModelOrOverAFileOfAnotherKind) {
    TempDir dir;
    const auto model = dir.file("model");
    fs::copy(fixture("tiny-sd1"), model, fs::copy_options::recursive);
    const auto before = snapshot(model);
    auto generate     = [&](const std::vector<std::string>& extra) {
        std::vector<std::string> args = {
            "generate", "--model", model, "--prompt", "x", "--num_inference_steps", "1"};
        args.insert(args.end(), extra.begin(), extra.end());
        return run_t2i(args);
    };
    auto r = generate({"--output", dir.file("a.png"), "--save_latents",
                       model + "/unet/diffusion_pytorch_model.safetensors"});
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.out.find("--save_latents '" + model +
                         "/unet/diffusion_pytorch_model.safetensors' is inside the model folder"),
              std::string::npos)
        << r.out;
    EXPECT_EQ(snapshot(model), before);
    std::ofstream(dir.file("notes.png")) << "my notes";
    r = generate({"--output", dir.file("notes.png")});
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.out.find("exists and is not a PNG image"), std::string::npos) << r.out;
    EXPECT_EQ(io::read_text_file(dir.file("notes.png")), "my notes");
    // Its own outputs are replaced when generating again.
    for (int i = 0; i < 2; ++i)
        EXPECT_EQ(
            generate({"--output", dir.file("out.png"), "--save_latents", dir.file("l.safetensors")})
                .code,
            0);
}

}  // namespace
}  // namespace t2i
