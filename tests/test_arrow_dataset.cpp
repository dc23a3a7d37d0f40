// Tests: --dataset_name on Hugging Face datasets stored as Arrow data (data/arrow_dataset.h):
// a Hub repository's Parquet shards (split "train" chosen by name) and save_to_disk folders
// (state.json, Arrow IPC stream files; a DatasetDict's train/), written here through Arrow
// itself (arrow_writer.h): every row's pixels and captions, the column errors, and a short
// training run with two loader workers. Skipped in a build without Arrow (T2I_WITH_ARROW).
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "data/arrow_dataset.h"
#include "data/caption_dataset.h"
#include "io/image_io.h"
#include "test_util.h"
#include "training/trainer.h"
#ifdef T2I_WITH_ARROW
#include "arrow_writer.h"
#endif

namespace t2i {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

std::vector<std::string> names(const std::string& root, const std::vector<std::string>& rel) {
    std::vector<std::string> out;
    for (const auto& r : rel) out.push_back(root + "/" + r);
    return out;
}

data::DatasetConfig config_for(const std::string& dir) {
    data::DatasetConfig c;
    c.dataset_name = dir;
    return c;
}

// datasets' default split patterns (data_files.py); no Arrow needed.
TEST(ArrowDataset, TrainSplitFilesAreChosenAsDatasetsChoosesThem) {
    const std::string r = "/repo";
    // The Hub's sharded layout: data/{split}-NNNNN-of-NNNNN*.
    EXPECT_EQ(data::train_split_files(r, names(r, {"data/test-00000-of-00001.parquet",
                                                   "data/train-00000-of-00002-abc.parquet",
                                                   "data/train-00001-of-00002-abc.parquet"})),
              names(r, {"data/train-00000-of-00002-abc.parquet",
                        "data/train-00001-of-00002-abc.parquet"}));
    // Keywords in file names: train*, *-train.*, training; not "trainer".
    EXPECT_EQ(
        data::train_split_files(r, names(r, {"my_train.parquet", "test.parquet", "train.parquet",
                                             "trainer.parquet", "valid-0.parquet"})),
        names(r, {"my_train.parquet", "train.parquet"}));
    // Keywords in folder names win over file names.
    EXPECT_EQ(data::train_split_files(r, names(r, {"train/a.parquet", "test/train.parquet"})),
              names(r, {"train/a.parquet"}));
    // No split named: every file.
    EXPECT_EQ(data::train_split_files(r, names(r, {"a.parquet", "data/b.parquet"})),
              names(r, {"a.parquet", "data/b.parquet"}));
    // Splits, but no train split: an error naming them.
    testing::expect_error([&] { data::train_split_files(r, names(r, {"test.parquet"})); },
                          {"'/repo'", "test", "no 'train' split"});
    testing::expect_error(
        [&] { data::train_split_files(r, names(r, {"data/validation-00000-of-00001.parquet"})); },
        {"validation", "no 'train' split"});
}

#ifdef T2I_WITH_ARROW

using testing::ArrowTestRow;
using testing::ArrowTestTable;

// `n` rows: images of varying sizes (seeded), one or two captions each.
std::vector<torch::Tensor> images_for(int n) {
    std::vector<torch::Tensor> out;
    for (int i = 0; i < n; ++i) out.push_back(testing::random_image(20 + i, 24 + 2 * i, 100 + i));
    return out;
}

ArrowTestTable table_for(const std::vector<torch::Tensor>& images, int first, int count) {
    ArrowTestTable t;
    for (int i = first; i < first + count; ++i) {
        ArrowTestRow row;
        row.bytes    = io::encode_png(images[i]);
        row.captions = {"caption " + std::to_string(i)};
        if (i % 2) row.captions.push_back("other " + std::to_string(i));
        t.rows.push_back(row);
    }
    return t;
}

// Every record's captions are the written ones and its image decodes to the written pixels.
void expect_rows(const data::DatasetIndex& idx, const std::vector<torch::Tensor>& images) {
    ASSERT_EQ(idx.records.size(), images.size());
    for (size_t i = 0; i < images.size(); ++i) {
        const auto& rec                   = idx.records[i];
        std::vector<std::string> captions = {"caption " + std::to_string(i)};
        if (i % 2) captions.push_back("other " + std::to_string(i));
        EXPECT_EQ(rec.captions, captions) << i;
        const auto pixels =
            rec.shard_row.shard >= 0
                ? io::decode_image_bytes(idx.shard_reader->image_bytes(rec.shard_row), "row")
                : io::decode_image(rec.image_path);
        EXPECT_TRUE(torch::equal(pixels, images[i])) << i << " " << rec.image_path;
    }
}

TEST(ArrowDataset, HubParquetShardsReadEveryRowOfTheTrainSplit) {
    TempDir dir;
    fs::create_directories(dir.file("data"));
    const auto images = images_for(12);
    // Two train shards of 3-row row groups, a test split that must not be read, a README.
    testing::write_parquet(dir.file("data/train-00000-of-00002.parquet"), table_for(images, 0, 7),
                           3);
    testing::write_parquet(dir.file("data/train-00001-of-00002.parquet"), table_for(images, 7, 5),
                           3);
    testing::write_parquet(dir.file("data/test-00000-of-00001.parquet"),
                           table_for(images_for(2), 0, 2), 3);
    std::ofstream(dir.file("README.md")) << "---\ndataset_info: ...\n---\n";
    const auto idx = data::index_dataset(config_for(dir.path()));
    EXPECT_EQ(idx.layout, "parquet");
    EXPECT_EQ(idx.columns, (std::vector<std::string>{"image", "text"}));
    ASSERT_EQ(idx.shards.size(), 2u);
    EXPECT_EQ(idx.records[8].shard_row.shard, 1);  // row 1 of shard 1: row group 0, row 1
    EXPECT_EQ(idx.records[8].shard_row.chunk, 0);
    EXPECT_EQ(idx.records[8].shard_row.row, 1);
    EXPECT_EQ(idx.records[4].shard_row.chunk, 1);  // row 4 of shard 0: row group 1, row 1
    expect_rows(idx, images);
    // Read from several threads at once (the loader's workers), in a scattered order.
    std::vector<std::thread> threads;
    std::atomic<int> mismatches{0};
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
            for (int k = 0; k < 24; ++k) {
                const size_t i = (k * 5 + t * 7) % 12;
                const auto px  = io::decode_image_bytes(
                     idx.shard_reader->image_bytes(idx.records[i].shard_row), "row");
                if (!torch::equal(px, images[i])) ++mismatches;
            }
        });
    for (auto& th : threads) th.join();
    EXPECT_EQ(mismatches.load(), 0);
}

TEST(ArrowDataset, ImageStructWithNullBytesReadsItsPathInsideTheDataset) {
    TempDir dir;
    const auto images = images_for(3);
    auto t            = table_for(images, 0, 3);
    fs::create_directories(dir.file("images"));
    io::write_png(dir.file("images/b.png"), images[1]);
    t.rows[1].has_bytes = false;
    t.rows[1].path      = "images/b.png";
    testing::write_parquet(dir.file("train.parquet"), t, 2);
    const auto idx = data::index_dataset(config_for(dir.path()));
    EXPECT_EQ(idx.records[1].shard_row.shard, -1);
    EXPECT_EQ(idx.records[1].image_path, fs::canonical(dir.path()).string() + "/images/b.png");
    expect_rows(idx, images);
    // A path that leaves the dataset folder is refused, as in the other layouts.
    t.rows[1].path = "../outside.png";
    testing::write_parquet(dir.file("train.parquet"), t, 2);
    io::write_png(fs::path(dir.path()).parent_path().string() + "/outside.png", images[1]);
    testing::expect_error(
        [&] { data::index_dataset(config_for(dir.path())); },
        {"train.parquet[1]", "outside the dataset folder", "--allow_paths_outside_dataset"});
    fs::remove(fs::path(dir.path()).parent_path() / "outside.png");
    t.rows[1].path = "";
    testing::write_parquet(dir.file("train.parquet"), t, 2);
    testing::expect_error([&] { data::index_dataset(config_for(dir.path())); },
                          {"train.parquet' row 1", "neither bytes nor a path"});
}

// A save_to_disk folder: state.json lists the Arrow IPC stream shards.
void write_saved(const std::string& folder, const std::vector<torch::Tensor>& images,
                 bool caption_list) {
    fs::create_directories(folder);
    auto a         = table_for(images, 0, 5);
    auto b         = table_for(images, 5, 4);
    a.caption_list = b.caption_list = caption_list;
    testing::write_arrow_stream(folder + "/data-00000-of-00002.arrow", a, 2);
    testing::write_arrow_stream(folder + "/data-00001-of-00002.arrow", b, 2);
    std::ofstream(folder + "/state.json")
        << R"({"_data_files": [{"filename": "data-00000-of-00002.arrow"},)"
        << R"( {"filename": "data-00001-of-00002.arrow"}], "_fingerprint": "x", "_split": null})";
    std::ofstream(folder + "/dataset_info.json") << R"({"features": {}})";
}

TEST(ArrowDataset, SaveToDiskFoldersAndDatasetDicts) {
    TempDir dir;
    const auto images = images_for(9);
    write_saved(dir.file("saved"), images, true);
    auto idx = data::index_dataset(config_for(dir.file("saved")));
    EXPECT_EQ(idx.layout, "save_to_disk");
    EXPECT_EQ(idx.records[6].shard_row.chunk, 0);  // shard 1, batch 0, row 1
    EXPECT_EQ(idx.records[6].shard_row.row, 1);
    EXPECT_EQ(idx.records[4].shard_row.chunk, 2);  // shard 0, batch 2, row 0
    expect_rows(idx, images);
    // A DatasetDict: dataset_dict.json and one folder per split; train is read.
    write_saved(dir.file("dict/train"), images, false);
    write_saved(dir.file("dict/test"), images_for(9), false);
    std::ofstream(dir.file("dict/dataset_dict.json")) << R"({"splits": ["train", "test"]})";
    idx = data::index_dataset(config_for(dir.file("dict")));
    ASSERT_EQ(idx.records.size(), 9u);
    EXPECT_EQ(idx.records[3].captions, (std::vector<std::string>{"caption 3"}));  // a string cell
    EXPECT_TRUE(torch::equal(
        io::decode_image_bytes(idx.shard_reader->image_bytes(idx.records[8].shard_row), "r"),
        images[8]));
    std::ofstream(dir.file("dict/dataset_dict.json")) << R"({"splits": ["test"]})";
    testing::expect_error([&] { data::index_dataset(config_for(dir.file("dict"))); },
                          {"dataset_dict.json", "no 'train' split"});
    // state.json naming a file outside its folder, or a missing one.
    std::ofstream(dir.file("saved/state.json")) << R"({"_data_files": [{"filename": "../x"}]})";
    testing::expect_error([&] { data::index_dataset(config_for(dir.file("saved"))); },
                          {"state.json", "'../x'", "not a file name"});
    std::ofstream(dir.file("saved/state.json")) << R"({"_data_files": [{"filename": "y.arrow"}]})";
    testing::expect_error([&] { data::index_dataset(config_for(dir.file("saved"))); },
                          {"state.json", "y.arrow", "does not exist"});
}

TEST(ArrowDataset, ColumnErrorsNameTheColumnsThereAre) {
    TempDir dir;
    auto t = table_for(images_for(2), 0, 2);
    testing::write_parquet(dir.file("train.parquet"), t, 2);
    auto c         = config_for(dir.path());
    c.image_column = "img";
    testing::expect_error(
        [&] { data::index_dataset(c); },
        {"--image_column value 'img' needs to be one of: image, text", "train.parquet"});
    c                = config_for(dir.path());
    c.caption_column = "caption";
    testing::expect_error([&] { data::index_dataset(c); },
                          {"--caption_column value 'caption' needs to be one of: image, text"});
    c.caption_column = "image";
    testing::expect_error([&] { data::index_dataset(c); },
                          {"Caption column `image` should contain either strings or lists of "
                           "strings",
                           "row 0"});
    c              = config_for(dir.path());
    c.image_column = "text";
    testing::expect_error([&] { data::index_dataset(c); },
                          {"image column `text`", "list<", "Image feature"});
    t.caption_int = true;
    testing::write_parquet(dir.file("train.parquet"), t, 2);
    testing::expect_error([&] { data::index_dataset(config_for(dir.path())); },
                          {"Caption column `text`", "int64"});
    // Not a Parquet file at all: the reader's message, naming the file.
    std::ofstream(dir.file("train.parquet")) << "not parquet";
    testing::expect_error([&] { data::index_dataset(config_for(dir.path())); },
                          {"cannot read Parquet file", "train.parquet"});
}

TEST(ArrowDataset, TrainsOnAParquetDatasetWithTwoLoaderWorkers) {
    TempDir dir;
    fs::create_directories(dir.file("hub/data"));
    std::vector<torch::Tensor> images;
    for (int i = 0; i < 8; ++i) images.push_back(testing::random_image(72, 80, 10 + i));
    testing::write_parquet(dir.file("hub/data/train-00000-of-00002.parquet"),
                           table_for(images, 0, 4), 3);
    testing::write_parquet(dir.file("hub/data/train-00001-of-00002.parquet"),
                           table_for(images, 4, 4), 3);
    auto c = testing::tiny_train_config(dir, "");
    c.train_data_dir.reset();
    c.dataset_name           = dir.file("hub");
    c.max_train_steps        = 3;
    c.dataloader_num_workers = 2;
    c.seed                   = 1;
    ASSERT_EQ(training::train(c), training::TrainResult::kFinished);
    EXPECT_TRUE(fs::exists(dir.file("out/unet/diffusion_pytorch_model.safetensors")));
}

#else  // without Arrow: a Parquet dataset is refused with how to enable it.

TEST(ArrowDataset, WithoutArrowAParquetDatasetSaysHowToRebuild) {
    EXPECT_FALSE(data::arrow_enabled());
    TempDir dir;
    fs::create_directories(dir.file("data"));
    std::ofstream(dir.file("data/train-00000-of-00001.parquet")) << "PAR1";
    testing::expect_error([&] { data::index_dataset(config_for(dir.path())); },
                          {"train-00000-of-00001.parquet", "built without Apache Arrow",
                           "-DT2I_WITH_ARROW=ON", "install_deps.sh"});
}

#endif

}  // namespace
}  // namespace t2i
