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
// A caption cell is a string or a list of strings (one chosen at random for each access, like
// the script's `random.choice`). `--max_train_samples N` keeps the first N records of a
// seeded shuffle as the script's `shuffle(seed).select(range(N))`, but t2i's permutation
// (Fisher-Yates on mt19937_64) is not HF datasets' numpy permutation, so the chosen subset
// differs from the Python script's.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/transforms.h"
#include "io/image_io.h"
#include "tokenizer/clip_tokenizer.h"

namespace t2i::data {

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
};

// One training example before decoding.
struct Record {
    std::string image_path;             // absolute or relative to the working directory
    std::vector<std::string> captions;  // one or more alternatives
};

// What a dataset source holds, found without decoding any image (cheap enough to validate the
// flags before training starts).
struct DatasetIndex {
    std::string layout;  // "imagefolder", "records" or "captions"
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

class CaptionDataset {
  public:
    static CaptionDataset open(const DatasetConfig& config, tokenizer::CLIPTokenizer tokenizer);

    int64_t size() const { return static_cast<int64_t>(index_.records.size()); }
    const Record& record(int64_t i) const { return index_.records.at(static_cast<size_t>(i)); }
    const std::string& root() const { return index_.root; }      // DatasetIndex::root
    const std::string& source() const { return index_.source; }  // the folder or file read

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
    void choose_caption(const Record& rec, Rng& rng, Example* ex) const;

    CaptionDataset(DatasetConfig config, DatasetIndex index, tokenizer::CLIPTokenizer tokenizer)
        : config_(std::move(config)), index_(std::move(index)), tokenizer_(std::move(tokenizer)) {}

    DatasetConfig config_;
    DatasetIndex index_;
    tokenizer::CLIPTokenizer tokenizer_;
};

}  // namespace t2i::data
