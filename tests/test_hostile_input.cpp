// Tests: bad and hostile input gets a clear error before any work (issue 10): text files in
// other encodings, unbounded reads, image headers that lie, configs that would divide by zero
// or allocate without bound, components that do not fit, non-finite and overflowing flags,
// dataset paths that leave the dataset folder, an all-bad dataset, a worker thread that cannot
// start. Each test asserts the message (file, key or flag; what was expected) or the behaviour.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <cstddef>
#include <filesystem>
#include <fstream>

#include "data/caption_dataset.h"
#include "data/loader.h"
#include "io/file_util.h"
#include "io/image_io.h"
#include "io/json_config.h"
#include "io/text.h"
#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"
#include "pipeline/model_dir.h"
#include "schedulers/ddpm.h"
#include "schedulers/scheduler.h"
#include "test_util.h"
#include "training/train_config.h"

namespace t2i {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::expect_error;
using testing::fixture;
using testing::run_t2i;
using testing::TempDir;
using testing::write_bytes;

// ---- text encodings and bounded reads -------------------------------------------------------

TEST(Text, Utf16WithByteOrderMarkIsConvertedOtherEncodingsAreNamed) {
    // "a é 😀" in UTF-16 LE and BE with their marks (the emoji is a surrogate pair).
    const std::string le(
        "\xFF\xFE"
        "a\0 \0\xE9\0 \0\x3D\xD8\x00\xDE",
        14);
    const std::string be(
        "\xFE\xFF"
        "\0a\0 \0\xE9\0 \xD8\x3D\xDE\x00",
        14);
    const std::string utf8 = "a \xC3\xA9 \xF0\x9F\x98\x80";
    EXPECT_EQ(io::decode_text(le, "le.txt"), utf8);
    EXPECT_EQ(io::decode_text(be, "be.txt"), utf8);
    EXPECT_EQ(io::decode_text("\xEF\xBB\xBF"
                              "abc",
                              "bom.txt"),
              "abc");
    expect_error([] { io::decode_text("caf\xE9", "latin1.txt"); },
                 {"'latin1.txt'", "not valid UTF-8", "0xE9", "offset 3"});
    expect_error([] { io::decode_text(std::string("a\0b\0", 4), "nomark.txt"); },
                 {"'nomark.txt'", "NUL byte", "UTF-16 without a byte-order mark"});
    expect_error([] { io::decode_text("\xFF\xFE\x3D\xD8", "half.txt"); }, {"surrogate"});
    size_t bad = 0;
    EXPECT_FALSE(io::is_valid_utf8("\xC0\xAF", &bad));  // overlong '/'
    EXPECT_FALSE(io::is_valid_utf8("\xED\xA0\x80"));    // a surrogate encoded in UTF-8
    EXPECT_TRUE(io::is_valid_utf8(utf8));
}

TEST(Files, ReadsAreBoundedAndOnlyOfRegularFiles) {
    TempDir dir;
    write_bytes(dir.file("big.json"), std::string(2000, ' ') + "{}");
    expect_error([&] { io::read_text_file(dir.file("big.json"), 1000); },
                 {dir.file("big.json"), "2002 bytes", "more than the 1000 bytes"});
    ASSERT_EQ(::mkfifo(dir.file("fifo").c_str(), 0644), 0);
    // A FIFO without a writer would block a plain read forever.
    expect_error([&] { io::read_text_file(dir.file("fifo")); }, {"not a regular file"});
    expect_error([&] { io::read_json(dir.path()); }, {"not a regular file"});
    expect_error([&] { io::MappedFile m(dir.file("fifo")); }, {"not a regular file"});
}

TEST(JsonConfig, ATopLevelThatIsNotAnObjectIsAnErrorNamingTheFile) {
    TempDir dir;
    for (const auto& [text, kind] : std::vector<std::pair<std::string, std::string>>{
             {"[1, 2]", "an array"}, {"\"unet\"", "a string"}, {"7", "a number"}}) {
        write_bytes(dir.file("config.json"), text);
        expect_error([&] { io::read_json(dir.file("config.json")); },
                     {dir.file("config.json"), "expected a JSON object", kind});
    }
    const io::JsonConfig c(json{{"k", 3}}, "cfg.json");
    expect_error([&] { c.check_range("k", 3, 4, 9, "why"); },
                 {"cfg.json", "'k' must be in [4, 9] (why), got 3"});
    expect_error([&] { c.check_range("k", std::nan(""), 0, 1); }, {"got nan"});
}

TEST(JsonConfig, DumpReplacesInvalidUtf8InsteadOfThrowing) {
    const json j{{"prompt", std::string("caf\xE9")}};
    EXPECT_THROW(j.dump(), json::type_error);  // nlohmann's own dump: type_error 316
    EXPECT_EQ(io::dump_json(j), "{\"prompt\":\"caf\xEF\xBF\xBD\"}");
}

// ---- images: headers checked before decoding, a pixel budget --------------------------------

// A valid 1x1 PNG whose IHDR then declares `w` x `h` (CRC fixed), i.e. a tiny file that claims
// to be huge.
std::string png_declaring(uint32_t w, uint32_t h) {
    std::string png = io::encode_png(torch::zeros({1, 1, 3}, torch::kUInt8));
    auto put        = [&](size_t at, uint32_t v) {
        for (int i = 0; i < 4; ++i) png[at + i] = static_cast<char>((v >> (24 - 8 * i)) & 0xFF);
    };
    put(16, w);
    put(20, h);
    put(29, static_cast<uint32_t>(
                crc32(0, reinterpret_cast<const Bytef*>(png.data() + 12), 17)));  // type + data
    return png;
}

double max_rss_mb() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_maxrss) / 1024.0;
}

TEST(ImageIo, AHeaderThatDeclaresMorePixelsThanTheFileHoldsFailsBeforeAllocating) {
    TempDir dir;
    write_bytes(dir.file("wide.png"), png_declaring(1000000, 1));
    write_bytes(dir.file("tall.png"), png_declaring(1, 900000));  // libpng's limit is 10^6
    const double before = max_rss_mb();
    for (const char* name : {"wide.png", "tall.png"})
        expect_error([&] { io::decode_image(dir.file(name)); },
                     {dir.file(name), "declares more pixels than the file can hold"});
    write_bytes(dir.file("bomb.png"), png_declaring(20000, 20000));  // 400 M > PIL's limit
    expect_error([&] { io::decode_image(dir.file("bomb.png")); },
                 {dir.file("bomb.png"), "decompression-bomb limit"});
    EXPECT_LT(max_rss_mb() - before, 200.0);
}

TEST(ImageIo, AHugeFileIsNotReadWholeBeforeItsHeaderIsChecked) {
    TempDir dir;
    const std::string path = dir.file("huge.png");
    write_bytes(path, "\x89PNG\r\n\x1a\n");
    ASSERT_EQ(::truncate(path.c_str(), 4ll << 30), 0);  // 4 GB, sparse
    const double before = max_rss_mb();
    expect_error([&] { io::decode_image(path); }, {path, "PNG"});
    write_bytes(dir.file("zeros.jpg"), "");
    ASSERT_EQ(::truncate(dir.file("zeros.jpg").c_str(), 4ll << 30), 0);
    expect_error([&] { io::decode_image(dir.file("zeros.jpg")); }, {"unknown format"});
    EXPECT_LT(max_rss_mb() - before, 500.0);  // reading the file would take 4 GB
}

using testing::tiny_tokenizer;

data::DatasetConfig dataset_config(const std::string& dir) {
    data::DatasetConfig cfg;
    cfg.train_data_dir       = dir;
    cfg.transform.resolution = 16;
    return cfg;
}

TEST(CaptionDataset, AnExtremeAspectRatioIsABadSampleNamingTheFileNotAnAllocation) {
    TempDir dir;
    io::write_png(dir.file("line.png"), torch::zeros({1, 100000, 3}, torch::kUInt8));
    std::ofstream(dir.file("metadata.jsonl")) << R"({"file_name": "line.png", "text": "x"})"
                                              << "\n";
    const auto ds = data::CaptionDataset::open(dataset_config(dir.path()), tiny_tokenizer());
    data::Rng rng(0);
    // Its shorter side (1) to 16 makes it 1,600,000 x 16 = 26 M pixels: within the budget.
    EXPECT_EQ(ds.get(0, rng).pixel_values.sizes(), (std::vector<int64_t>{3, 16, 16}));
    auto cfg                 = dataset_config(dir.path());
    cfg.transform.resolution = 512;  // 51,200,000 x 512: far beyond it
    const auto big           = data::CaptionDataset::open(cfg, tiny_tokenizer());
    expect_error<data::BadSampleError>([&] { big.get(0, rng); },
                                       {dir.file("line.png"), "100000 x 1", "pixel budget"});
}

// ---- model configs: the architecture's real constraints, before allocation ------------------

json unet_json() { return io::read_json(fixture("tiny-sd1/unet/config.json")).json(); }

void expect_unet_config_error(const std::function<void(json&)>& change,
                              const std::vector<std::string>& parts) {
    json j = unet_json();
    change(j);
    expect_error([&] { models::UNet2DConditionConfig::from_json({j, "unet/config.json"}); }, parts);
}

TEST(ModelConfig, UNetValuesThatCannotBuildARunnableModelAreNamed) {
    expect_unet_config_error([](json& j) { j["attention_head_dim"] = 0; },
                             {"unet/config.json", "'attention_head_dim", "got 0"});
    expect_unet_config_error(
        [](json& j) {
            j.erase("attention_head_dim");
            j["num_attention_heads"] = 0;
        },
        {"'num_attention_heads", "got 0"});
    expect_unet_config_error([](json& j) { j["attention_head_dim"] = 5; },
                             {"'attention_head_dim'", "5 heads", "does not divide"});
    expect_unet_config_error([](json& j) { j["norm_num_groups"] = 7; },
                             {"'block_out_channels[0]'", "not divisible by norm_num_groups = 7"});
    expect_unet_config_error([](json& j) { j["layers_per_block"] = 100000000; },
                             {"'layers_per_block", "[1, 64]", "got 100000000"});
    expect_unet_config_error([](json& j) { j["norm_eps"] = -1e-5; }, {"'norm_eps'", "got -1e-05"});
    expect_unet_config_error([](json& j) { j["block_out_channels"] = json::array(); },
                             {"same length"});
    expect_unet_config_error([](json& j) { j["conv_in_kernel"] = 4; }, {"'conv_in_kernel'", "odd"});
    expect_unet_config_error([](json& j) { j["in_channels"] = -8; }, {"'in_channels'", "got -8"});
    // Within every per-key bound, but about 10^11 parameters in all.
    expect_unet_config_error(
        [](json& j) {
            j["block_out_channels"] = {16384, 16384};
            j["layers_per_block"]   = 64;
        },
        {"unet/config.json", "parameters", "more than this machine's"});
}

TEST(ModelConfig, VaeClipAndSchedulerValuesAreChecked) {
    json vae = io::read_json(fixture("tiny-sd1/vae/config.json")).json();
    for (const auto& [key, value, part] : std::vector<std::tuple<std::string, json, std::string>>{
             {"latent_channels", 0, "'latent_channels'"},
             {"scaling_factor", 0.0, "'scaling_factor'"},
             {"norm_num_groups", 0, "'norm_num_groups'"},
             {"layers_per_block", 1000, "'layers_per_block'"}}) {
        json j = vae;
        j[key] = value;
        expect_error(
            [&] {
                models::AutoencoderKLConfig::from_json({j, "vae/config.json"});
            },
            {"vae/config.json", part});
    }
    json clip = io::read_json(fixture("tiny-sd1/text_encoder/config.json")).json();
    for (const auto& [key, value, part] : std::vector<std::tuple<std::string, json, std::string>>{
             {"num_attention_heads", 3, "divisible by num_attention_heads"},
             {"vocab_size", 0, "vocab_size must be positive"},
             {"layer_norm_eps", -1.0, "'layer_norm_eps'"},
             {"max_position_embeddings", 100000000, "'max_position_embeddings'"}}) {
        json j = clip;
        j[key] = value;
        expect_error(
            [&] {
                models::CLIPTextConfig::from_json({j, "te/config.json"});
            },
            {"te/config.json", part});
    }
    json sched = io::read_json(fixture("tiny-sd1/scheduler/scheduler_config.json")).json();
    for (const auto& [key, value, part] : std::vector<std::tuple<std::string, json, std::string>>{
             {"num_train_timesteps", 0, "'num_train_timesteps'"},
             {"beta_end", 1.5, "'beta_end'"},
             {"steps_offset", 5000, "'steps_offset'"},
             {"trained_betas", json::array({0.1, 0.2}), "2 values but num_train_timesteps"}}) {
        json j = sched;
        j[key] = value;
        const io::JsonConfig cfg(j, "scheduler_config.json");
        expect_error([&] { schedulers::SchedulerConfig::from_json(cfg); }, {part});
        expect_error([&] { schedulers::make_scheduler("ddim", cfg); }, {part});
        expect_error([&] { schedulers::make_scheduler("euler", cfg); }, {part});
    }
}

// A copy of tiny-sd1 with one file changed.
std::string model_copy(const TempDir& dir, const std::string& rel,
                       const std::function<void(json&)>& change) {
    const std::string m = dir.file("model");
    fs::copy(fixture("tiny-sd1"), m, fs::copy_options::recursive);
    json j = io::read_json(m + "/" + rel).json();
    change(j);
    std::ofstream(m + "/" + rel) << j.dump();
    return m;
}

TEST(ModelDir, ModelIndexMustBeAnObjectListingEveryComponent) {
    {
        TempDir dir;
        const auto m = model_copy(dir, "model_index.json", [](json& j) { j.erase("vae"); });
        expect_error([&] { pipeline::read_pipeline_index(m); },
                     {m + "/model_index.json", "no 'vae' component"});
        const auto r = run_t2i({"generate", "--model", m, "--prompt", "x", "--output",
                                dir.file("x.png"), "--num_inference_steps", "1"});
        EXPECT_EQ(r.code, 1);
        EXPECT_NE(r.out.find("no 'vae' component"), std::string::npos) << r.out;
    }
    {
        TempDir dir;
        const auto m = model_copy(dir, "model_index.json", [](json& j) { j = {1, 2}; });
        expect_error([&] { pipeline::read_pipeline_index(m); }, {"expected a JSON object"});
    }
    {
        TempDir dir;
        const auto m = model_copy(dir, "model_index.json", [](json& j) {
            j["vae"] = {"diffusers", 5};
        });
        expect_error([&] { pipeline::read_pipeline_index(m); },
                     {"entry 'vae'", "[library, class]"});
    }
    {  // a component is a folder beside model_index.json: "../x" would be read (and, by
       // convert --config, written) outside the model folder
        TempDir dir;
        const auto m = model_copy(dir, "model_index.json", [](json& j) {
            j["../x"] = {"diffusers", "AutoencoderKL"};
        });
        expect_error([&] { pipeline::read_pipeline_index(m); }, {"\"../x\"", "not a folder name"});
    }
    {
        TempDir dir;
        const auto m = model_copy(dir, "model_index.json", [](json&) {});
        fs::remove_all(m + "/text_encoder");
        expect_error([&] { pipeline::read_pipeline_index(m); },
                     {"lists 'text_encoder'", "does not exist"});
    }
}

TEST(ModelDir, AShardIndexNeverNamesAFileOutsideItsFolder) {
    TempDir dir;
    fs::create_directories(dir.file("unet"));
    for (const std::string& shard : {"../secret.safetensors", "/etc/passwd", "sub/x.safetensors"}) {
        std::ofstream(dir.file("unet/diffusion_pytorch_model.safetensors.index.json"))
            << json{{"weight_map", {{"conv_in.weight", shard}}}}.dump();
        expect_error(
            [&] { pipeline::find_weight_files(dir.file("unet"), "diffusion_pytorch_model", ""); },
            {"weight_map entry 'conv_in.weight'", shard, "a file in the same folder"});
    }
}

TEST(ModelDir, ComponentsThatDoNotFitTogetherAreNamedBeforeAnyForwardPass) {
    const std::string m = fixture("tiny-sd1");
    const auto unet =
        models::UNet2DConditionConfig::from_json(io::read_json(m + "/unet/config.json"));
    const auto vae = models::AutoencoderKLConfig::from_json(io::read_json(m + "/vae/config.json"));
    const auto te =
        models::CLIPTextConfig::from_json(io::read_json(m + "/text_encoder/config.json"));
    const auto tok = tiny_tokenizer();
    pipeline::check_components_fit(unet, vae, te, tok, m);  // the fixture fits
    auto other_cross = unet;
    other_cross.cross_attention_dim.assign(other_cross.cross_attention_dim.size(), 64);
    expect_error([&] { pipeline::check_components_fit(other_cross, vae, te, tok, m); },
                 {m, "cross_attention_dim is 64", "hidden_size is 32"});
    auto inpainting        = unet;
    inpainting.in_channels = 9;
    expect_error([&] { pipeline::check_components_fit(inpainting, vae, te, tok, m); },
                 {"in_channels / out_channels are 9 / 4", "latent_channels is 4"});
    auto small_vocab       = te;
    small_vocab.vocab_size = 100;
    expect_error([&] { pipeline::check_components_fit(unet, vae, small_vocab, tok, m); },
                 {"token id", "vocab_size is 100"});
    auto short_positions                    = te;
    short_positions.max_position_embeddings = 10;
    expect_error([&] { pipeline::check_components_fit(unet, vae, short_positions, tok, m); },
                 {"model_max_length is 77", "max_position_embeddings is 10"});
}

TEST(Tokenizer, NegativeIdsAndMistypedFlagsAreNamed) {
    TempDir dir;
    fs::copy(fixture("tiny-sd1/tokenizer"), dir.file("tok"), fs::copy_options::recursive);
    json vocab = io::read_json(dir.file("tok/vocab.json")).json();
    vocab["!"] = -3;
    std::ofstream(dir.file("tok/vocab.json")) << vocab.dump();
    expect_error([&] { tokenizer::CLIPTokenizer::from_pretrained(dir.file("tok")); },
                 {"vocab.json", "token '!'", "-3", "[0, 2^30)"});
}

// ---- flags: finite, in range, no overflow ----------------------------------------------------

TEST(Flags, NonFiniteNumbersAreRejectedNamingTheFlagWithExitTwo) {
    for (const auto& [flag, value] :
         std::vector<std::pair<std::string, std::string>>{{"--learning_rate", "nan"},
                                                          {"--noise_offset", "inf"},
                                                          {"--input_perturbation", "-inf"},
                                                          {"--adam_beta1", "nan"},
                                                          {"--adam_weight_decay", "inf"},
                                                          {"--dream_detail_preservation", "nan"},
                                                          {"--snr_gamma", "1e999"}}) {
        const auto r = run_t2i({"train", "--pretrained_model_name_or_path", fixture("tiny-sd1"),
                                "--train_data_dir", "/nonexistent", flag, value});
        EXPECT_EQ(r.code, 2) << flag;
        EXPECT_NE(r.out.find(flag + ":"), std::string::npos) << r.out;
    }
    const auto g = run_t2i({"generate", "--model", fixture("tiny-sd1"), "--prompt", "x", "--output",
                            "/tmp/never.png", "--guidance_scale", "nan"});
    EXPECT_EQ(g.code, 2);
    EXPECT_NE(g.out.find("--guidance_scale: expected a finite number"), std::string::npos);
}

TEST(TrainConfig, EveryNumericFlagIsRangeCheckedEvenWhenCalledDirectly) {
    auto rejects = [](const std::function<void(training::TrainConfig&)>& change,
                      const std::string& flag) {
        training::TrainConfig c;
        c.pretrained_model_name_or_path = "m";
        c.train_data_dir                = "d";
        change(c);
        expect_error<std::exception>([&] { c.validate(); }, {"--" + flag});
    };
    const double nan = std::nan("");
    rejects([&](auto& c) { c.adam_beta1 = nan; }, "adam_beta1");
    rejects([&](auto& c) { c.adam_beta2 = 1.0; }, "adam_beta2");
    rejects([&](auto& c) { c.learning_rate = INFINITY; }, "learning_rate");
    rejects([&](auto& c) { c.noise_offset = nan; }, "noise_offset");
    rejects([&](auto& c) { c.dream_detail_preservation = -1; }, "dream_detail_preservation");
    rejects([&](auto& c) { c.ddp_timeout = nan; }, "ddp_timeout");
    rejects([&](auto& c) { c.num_train_epochs = int64_t(1) << 62; }, "num_train_epochs");
    rejects([&](auto& c) { c.max_train_steps = int64_t(1) << 62; }, "max_train_steps");
    rejects([&](auto& c) { c.num_threads = 1000000; }, "num_threads");
    rejects([&](auto& c) { c.dataloader_num_workers = 100000; }, "dataloader_num_workers");
    rejects([&](auto& c) { c.resolution = 1 << 20; }, "resolution");
    rejects(  // 40 TB of pixels: refused before anything is loaded, not by the OOM killer
        [&](auto& c) {
            c.train_batch_size = 60000;
            c.resolution       = 16384;
        },
        "train_batch_size");
    rejects([&](auto& c) { c.logging_dir = "../../elsewhere"; }, "logging_dir");
    rejects([&](auto& c) { c.logging_dir = "/abs"; }, "logging_dir");
    rejects([&](auto& c) { c.output_dir = ""; }, "output_dir");
}

TEST(Flags, GenerateAndLaunchRejectOutOfRangeIntegers) {
    TempDir dir;
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"--height", "-64"}, {"--width", "100000"}, {"--num_inference_steps", "0"}}) {
        std::vector<std::string> cmd = {"generate", "--model",  fixture("tiny-sd1"), "--prompt",
                                        "x",        "--output", dir.file("x.png")};
        cmd.insert(cmd.end(), args.begin(), args.end());
        const auto r = run_t2i(cmd);
        EXPECT_EQ(r.code, 2) << args[0];
        EXPECT_NE(r.out.find(args[0] + " must be in"), std::string::npos) << r.out;
    }
    EXPECT_FALSE(io::file_exists(dir.file("x.png")));
    for (const auto& args :
         std::vector<std::vector<std::string>>{{"--nproc_per_node", "2", "--nnodes", "2147483647"},
                                               {"--nproc_per_node", "65536"},
                                               {"--nproc_per_node", "99999999999"}}) {
        std::vector<std::string> cmd = {"launch"};
        cmd.insert(cmd.end(), args.begin(), args.end());
        cmd.insert(cmd.end(), {"--", "true"});
        const auto r = run_t2i(cmd);
        EXPECT_EQ(r.code, 2) << r.out;
        EXPECT_NE(r.out.find("--n"), std::string::npos) << r.out;
    }
}

// ---- data: paths stay inside the dataset, text encodings, all-bad datasets -------------------

TEST(CaptionDataset, ImagePathsThatLeaveTheDatasetFolderAreRefusedUnlessAllowed) {
    TempDir dir;
    const std::string data = dir.file("data"), outside = dir.file("secret.png");
    fs::create_directories(data + "/sub");
    io::write_png(outside, testing::random_image(8, 8, 1));
    io::write_png(data + "/ok.png", testing::random_image(8, 8, 2));
    fs::create_symlink(outside, data + "/link.png");
    fs::create_symlink("../ok.png", data + "/sub/inside.png");  // a link that stays inside: fine
    for (const std::string& name :
         {std::string("../secret.png"), outside, std::string("link.png")}) {
        std::ofstream(data + "/metadata.jsonl")
            << json{{"file_name", "sub/inside.png"}, {"text", "a"}}.dump() << "\n"
            << json{{"file_name", name}, {"text", "b"}}.dump() << "\n";
        auto cfg = dataset_config(data);
        expect_error(
            [&] { data::index_dataset(cfg); },
            {"record 1", "lies outside the dataset folder", "--allow_paths_outside_dataset"});
        cfg.allow_paths_outside_dataset = true;
        EXPECT_EQ(data::index_dataset(cfg).records.size(), 2u) << name;
    }
    // A folder link out of the dataset (here a cycle, too) is not walked.
    fs::create_directory_symlink(dir.path(), data + "/sub/up");
    auto cfg = dataset_config(data);
    expect_error([&] { data::index_dataset(cfg); },
                 {data + "/sub/up", "outside the dataset folder", "--allow_paths_outside_dataset"});
    cfg.allow_paths_outside_dataset = true;  // then followed, each folder once
    EXPECT_EQ(data::index_dataset(cfg).records.size(), 2u);
    // The Hugging Face cache keeps a snapshot's files as links into the repository's blobs/.
    const std::string repo = dir.file("hub/datasets--org--shapes"), snap = repo + "/snapshots/abc";
    fs::create_directories(repo + "/blobs");
    fs::create_directories(snap);
    io::write_png(repo + "/blobs/0a1b", testing::random_image(8, 8, 3));
    fs::create_symlink("../../blobs/0a1b", snap + "/x.png");
    std::ofstream(snap + "/metadata.jsonl") << json{{"file_name", "x.png"}, {"text", "a"}}.dump();
    EXPECT_EQ(data::index_dataset(dataset_config(snap)).records.size(), 1u);
    // A .jsonl of records: the root is the file's folder.
    std::ofstream(data + "/records.jsonl")
        << json{{"image", "../secret.png"}, {"text", "x"}}.dump();
    auto records         = dataset_config("");
    records.dataset_name = data + "/records.jsonl";
    expect_error([&] { data::index_dataset(records); }, {"lies outside the dataset folder"});
}

TEST(CaptionDataset, Utf16CaptionsAreDecodedAndOtherEncodingsNamed) {
    TempDir dir;
    io::write_png(dir.file("a.png"), testing::random_image(8, 8, 1));
    io::write_png(dir.file("b.png"), testing::random_image(8, 8, 2));
    write_bytes(dir.file("a.txt"), std::string("\xFF\xFE"
                                               "c\0a\0t\0\n\0",
                                               10));  // UTF-16 LE
    write_bytes(dir.file("b.txt"), "dog");
    const auto idx = data::index_dataset(dataset_config(dir.path()));
    ASSERT_EQ(idx.records.size(), 2u);
    EXPECT_EQ(idx.records[0].captions[0], "cat");
    write_bytes(dir.file("b.txt"), "caf\xE9 au lait");  // Latin-1
    expect_error([&] { data::index_dataset(dataset_config(dir.path())); },
                 {dir.file("b.txt"), "not valid UTF-8"});
    // A UTF-16 metadata.csv, as Excel saves "Unicode text".
    TempDir csv;
    io::write_png(csv.file("x.png"), testing::random_image(8, 8, 3));
    std::string utf16 = "\xFF\xFE";
    for (char32_t ch : std::u32string(U"file_name,text\nx.png,\u00e9t\u00e9\n")) {
        utf16.push_back(static_cast<char>(ch & 0xFF));
        utf16.push_back(static_cast<char>(ch >> 8));
    }
    write_bytes(csv.file("metadata.csv"), utf16);
    EXPECT_EQ(data::index_dataset(dataset_config(csv.path())).records[0].captions[0],
              "\xC3\xA9t\xC3\xA9");
}

TEST(DataLoader, SkippingBadSamplesOnADatasetOfOnlyBadImagesStopsWithinOneEpoch) {
    TempDir dir;
    std::ofstream meta(dir.file("metadata.jsonl"));
    for (int i = 0; i < 5; ++i) {
        write_bytes(dir.file(std::to_string(i) + ".png"), "\x89PNG\r\n\x1a\nbroken");
        meta << json{{"file_name", std::to_string(i) + ".png"}, {"text", "x"}}.dump() << "\n";
    }
    meta.close();
    auto ds = std::make_shared<const data::CaptionDataset>(
        data::CaptionDataset::open(dataset_config(dir.path()), tiny_tokenizer()));
    for (int workers : {0, 2}) {
        data::LoaderConfig cfg;
        cfg.batch_size       = 2;
        cfg.num_workers      = workers;
        cfg.skip_bad_samples = true;
        data::DataLoader loader(ds, cfg);
        int calls = 0;
        expect_error(
            [&] {
                while (calls++ < 100) loader.next();
            },
            {"every one of the 5 samples of epoch 0 was bad", "0.png"});
        EXPECT_LE(calls, 5);
    }
}

// In a child process where creating a thread fails with EAGAIN (as when a process limit is
// reached: a seccomp filter answers clone3 with ENOSYS, so glibc falls back to clone, and clone
// with CLONE_THREAD with EAGAIN), a DataLoader with workers throws a clear error; before, the
// started threads' destructors called std::terminate.
TEST(DataLoader, AWorkerThreadThatCannotStartIsAnErrorNotAnAbort) {
    TempDir dir;
    const std::string data = testing::make_image_dataset(dir, 4);
    auto ds                = std::make_shared<const data::CaptionDataset>(
        data::CaptionDataset::open(dataset_config(data), tiny_tokenizer()));
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EAGAIN),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
            ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
            ::_exit(99);
        try {
            data::LoaderConfig cfg;
            cfg.num_workers = 2;
            data::DataLoader loader(ds, cfg);
            ::_exit(2);  // the threads started after all
        } catch (const std::runtime_error& e) {
            const std::string what = e.what();
            ::_exit(what.find("cannot start data-loader worker thread 1 of 2") !=
                                std::string::npos &&
                            what.find("--dataloader_num_workers") != std::string::npos
                        ? 0
                        : 3);
        } catch (...) {
            ::_exit(4);
        }
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 99)
        GTEST_SKIP() << "seccomp filters are not available here";
    ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
    EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace t2i
