// Tests: several processes on loopback Gloo. In-process (one thread per rank): the gradient
// all-reduce, broadcast and state gathering against sums computed here; ZeRO-1 state sharding
// round trips; the loader's sharding. End to end (t2i launch / torchrun-style processes):
// 2 ranks x batch B train exactly like 1 rank x batch 2B (with accumulation, ZeRO-1, uneven
// epoch ends), a checkpoint resumes on another number of processes, and a rank that dies or
// hangs ends the run in bounded time, named.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "data/loader.h"
#include "dist/process_group.h"
#include "dist/zero.h"
#include "io/file_util.h"
#include "io/json_config.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "tokenizer/clip_tokenizer.h"
#include "training/checkpoint.h"
#include "training/optimizer.h"

namespace t2i {
namespace {

namespace fs = std::filesystem;
using testing::fixture;
using testing::run_t2i;
using testing::TempDir;

// A TCP port that was free a moment ago (bind to port 0, read it back, close).
int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family      = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port        = 0;
    ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    socklen_t len = sizeof(addr);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    ::close(fd);
    return ntohs(addr.sin_port);
}

// Runs fn(group) on `world` threads, one ProcessGroup (rank) each; rethrows the first error.
template <typename Fn>
void run_ranks(int world, Fn fn) {
    const int port = free_port();
    std::vector<std::thread> threads;
    std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
    for (int r = 0; r < world; ++r)
        threads.emplace_back([&, r] {
            try {
                dist::WorldInfo w;
                w.rank        = r;
                w.world_size  = world;
                w.master_port = port;
                dist::GroupOptions o;
                o.timeout = std::chrono::seconds(60);
                dist::ProcessGroup group(w, o);
                fn(group);
                group.barrier("the end of the test");
            } catch (...) {
                errors[size_t(r)] = std::current_exception();
            }
        });
    for (auto& t : threads) t.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

TEST(Dist, WorldFromEnvironmentNamesABadVariable) {
    ::setenv("WORLD_SIZE", "2", 1);
    ::setenv("RANK", "2", 1);
    try {
        dist::WorldInfo::from_env();
        ADD_FAILURE() << "RANK=2 of WORLD_SIZE=2 was accepted";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find("RANK=2"), std::string::npos) << e.what();
    }
    ::setenv("RANK", "1", 1);
    ::setenv("MASTER_PORT", "http", 1);
    try {
        dist::WorldInfo::from_env();
        ADD_FAILURE() << "MASTER_PORT=http was accepted";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find("MASTER_PORT"), std::string::npos) << e.what();
    }
    ::setenv("MASTER_PORT", "29501", 1);
    ::setenv("LOCAL_RANK", "1", 1);
    const auto w = dist::WorldInfo::from_env();
    EXPECT_EQ(w.rank, 1);
    EXPECT_EQ(w.world_size, 2);
    EXPECT_EQ(w.local_rank, 1);
    EXPECT_EQ(w.master_port, 29501);
    for (const char* v : {"WORLD_SIZE", "RANK", "MASTER_PORT", "LOCAL_RANK"}) ::unsetenv(v);
    EXPECT_FALSE(dist::WorldInfo::from_env().distributed());
}

// Each rank's loss is sum_i w_i * x_{r,i}: the reduced gradient of w_i must be sum_r x_{r,i},
// whatever the bucket size, including parameters that get no gradient and accumulated ones.
TEST(Dist, GradReducerSumsGradientsOverRanksInEveryBucketLayout) {
    const int world = 2;
    for (int64_t cap : {int64_t(8), int64_t(1) << 20}) {  // one parameter per bucket; one bucket
        run_ranks(world, [&](dist::ProcessGroup& group) {
            std::vector<torch::Tensor> w = {torch::zeros({3}, torch::requires_grad()),
                                            torch::zeros({2, 2}, torch::requires_grad()),
                                            torch::zeros({5}, torch::requires_grad()),
                                            torch::zeros({4}, torch::requires_grad()),
                                            torch::zeros({6}, torch::requires_grad())};
            dist::GradReducer reducer(group, w, cap);
            EXPECT_EQ(reducer.num_buckets(), cap == 8 ? 5u : 1u);
            auto x = [&](int r, size_t i) {
                return torch::arange(w[i].numel(), torch::kFloat32).view(w[i].sizes()) * (r + 1) +
                       double(i);
            };
            for (int step = 0; step < 2; ++step) {
                // Micro-step 1 (no sync): w[0..2]; micro-step 2 (sync): w[0], w[1], and w[4] on
                // rank 1 only; w[3] unused.
                auto loss1 = (w[0] * x(group.rank(), 0)).sum() + (w[1] * x(group.rank(), 1)).sum() +
                             (w[2] * x(group.rank(), 2)).sum();
                loss1.backward();
                reducer.prepare_for_backward();
                auto loss2 = (w[0] * x(group.rank(), 0)).sum() + (w[1] * x(group.rank(), 1)).sum();
                if (group.rank() == 1) loss2 = loss2 + (w[4] * x(1, 4)).sum();
                loss2.backward();
                reducer.finish();
                for (size_t i = 0; i < 3; ++i) {
                    auto expected = torch::zeros_like(w[i]);
                    for (int r = 0; r < world; ++r) expected += x(r, i) * (i < 2 ? 2 : 1);
                    EXPECT_TRUE(torch::equal(w[i].grad(), expected)) << "param " << i;
                }
                EXPECT_FALSE(w[3].grad().defined()) << "unused everywhere: no gradient";
                ASSERT_TRUE(w[4].grad().defined()) << "used on rank 1";
                EXPECT_TRUE(torch::equal(w[4].grad(), x(1, 4)));
                for (auto& p : w) p.mutable_grad() = torch::Tensor();
            }
        });
    }
}

// torchrun's agent hosts the store itself; the workers must join it instead of binding the port.
TEST(Dist, JoinsTheStoreOfATorchrunAgent) {
    const int port = free_port();
    c10d::TCPStoreOptions agent;
    agent.port        = static_cast<uint16_t>(port);
    agent.isServer    = true;
    agent.waitWorkers = false;
    c10d::TCPStore store("127.0.0.1", agent);
    ::setenv("TORCHELASTIC_USE_AGENT_STORE", "True", 1);
    ::setenv("TORCHELASTIC_RESTART_COUNT", "2", 1);
    std::vector<std::thread> threads;
    std::vector<double> sums(2, 0);
    for (int r = 0; r < 2; ++r)
        threads.emplace_back([&, r] {
            dist::WorldInfo w;
            w.rank        = r;
            w.world_size  = 2;
            w.master_port = port;
            dist::GroupOptions o;
            o.timeout = std::chrono::seconds(30);
            dist::ProcessGroup group(w, o);
            auto t = torch::full({3}, double(r + 1));
            group.all_reduce(t, "test all-reduce");
            sums[size_t(r)] = t.sum().item<double>();
            if (r == 0) group.store_set("probe", "1");
            group.barrier("the end of the test");
        });
    for (auto& t : threads) t.join();
    ::unsetenv("TORCHELASTIC_USE_AGENT_STORE");
    ::unsetenv("TORCHELASTIC_RESTART_COUNT");
    EXPECT_EQ(sums, (std::vector<double>{9, 9}));
    EXPECT_TRUE(store.check({"/worker/attempt_2/t2i/kv/probe"}));
}

TEST(Dist, BroadcastAndGatherMoveExactValues) {
    run_ranks(3, [&](dist::ProcessGroup& group) {
        const int r                  = group.rank();
        std::vector<torch::Tensor> t = {torch::full({2, 3}, double(r)),
                                        torch::full({4}, int64_t(10 * r))};
        group.broadcast(t, 1, "test broadcast");
        EXPECT_TRUE(torch::equal(t[0], torch::full({2, 3}, 1.0)));
        EXPECT_TRUE(torch::equal(t[1], torch::full({4}, int64_t(10))));
        training::TensorMap local;
        local["a." + std::to_string(r)] = torch::arange(r + 1, torch::kFloat32);
        local["step"]                   = torch::tensor(int64_t(r), torch::kInt64);
        if (r == 2) local["bytes"] = torch::tensor({1, 2, 3}, torch::kUInt8);
        const auto maps = dist::gather_tensor_maps(group, local, "test gather");
        if (r != 0) {
            EXPECT_TRUE(maps.empty());
            return;
        }
        ASSERT_EQ(maps.size(), 3u);
        for (int q = 0; q < 3; ++q) {
            EXPECT_TRUE(torch::equal(maps[size_t(q)].at("a." + std::to_string(q)),
                                     torch::arange(q + 1, torch::kFloat32)));
            EXPECT_EQ(maps[size_t(q)].at("step").item<int64_t>(), q);
        }
        EXPECT_TRUE(torch::equal(maps[2].at("bytes"), torch::tensor({1, 2, 3}, torch::kUInt8)));
    });
}

// A full AdamW state split by owner and merged again is the same state dict, for 8-bit too,
// and each shard loads into an optimizer over that rank's parameters.
TEST(Dist, ZeroShardsOfTheOptimizerStateMergeBackExactly) {
    torch::manual_seed(0);
    training::NamedParameters params;
    for (int i = 0; i < 7; ++i)
        params.insert("layer" + std::to_string(i) + ".weight",
                      torch::randn({int64_t(600 * (i + 1))}, torch::requires_grad()));
    const auto owner = dist::partition_parameters(params, 3);
    std::vector<int64_t> load(3, 0);
    for (size_t i = 0; i < params.size(); ++i) load[size_t(owner[i])] += params[i].value().numel();
    const auto [lo, hi] = std::minmax_element(load.begin(), load.end());
    EXPECT_LE(*hi - *lo, 600 * 7) << "unbalanced partition";
    for (bool eight_bit : {false, true}) {
        auto opt = training::make_adamw(params, {}, eight_bit);
        for (int step = 0; step < 2; ++step) {
            for (size_t i = 0; i < params.size(); ++i)
                // The last parameter gets a grad only once: its own step count differs.
                params[i].value().mutable_grad() =
                    (step == 0 && i == 6) ? torch::Tensor() : torch::randn_like(params[i].value());
            opt->step();
        }
        const auto full = opt->state_dict();
        std::vector<training::TensorMap> shards;
        std::vector<std::vector<std::string>> names(3);
        for (size_t i = 0; i < params.size(); ++i)
            names[size_t(owner[i])].push_back(params[i].key());
        for (int r = 0; r < 3; ++r) {
            shards.push_back(dist::shard_optimizer_state(full, names[size_t(r)]));
            auto mine =
                training::make_adamw(dist::owned_parameters(params, owner, r), {}, eight_bit);
            mine->load_state_dict(shards.back());
            for (const auto& [k, v] : mine->state_dict())
                EXPECT_TRUE(torch::equal(v, shards.back().at(k))) << k;
        }
        const auto merged = dist::merge_optimizer_states(shards, names);
        ASSERT_EQ(merged.size(), full.size());
        for (const auto& [k, v] : full) {
            ASSERT_TRUE(merged.count(k)) << k;
            EXPECT_TRUE(torch::equal(merged.at(k), v)) << k;
        }
    }
}

// Sharding as accelerate's BatchSamplerShard without padding: step k of W ranks covers the same
// samples as batch k of one process with batch W x B; each sample once per epoch.
TEST(Dist, LoaderShardsEachStepsSamplesWithoutRepeats) {
    TempDir dir;
    const auto data = testing::make_image_dataset(dir, 7);
    auto tok        = tokenizer::CLIPTokenizer::from_pretrained(fixture("tiny-sd1/tokenizer"));
    data::DatasetConfig dc;
    dc.train_data_dir        = data;
    dc.transform.resolution  = 32;
    dc.transform.center_crop = true;
    auto ds = std::make_shared<const data::CaptionDataset>(data::CaptionDataset::open(dc, tok));
    for (int world : {2, 3}) {
        data::LoaderConfig one;
        one.batch_size = 2 * world;
        one.seed       = 5;
        data::DataLoader single(ds, one);
        std::vector<std::vector<int64_t>> expected;
        for (auto b = single.next(); b; b = single.next()) expected.push_back(b->indices);
        std::vector<std::vector<int64_t>> got(expected.size());
        std::multiset<int64_t> seen;
        for (int r = 0; r < world; ++r) {
            data::LoaderConfig lc = one;
            lc.batch_size         = 2;
            lc.rank               = r;
            lc.world_size         = world;
            data::DataLoader loader(ds, lc);
            ASSERT_EQ(loader.batches_per_epoch(), int64_t(expected.size()));
            size_t k = 0;
            for (auto b = loader.next(); b; b = loader.next(), ++k) {
                EXPECT_EQ(b->global_offset, 2 * r);
                EXPECT_EQ(b->global_size, int64_t(expected[k].size()));
                got[k].insert(got[k].end(), b->indices.begin(), b->indices.end());
                seen.insert(b->indices.begin(), b->indices.end());
                if (b->size() > 0) {
                    // The same pixels as the single process's rows (same per-sample randomness).
                    EXPECT_EQ(b->pixel_values.size(0), b->size());
                }
            }
            EXPECT_EQ(k, expected.size());
        }
        EXPECT_EQ(got, expected) << "world " << world;
        EXPECT_EQ(seen, (std::multiset<int64_t>{0, 1, 2, 3, 4, 5, 6}));
    }
}

// The loader position of a checkpoint on another world size: the same sample, rounded down to a
// whole step (samples seen = batch x world x batch size).
TEST(Dist, LoaderPositionConvertsThroughSamplesSeen) {
    using training::convert_loader_batch;
    // (batch, saved world, saved batch size) -> (world, batch size), dataset 16, bpe as given.
    EXPECT_EQ(convert_loader_batch(3, 2, 2, 2, 2, 16, 4), 3);  // same world: unchanged
    EXPECT_EQ(convert_loader_batch(1, 2, 2, 1, 4, 16, 4), 1);  // 4 seen -> step 1 of batch 4
    EXPECT_EQ(convert_loader_batch(3, 1, 4, 2, 2, 16, 4), 3);  // 12 seen -> step 3 of 2 x 2
    EXPECT_EQ(convert_loader_batch(3, 1, 2, 2, 2, 16, 4), 1);  // 6 seen -> 4 (2 seen again)
    EXPECT_EQ(convert_loader_batch(2, 2, 2, 1, 4, 7, 2), 2);   // a complete epoch stays complete
    EXPECT_EQ(convert_loader_batch(1, 3, 2, 1, 4, 7, 2), 1);   // 6 of 7 seen -> step 1 (4)
}

// ---- end to end: real processes ----

std::vector<std::string> train_args(const std::string& data, const std::string& out, int batch,
                                    int steps) {
    return {"--pretrained_model_name_or_path", fixture("tiny-sd1"), "--train_data_dir", data,
            "--output_dir", out, "--resolution", "32", "--center_crop", "--random_flip",
            "--train_batch_size", std::to_string(batch), "--max_train_steps", std::to_string(steps),
            "--learning_rate", "1e-3", "--lr_scheduler", "cosine", "--lr_warmup_steps", "1",
            "--seed", "7", "--num_threads", "1", "--report_to", "jsonl", "--checkpointing_steps",
            "1000", "--ddp_timeout", "60",
            // Adam turns gradients that are zero up to rounding (biases in front of a
            // GroupNorm) into full +-lr steps of random sign; a larger epsilon keeps such
            // rounding noise at rounding size, so the comparison is at fp32 tolerance.
            "--adam_epsilon", "1e-3"};
}

testing::RunResult train(int nproc, std::vector<std::string> args,
                         const std::string& command = "train") {
    std::vector<std::string> cmd = {command};
    if (nproc > 1)
        cmd = {"launch",        "--nproc_per_node",          std::to_string(nproc),
               "--master_port", std::to_string(free_port()), "--",
               command};
    cmd.insert(cmd.end(), args.begin(), args.end());
    return run_t2i(cmd);
}

// Two "machines" on loopback: two launchers with --nnodes 2, one process each.
testing::RunResult train_two_nodes(const std::vector<std::string>& args) {
    const std::string port = std::to_string(free_port());
    auto node              = [&](int r) {
        std::vector<std::string> cmd = {"launch",
                                        "--nproc_per_node",
                                        "1",
                                        "--nnodes",
                                        "2",
                                        "--node_rank",
                                        std::to_string(r),
                                        "--master_addr",
                                        "127.0.0.1",
                                        "--master_port",
                                        port,
                                        "--",
                                        "train"};
        cmd.insert(cmd.end(), args.begin(), args.end());
        return cmd;
    };
    testing::RunResult second{};
    std::thread other([&] { second = run_t2i(node(1)); });
    auto first = run_t2i(node(0));
    other.join();
    if (second.code != 0) return second;
    return first;
}

io::TensorMap unet_weights(const std::string& dir) {
    return io::load_safetensors(dir + "/unet/diffusion_pytorch_model.safetensors");
}

// One metric per logged step (rank 0's metrics.jsonl).
std::vector<double> logged(const std::string& out, const char* key = "train_loss") {
    std::vector<double> values;
    std::ifstream in(out + "/logs/metrics.jsonl");
    for (std::string line; std::getline(in, line);)
        values.push_back(nlohmann::json::parse(line)[key].get<double>());
    return values;
}

std::vector<double> logged_losses(const std::string& out) { return logged(out); }

// Same weights to fp32 accumulation-order tolerance, and training really moved them.
void expect_same_training(const std::string& a, const std::string& b, const std::string& what) {
    const auto wa = unet_weights(a), wb = unet_weights(b);
    const auto base =
        io::load_safetensors(fixture("tiny-sd1/unet/diffusion_pytorch_model.safetensors"));
    ASSERT_EQ(wa.size(), wb.size());
    double moved = 0;
    for (const auto& [k, v] : wa) {
        EXPECT_TRUE(testing::allclose(wb.at(k), v, 2e-6, 1e-5)) << what << ": " << k;
        moved = std::max(moved, (v - base.at(k)).abs().max().item<double>());
    }
    EXPECT_GT(moved, 1e-3) << what << ": the weights did not change";
    const auto la = logged_losses(a), lb = logged_losses(b);
    ASSERT_EQ(la.size(), lb.size()) << what;
    for (size_t i = 0; i < la.size(); ++i) EXPECT_NEAR(la[i], lb[i], 1e-5 * la[i]) << what;
}

struct Variant {
    const char* name;
    std::vector<std::string> extra;
    int steps;
    bool two_nodes = false;
};

TEST(DataParallel, TwoRanksTrainLikeOneRankWithTheirCombinedBatch) {
    TempDir dir;
    const auto data                     = testing::make_image_dataset(dir, 8);
    const std::vector<Variant> variants = {
        // 5 samples, 4 per step: every other step rank 1 has no sample and rank 0 one.
        {"uneven epoch ends, small buckets, gradient checkpointing, EMA",
         {"--max_train_samples", "5", "--ddp_bucket_cap_mb", "0.05", "--gradient_checkpointing",
          "--use_ema"},
         4},
        // --scale_lr: 1e-3 x 2 x 4 x 1 process = 1e-3 x 2 x 2 x 2 processes.
        {"gradient accumulation, ZeRO-1, --scale_lr",
         {"--gradient_accumulation_steps", "2", "--zero_stage", "1", "--snr_gamma", "5",
          "--scale_lr"},
         3},
        {"two machines (two launchers, --nnodes 2)", {}, 3, true},
        // Rank 0 encodes (and writes) the caches, rank 1 receives them.
        {"cached latents (on disk) and text encoder outputs",
         {"--cache_latents_to_disk", "--cache_text_encoder_outputs"},
         3},
    };
    for (const auto& v : variants) {
        const std::string one = dir.file("one"), two = dir.file("two");
        fs::remove_all(one);
        fs::remove_all(two);
        auto a1 = train_args(data, one, 4, v.steps);
        auto a2 = train_args(data, two, 2, v.steps);
        a1.insert(a1.end(), v.extra.begin(), v.extra.end());
        a2.insert(a2.end(), v.extra.begin(), v.extra.end());
        const auto r1 = train(1, a1);
        ASSERT_EQ(r1.code, 0) << r1.out;
        const auto r2 = v.two_nodes ? train_two_nodes(a2) : train(2, a2);
        ASSERT_EQ(r2.code, 0) << r2.out;
        EXPECT_NE(r2.out.find("x 2 process(es)"), std::string::npos) << r2.out;
        expect_same_training(one, two, v.name);
    }
}

// train-lora over two processes (ZeRO-1, gradient checkpointing): the same LoRA as one process
// with the combined batch, and the frozen UNet is not written.
TEST(DataParallel, TwoRanksTrainALoraLikeOneRank) {
    TempDir dir;
    const auto data       = testing::make_image_dataset(dir, 8);
    const std::string one = dir.file("one"), two = dir.file("two");
    const std::vector<std::string> extra{"--rank", "2", "--zero_stage", "1",
                                         "--gradient_checkpointing"};
    auto a1 = train_args(data, one, 4, 3), a2 = train_args(data, two, 2, 3);
    a1.insert(a1.end(), extra.begin(), extra.end());
    a2.insert(a2.end(), extra.begin(), extra.end());
    const auto r1 = train(1, a1, "train-lora");
    ASSERT_EQ(r1.code, 0) << r1.out;
    const auto r2 = train(2, a2, "train-lora");
    ASSERT_EQ(r2.code, 0) << r2.out;
    EXPECT_NE(r2.out.find("x 2 process(es)"), std::string::npos) << r2.out;
    const auto wa = io::load_safetensors(one + "/pytorch_lora_weights.safetensors");
    const auto wb = io::load_safetensors(two + "/pytorch_lora_weights.safetensors");
    ASSERT_EQ(wa.size(), wb.size());
    double moved = 0;
    for (const auto& [k, v] : wa) {
        EXPECT_TRUE(testing::allclose(wb.at(k), v, 2e-6, 1e-5)) << k;
        if (k.find("lora_B") != std::string::npos)
            moved = std::max(moved, v.abs().max().item<double>());
    }
    EXPECT_GT(moved, 1e-4) << "the LoRA did not train";
    EXPECT_FALSE(io::dir_exists(two + "/unet"));
}

TEST(DataParallel, CheckpointsResumeOnAnotherNumberOfProcesses) {
    TempDir dir;
    const auto data            = testing::make_image_dataset(dir, 8);
    const std::string straight = dir.file("straight");
    const auto r0              = train(1, train_args(data, straight, 4, 4));
    ASSERT_EQ(r0.code, 0) << r0.out;
    const int64_t num_params = int64_t(unet_weights(straight).size());
    // 2 ZeRO-1 ranks stop mid-epoch after step 1, one process finishes; and the reverse.
    for (int first : {2, 1}) {
        const std::string out = dir.file("run" + std::to_string(first));
        auto args             = train_args(data, out, first == 2 ? 2 : 4, 4);
        args.insert(args.end(), {"--zero_stage", "1", "--stop_after_steps", "1"});
        const auto r1 = train(first, args);
        ASSERT_EQ(r1.code, 130) << r1.out;
        const auto state = io::load_safetensors(out + "/checkpoint-1/optimizer.safetensors");
        int64_t moments  = 0;
        for (const auto& [k, t] : state) moments += k.rfind("exp_avg_sq.", 0) == 0;
        EXPECT_EQ(moments, num_params) << "the checkpoint lacks some ranks' optimizer state";
        if (first == 2) {  // ZeRO-1 halves the optimizer state of a rank
            const double share = logged(out, "optimizer_state_mb").at(0) /
                                 logged(straight, "optimizer_state_mb").at(0);
            EXPECT_GT(share, 0.4);
            EXPECT_LT(share, 0.6);
        }
        const int second = 3 - first;
        auto resume      = train_args(data, out, second == 2 ? 2 : 4, 4);
        resume.insert(resume.end(), {"--zero_stage", "1", "--resume_from_checkpoint", "latest"});
        const auto r2 = train(second, resume);
        ASSERT_EQ(r2.code, 0) << r2.out;
        EXPECT_NE(r2.out.find("resumed from"), std::string::npos) << r2.out;
        const auto wa = unet_weights(straight), wb = unet_weights(out);
        for (const auto& [k, v] : wa)
            EXPECT_TRUE(testing::allclose(wb.at(k), v, 2e-6, 1e-5))
                << first << "->" << second << " processes: " << k;
    }
}

// Starts rank `rank` of `world` as its own process (the environment torchrun sets), output to
// `log`.
pid_t start_rank(int rank, int world, int port, const std::vector<std::string>& args,
                 const std::string& log) {
    const pid_t pid = ::fork();
    if (pid != 0) return pid;
    ::setenv("RANK", std::to_string(rank).c_str(), 1);
    ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
    ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
    ::setenv("LOCAL_WORLD_SIZE", std::to_string(world).c_str(), 1);
    ::setenv("MASTER_ADDR", "127.0.0.1", 1);
    ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
    std::FILE* f = std::freopen(log.c_str(), "w", stderr);
    (void)f;
    std::vector<std::string> all = {T2I_BINARY, "train"};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(T2I_BINARY, argv.data());
    ::_exit(127);
}

// Waits up to `seconds` for pid; returns its status, or -1 if it is still running.
int wait_for(pid_t pid, double seconds) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < until) {
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == pid) return status;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(DataParallel, ARankThatDiesOrHangsEndsTheRunNamingIt) {
    TempDir dir;
    const auto data = testing::make_image_dataset(dir, 8);
    struct Case {
        const char* name;
        int world;
        int victim;  // the rank that dies or hangs
        int signal;  // SIGKILL: dies; SIGSTOP: hangs (no heartbeats, no collectives)
        const char* expected;
    };
    for (const Case& k :
         {Case{"rank 1 killed", 2, 1, SIGKILL, "rank 1 stopped sending heartbeats"},
          Case{"rank 1 hangs", 2, 1, SIGSTOP, "rank 1 stopped sending heartbeats"},
          Case{"rank 0 killed", 2, 0, SIGKILL, "rank 0"},
          // Every survivor names the right rank, also those that notice after another did.
          Case{"rank 2 of 3 killed", 3, 2, SIGKILL, "rank 2 stopped sending heartbeats"}}) {
        const std::string out = dir.file("out");
        fs::remove_all(out);
        auto args = train_args(data, out, 2, 100000);
        // A hung peer is detected after --ddp_timeout.
        args.insert(args.end(), {"--ddp_timeout", "4"});
        const int port = free_port();
        std::vector<pid_t> pids;
        for (int r = 0; r < k.world; ++r)
            pids.push_back(
                start_rank(r, k.world, port, args, dir.file("rank" + std::to_string(r) + ".log")));
        // Wait until training runs (rank 0 logged two steps).
        for (int i = 0; i < 1200 && logged_losses(out).size() < 2; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        ASSERT_GE(logged_losses(out).size(), 2u) << read_file(dir.file("rank0.log"));
        ::kill(pids[size_t(k.victim)], k.signal);
        // Bounded: every survivor must stop well within --ddp_timeout plus the diagnosis.
        for (int r = 0; r < k.world; ++r) {
            if (r == k.victim) continue;
            const int status = wait_for(pids[size_t(r)], 30);
            const auto log   = read_file(dir.file("rank" + std::to_string(r) + ".log"));
            if (status == -1) {
                ::kill(pids[size_t(r)], SIGKILL);
                ::waitpid(pids[size_t(r)], nullptr, 0);
                ADD_FAILURE() << k.name << ": rank " << r << " did not stop within 30 s";
                continue;
            }
            EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0)
                << k.name << ", rank " << r << ": "
                << (WIFSIGNALED(status) ? std::string("killed by ") + strsignal(WTERMSIG(status))
                                        : "exit code " + std::to_string(WEXITSTATUS(status)));
            EXPECT_NE(log.find(k.expected), std::string::npos) << k.name << ", rank " << r << ":\n"
                                                               << log;
            EXPECT_NE(log.find("--resume_from_checkpoint latest"), std::string::npos) << log;
        }
        ::kill(pids[size_t(k.victim)], SIGKILL);
        ::waitpid(pids[size_t(k.victim)], nullptr, 0);
    }
}

// Ctrl-C / SIGTERM to the launcher reaches every rank once; they agree on one step, rank 0
// writes its checkpoint, all exit 130, and the run resumes from it.
TEST(Launch, ForwardsSigtermAndEveryRankStopsAtTheSameStepWithACheckpoint) {
    TempDir dir;
    const auto data              = testing::make_image_dataset(dir, 8);
    const std::string out        = dir.file("out");
    std::vector<std::string> all = {T2I_BINARY, "launch",        "--nproc_per_node",
                                    "2",        "--master_port", std::to_string(free_port()),
                                    "--",       "train"};
    const auto args              = train_args(data, out, 2, 100000);
    all.insert(all.end(), args.begin(), args.end());
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        std::FILE* f = std::freopen(dir.file("launch.log").c_str(), "w", stderr);
        (void)f;
        std::vector<char*> argv;
        for (auto& a : all) argv.push_back(a.data());
        argv.push_back(nullptr);
        ::execv(T2I_BINARY, argv.data());
        ::_exit(127);
    }
    for (int i = 0; i < 1200 && logged_losses(out).size() < 2; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ::kill(pid, SIGTERM);
    const int status = wait_for(pid, 60);
    if (status == -1) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
    }
    const auto log = read_file(dir.file("launch.log"));
    ASSERT_NE(status, -1) << "the launcher did not stop within 60 s:\n" << log;
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 130) << log;
    const auto checkpoints = training::list_checkpoints(out);
    ASSERT_EQ(checkpoints.size(), 1u) << log;
    const int64_t step = checkpoints[0].first;
    EXPECT_EQ(int64_t(logged_losses(out).size()), step) << "rank 0 logged other steps";
    for (const char* rank : {"rank 0] ", "rank 1] "})
        EXPECT_NE(log.find(rank + std::string("stopped at step ") + std::to_string(step)),
                  std::string::npos)
            << log;
    EXPECT_EQ(log.find("error"), std::string::npos) << log;
}

TEST(Launch, SetsTorchrunsEnvironmentAndStopsEveryWorkerWhenOneFails) {
    const std::string port = std::to_string(free_port());
    auto r = run_t2i({"launch", "--nproc_per_node", "2", "--master_port", port, "--", "sh", "-c",
                      "echo rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK/$LOCAL_WORLD_SIZE "
                      "at=$MASTER_ADDR:$MASTER_PORT"});
    ASSERT_EQ(r.code, 0) << r.out;
    for (const char* line : {"rank=0 world=2 local=0/2 at=127.0.0.1:", "rank=1 world=2 local=1/2"})
        EXPECT_NE(r.out.find(line), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("at=127.0.0.1:" + port), std::string::npos) << r.out;
    // Rank 1 fails at once; rank 0 would sleep for 120 s unless the launcher stops it.
    const auto t0 = std::chrono::steady_clock::now();
    r = run_t2i({"launch", "--nproc_per_node", "2", "--nnodes", "2", "--node_rank", "1", "--", "sh",
                 "-c", "if [ $RANK = 3 ]; then exit 3; fi; exec sleep 120"});
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(r.code, 3) << r.out;
    EXPECT_NE(r.out.find("rank 3 (pid"), std::string::npos) << r.out;
    EXPECT_LT(seconds, 60) << "the launcher did not stop the other worker";
    r = run_t2i({"launch", "--nproc_per_node", "2", "--node_rank", "1", "--", "true"});
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_NE(r.out.find("--node_rank"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace t2i
