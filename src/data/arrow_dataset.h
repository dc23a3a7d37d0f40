// Implements: Hugging Face datasets stored as Arrow data, read from disk: (a) a local copy of a
// Hub dataset repository (Parquet shards, e.g. data/train-00000-of-00002.parquet, or .arrow
// files) and (b) a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`
// (state.json listing Arrow IPC stream files; dataset_dict.json naming the splits).
// Mirrors: datasets' `load_dataset(DIR)` with the packaged parquet / arrow builders (which files
// make up split "train": data_files.py, the default split patterns) and `load_from_disk`
// (arrow_dataset.py, dataset_dict.py); the Image feature's storage (features/image.py: a struct
// {bytes: binary, path: string}).
// This header holds no Arrow or torch types: arrow_dataset.cpp, the one file that includes
// Arrow's headers (which need C++20), is compiled only with T2I_WITH_ARROW; without it,
// arrow_dataset_off.cpp says how to enable it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace t2i::data {

// Where one row's image bytes are: row `row` of chunk `chunk` (a Parquet row group, an Arrow
// record batch) of shard `shard` (ArrowFiles::shards).
struct ShardRow {
    int32_t shard = -1;  // -1: the image is a file, not in a shard
    int32_t chunk = 0;
    int64_t row   = 0;
};

// The data files of a dataset's train split.
struct ArrowFiles {
    std::string layout;               // "parquet", "arrow" (Hub repository) or "save_to_disk"
    std::string folder;               // the folder holding them (a DatasetDict: its train/)
    std::vector<std::string> shards;  // paths, in the order datasets reads them
};

// A save_to_disk folder: `dir`/state.json lists the shards ("_data_files"); a DatasetDict folder
// (`dir`/dataset_dict.json) is read through its "train" split. Returns an empty layout when `dir`
// is neither. Throws naming the file for a malformed state.json / dataset_dict.json, a DatasetDict
// without a train split, a shard name that leaves the folder, and a missing shard.
ArrowFiles find_saved_dataset(const std::string& dir);

// Which of `files` (paths below `root`, sorted) make up split "train", as datasets picks them
// for `load_dataset(root)`: data/<split>-NNNNN-of-NNNNN* shards, else files or folders named by
// split keywords ("train", "training"; "validation", "test", ...), else every file. Throws when
// the files name splits but no train split, naming the splits found.
std::vector<std::string> train_split_files(const std::string& root,
                                           const std::vector<std::string>& files);

// Reads one row's image bytes. Thread safe: the data loader's workers call it concurrently.
class ShardReader {
  public:
    virtual ~ShardReader() = default;
    // The image bytes at `at`; throws std::runtime_error naming the shard and row when they
    // cannot be read.
    virtual std::string image_bytes(const ShardRow& at) const = 0;
};

// One row of an Arrow dataset before decoding.
struct ArrowRow {
    ShardRow at;                        // where its image bytes are (when image_file is "")
    std::string name;                   // "<shard file>[<row in shard>]", for messages
    std::string image_file;             // the Image feature's `path` when its `bytes` are null
    std::vector<std::string> captions;  // a string, or a list of strings
};

struct ArrowIndex {
    std::vector<std::string> columns;  // the top-level columns, as the script sees them
    std::vector<ArrowRow> rows;
    std::shared_ptr<const ShardReader> reader;
};

// Whether this t2i was built with Apache Arrow (cmake -DT2I_WITH_ARROW=ON).
bool arrow_enabled();

// Reads the captions of every row and where its image is, one row group / record batch at a
// time: image bytes are not kept (Parquet) or stay in the memory-mapped file (Arrow IPC). The
// image column holds the Image feature's struct {bytes, path}, binary bytes, or a string path;
// the caption column a string or a list of strings. Throws naming the file, the column and the
// row for: a missing column in any shard (the script's message, listing the columns there are),
// other types, null cells, unreadable files; without T2I_WITH_ARROW,
// says how to rebuild.
ArrowIndex read_arrow_dataset(const ArrowFiles& files, const std::string& image_column,
                              const std::string& caption_column);

}  // namespace t2i::data
