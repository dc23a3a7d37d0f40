// Implements: the image-caption dataset of train_text_to_image.py (`load_dataset` + the
// `--image_column` / `--caption_column` checks + `preprocess_train`), read from local files:
//   imagefolder - a folder (searched recursively) with metadata.jsonl or metadata.csv files,
//                 Hugging Face's imagefolder convention: `file_name` is relative to the folder of
//                 its metadata file, and the image is exposed as the column "image"; metadata
//                 files may also sit in subfolders; hidden names ("." / "__") are skipped.
//   records     - a .json (array of records), .jsonl or .csv file, or a folder holding such
//                 files: the image column holds a path relative to the file (or {"path": ...}).
//   captions    - kohya's convention: images with a sidecar `<stem>.txt` (else `<stem>.caption`);
//                 the first line is the caption, as kohya-ss reads it. Columns: image, text.
//                 Images under a top-level folder named `<N>_<name>` (kohya's DreamBooth
//                 layout) are repeated N times per epoch, and one without a caption file takes
//                 `<name>` as its caption, as kohya-ss does; such folders alone (no caption
//                 files) are this layout too.
//   parquet / arrow / save_to_disk - a Hugging Face dataset as Arrow data: a local copy of a Hub
//                 dataset repository (Parquet or .arrow shards, split "train"), or a folder
//                 written by datasets' save_to_disk (data/arrow_dataset.h; needs T2I_WITH_ARROW).
// A caption cell is a string or a list of strings (one chosen at random for each access, like
// the script's `random.choice`). `--max_train_samples N` keeps the first N records of a
// seeded shuffle as the script's `shuffle(seed).select(range(N))`, but t2i's permutation
// (Fisher-Yates on mt19937_64) is not HF datasets' numpy permutation, so the chosen subset
// differs from the Python script's.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/arrow_dataset.h"
#include "data/transforms.h"
#include "io/image_io.h"
#include "tokenizer/clip_tokenizer.h"

namespace t2i::data {

// kohya-ss's caption options (t2i additions), applied each time a sample is drawn, after the
// choice among a record's captions: with probability `dropout_rate` the caption becomes "" (for
// classifier-free guidance; diffusers' SDXL script calls it --proportion_empty_prompts);
// otherwise, with `shuffle`, the caption's comma-separated tags after the first `keep_tokens`
// are shuffled and joined with ", " (kohya's process_caption).
struct CaptionOptions {
    double dropout_rate = 0.0;
    bool shuffle        = false;
    int64_t keep_tokens = 0;
};

// kohya's process_caption: tags = split on ',' and stripped; the first `keep_tokens` stay, the
// rest are shuffled with `rng` (Fisher-Yates); joined with ", ".
std::string shuffle_caption_tags(const std::string& caption, int64_t keep_tokens, Rng& rng);

// kohya's repeat folders: "<N>_<name>" (N >= 1) -> {N, name}; {0, ""} for any other name.
std::pair<int64_t, std::string> parse_repeat_folder(const std::string& folder_name);

// kohya's sidecar caption of an image: the first line of `<stem>.txt`, else `<stem>.caption`,
// trimmed; false when there is neither (data/kohya_captions.cpp).
bool read_sidecar(const std::filesystem::path& image, std::string* caption);

struct DatasetConfig {
    std::string dataset_name;              // --dataset_name: local dataset folder or data file
    std::string train_data_dir;            // --train_data_dir: local image folder (imagefolder)
    std::string image_column   = "image";  // --image_column
    std::string caption_column = "text";   // --caption_column
    int64_t max_train_samples  = -1;       // --max_train_samples; -1 = all
    uint64_t seed              = 0;        // --seed (for max_train_samples' shuffle)
    TransformConfig transform;             // --resolution, --center_crop, --random_flip, ...
    tokenizer::TextCleanMode text_clean = tokenizer::TextCleanMode::kFtfy;
    // --allow_paths_outside_dataset: images may lie outside the dataset root (see DatasetIndex).
    bool allow_paths_outside_dataset = false;
    CaptionOptions captions;  // --caption_dropout_rate, --shuffle_caption, --keep_tokens
};

// One training example before decoding.
struct Record {
    // The image file, absolute or relative to the working directory; for an image stored in a
    // dataset shard, "<shard file>[<row>]" (a name for messages).
    std::string image_path;
    std::vector<std::string> captions;  // one or more alternatives
    ShardRow shard_row;                 // shard >= 0: the image bytes are in DatasetIndex::shards
};

// What a dataset source holds, found without decoding any image (cheap enough to validate the
// flags before training starts).
struct DatasetIndex {
    // "imagefolder", "records", "captions", "parquet", "arrow" or "save_to_disk"
    std::string layout;
    std::string source;  // the folder or file that was read
    // The folder every image must lie in, after resolving ".." and symbolic links: `source`, or
    // the folder of a data file. A path that leaves it (an absolute path, "../x.png", a link out
    // of the folder) is an error unless allow_paths_outside_dataset.
    std::string root;
    // For a dataset in the Hugging Face cache (a snapshot folder), the repository's blobs/
    // folder its files link to; "" otherwise.
    std::string linked_root;
    std::vector<std::string> columns;  // as the script would see them
    std::vector<Record> records;       // after --max_train_samples
    std::vector<std::string> shards;   // Parquet / Arrow data files (Record::shard_row.shard)
    std::shared_ptr<const ShardReader> shard_reader;  // reads a shard row's image bytes
};

// Thrown by CaptionDataset::get when a sample's image cannot be read or decoded; the message
// names the path. The loader skips these when asked to; every other error stops the run.
class BadSampleError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// One preprocessed sample.
struct Example {
    torch::Tensor pixel_values;     // float32 [3, R, R] in [-1, 1]
    torch::Tensor input_ids;        // int64 [77] (model_max_length)
    std::string caption;            // the caption that was tokenized
    bool flipped          = false;  // --random_flip mirrored it
    int64_t caption_index = 0;      // which of the record's captions
};

// Reads the records of the source named by `config` (dataset_name wins over train_data_dir,
// as in the script). Throws for: neither given; a Hub id or missing path (with download hint);
// a missing column (naming the column, the file, and the columns that exist); a caption that is
// not a string or list of strings; a missing image file or one outside the dataset root; a
// metadata or caption file that is not UTF-8 or UTF-16 text; an empty dataset.
DatasetIndex index_dataset(const DatasetConfig& config);

// Says once how many of the index's captions are longer than the tokenizer's model_max_length
// (the text encoder cuts them there, as the script does), the longest and the first.
void warn_truncated_captions(const DatasetIndex& index, const tokenizer::CLIPTokenizer& tok,
                             tokenizer::TextCleanMode mode);

class CaptionDataset {
  public:
    static CaptionDataset open(const DatasetConfig& config, tokenizer::CLIPTokenizer tokenizer);

    int64_t size() const { return static_cast<int64_t>(index_.records.size()); }
    const Record& record(int64_t i) const { return index_.records.at(static_cast<size_t>(i)); }
    const std::string& root() const { return index_.root; }      // DatasetIndex::root
    const std::string& source() const { return index_.source; }  // the folder or file read
    // The file record `i`'s image is read from: its image file, or the shard holding it.
    const std::string& image_file(int64_t i) const;

    // Decode + train_transform + tokenize record `i`. Draws from `rng` for the random crop and
    // flip (see train_transform), then for the caption choice when there are several. Thread
    // safe. Throws BadSampleError when the image cannot be read or decoded, or when resizing it
    // to --resolution would exceed the pixel budget (io::kMaxImagePixels; e.g. a 1,000,000 x 1
    // image).
    // `target` (--enable_bucket): resize and crop to the image's bucket (sized_transform)
    // instead of the --resolution square.
    Example get(int64_t i, Rng& rng, const TargetSize* target = nullptr) const;
    // What get() draws and tokenizes, without decoding (pixel_values undefined): for cached
    // latents, built with fixed_pixels (no random crop with a choice, so get() draws only the
    // flip and the caption, and this draws exactly the same).
    Example draw(int64_t i, Rng& rng) const;
    // Record `i`'s pixels with the given flip (transforms.h fixed_transform). Throws
    // BadSampleError for an unreadable image (as get()), std::runtime_error (naming the image)
    // for a random crop with a choice.
    torch::Tensor fixed_pixels(int64_t i, bool flip, const TargetSize* target = nullptr) const;
    // Record `i`'s image size from its header, without decoding (io::read_image_size).
    io::ImageSize image_size(int64_t i) const;
    // The token ids [77] of a caption as get() makes them.
    torch::Tensor input_ids(const std::string& caption) const;

  private:
    torch::Tensor decode(const Record& rec) const;  // throws BadSampleError
    void choose_caption(const Record& rec, Rng& rng, Example* ex) const;

    CaptionDataset(DatasetConfig config, DatasetIndex index, tokenizer::CLIPTokenizer tokenizer)
        : config_(std::move(config)), index_(std::move(index)), tokenizer_(std::move(tokenizer)) {}

    DatasetConfig config_;
    DatasetIndex index_;
    tokenizer::CLIPTokenizer tokenizer_;
};

}  // namespace t2i::data
