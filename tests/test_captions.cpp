// Tests: kohya's caption options (data/caption_dataset.h): the tag shuffle keeps --keep_tokens
// and permutes the rest uniformly, --caption_dropout_rate empties captions with its
// probability, <N>_<name>/ repeat folders repeat images and name them; and the flag checks.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "data/caption_dataset.h"
#include "io/image_io.h"
#include "test_util.h"
#include "training/train_config.h"

namespace t2i {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

std::vector<std::string> split_tags(const std::string& s) {
    std::vector<std::string> out;
    size_t start = 0;
    while (true) {
        const auto c = s.find(", ", start);
        out.push_back(s.substr(start, c == std::string::npos ? std::string::npos : c - start));
        if (c == std::string::npos) return out;
        start = c + 2;
    }
}

TEST(Captions, ShuffleKeepsTheFirstTagsAndPermutesTheRestUniformly) {
    data::Rng rng(1);
    const std::string caption = "sks dog,  red collar ,grass,sunny, photo";
    std::map<std::string, int> first_flexible;
    const int n = 8000;
    for (int i = 0; i < n; ++i) {
        const auto tags = split_tags(data::shuffle_caption_tags(caption, 1, rng));
        ASSERT_EQ(tags.size(), 5u);
        EXPECT_EQ(tags[0], "sks dog");  // --keep_tokens 1
        auto sorted = tags;
        std::sort(sorted.begin(), sorted.end());
        EXPECT_EQ(sorted, (std::vector<std::string>{"grass", "photo", "red collar", "sks dog",
                                                    "sunny"}));  // stripped, none lost
        ++first_flexible[tags[1]];
    }
    // Each of the 4 flexible tags comes first with probability 1/4: within 5 sigma.
    ASSERT_EQ(first_flexible.size(), 4u);
    const double sigma = std::sqrt(n * 0.25 * 0.75);
    for (const auto& [tag, count] : first_flexible) EXPECT_NEAR(count, n / 4.0, 5 * sigma) << tag;
    // keep_tokens beyond the tag count and a caption without commas stay as they are.
    EXPECT_EQ(data::shuffle_caption_tags("a, b", 5, rng), "a, b");
    EXPECT_EQ(data::shuffle_caption_tags("one tag", 0, rng), "one tag");
}

TEST(Captions, RepeatFolderNamesParseAsKohyas) {
    EXPECT_EQ(data::parse_repeat_folder("10_sks dog"),
              std::make_pair(int64_t(10), std::string("sks dog")));
    EXPECT_EQ(data::parse_repeat_folder("1_x_y"), std::make_pair(int64_t(1), std::string("x_y")));
    EXPECT_EQ(data::parse_repeat_folder("0_none").first, 0);
    EXPECT_EQ(data::parse_repeat_folder("dog_10").first, 0);
    EXPECT_EQ(data::parse_repeat_folder("10_").first, 0);
    EXPECT_EQ(data::parse_repeat_folder("images").first, 0);
}

// A kohya DreamBooth folder: 3_sks dog/ (two images, one with a caption file), 1_cat/ (one).
std::string kohya_folder(const TempDir& dir) {
    const std::string root = dir.file("train");
    fs::create_directories(root + "/3_sks dog");
    fs::create_directories(root + "/1_cat");
    const auto img = testing::random_image(40, 48, 1);
    io::write_png(root + "/3_sks dog/a.png", img);
    io::write_png(root + "/3_sks dog/b.png", img);
    testing::write_bytes(root + "/3_sks dog/b.txt", "sks dog on grass\n");
    io::write_png(root + "/1_cat/c.png", img);
    return root;
}

TEST(Captions, RepeatFoldersRepeatImagesAndNameThoseWithoutCaptions) {
    TempDir dir;
    data::DatasetConfig cfg;
    cfg.train_data_dir = kohya_folder(dir);
    const auto index   = data::index_dataset(cfg);
    EXPECT_EQ(index.layout, "captions");
    std::map<std::string, int> count;
    std::map<std::string, std::string> caption;
    for (const auto& r : index.records) {
        const auto name = fs::path(r.image_path).filename().string();
        ++count[name];
        caption[name] = r.captions.at(0);
    }
    EXPECT_EQ(index.records.size(), 7u);
    EXPECT_EQ(count["a.png"], 3);
    EXPECT_EQ(count["b.png"], 3);
    EXPECT_EQ(count["c.png"], 1);
    EXPECT_EQ(caption["a.png"], "sks dog");  // the folder's name
    EXPECT_EQ(caption["b.png"], "sks dog on grass");
    EXPECT_EQ(caption["c.png"], "cat");
}

TEST(Captions, DropoutEmptiesCaptionsWithItsProbability) {
    TempDir dir;
    data::DatasetConfig cfg;
    cfg.train_data_dir        = kohya_folder(dir);
    cfg.transform.resolution  = 32;
    cfg.transform.center_crop = true;
    cfg.captions.dropout_rate = 0.3;
    const auto ds             = data::CaptionDataset::open(cfg, testing::tiny_tokenizer());
    const auto empty_ids      = ds.input_ids("");
    data::Rng rng(5);
    const int n = 4000;
    int dropped = 0;
    for (int i = 0; i < n; ++i) {
        const auto ex = ds.draw(i % ds.size(), rng);
        if (ex.caption.empty()) {
            ++dropped;
            EXPECT_TRUE(torch::equal(ex.input_ids, empty_ids));
        }
    }
    const double sigma = std::sqrt(n * 0.3 * 0.7);
    EXPECT_NEAR(dropped, 0.3 * n, 5 * sigma);
    // Rate 0 draws nothing extra: the same draws as before the option existed.
    cfg.captions.dropout_rate = 0;
    const auto plain          = data::CaptionDataset::open(cfg, testing::tiny_tokenizer());
    data::Rng a(9), b(9);
    for (int i = 0; i < 20; ++i) plain.draw(i % plain.size(), a);
    for (int i = 0; i < 20; ++i) data::draw_flip(cfg.transform, b);  // draw() without options
    EXPECT_EQ(a(), b());
}

TEST(Captions, FlagsAreCheckedAndTheSdxlNameIsAccepted) {
    training::TrainConfig c;
    c.pretrained_model_name_or_path = "m";
    c.train_data_dir                = "d";
    c.caption_dropout_rate          = 1.5;
    testing::expect_error<training::FlagError>([&] { c.validate(); }, {"--caption_dropout_rate"});
    c.caption_dropout_rate     = 0.1;
    c.proportion_empty_prompts = 0.1;
    testing::expect_error<training::FlagError>([&] { c.validate(); },
                                               {"--proportion_empty_prompts", "one of them"});
    c.caption_dropout_rate       = 0;
    c.cache_text_encoder_outputs = true;
    testing::expect_error<training::FlagError>([&] { c.validate(); },
                                               {"--cache_text_encoder_outputs", "caption"});
    c.cache_text_encoder_outputs = false;
    c.tracker_project_name       = "../x";
    testing::expect_error<training::FlagError>([&] { c.validate(); }, {"--tracker_project_name"});
}

}  // namespace
}  // namespace t2i
