// Implements: caption_dataset.h: finding the layout of a local dataset, its records from
// metadata tables (data/metadata_table), sidecar captions or folders, the script's column checks,
// and the per-sample preprocessing.
#include "data/caption_dataset.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "data/metadata_table.h"
#include "io/file_util.h"
#include "io/image_io.h"
#include "io/json_config.h"
#include "io/text.h"
#include "util/log.h"

namespace t2i::data {
namespace fs = std::filesystem;
using json   = nlohmann::ordered_json;  // keeps the columns in file order, as HF does

namespace {

// Extensions of Hugging Face's imagefolder (the common part); t2i decodes PNG, JPEG and WebP
// and reports the others by path when they are loaded.
std::string lower_ext(const fs::path& p) {
    std::string ext = p.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
    return ext;
}

bool is_image_file(const fs::path& p) {
    static const std::set<std::string> kExt = {
        ".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".gif", ".bmp", ".dib",
        ".tif", ".tiff", ".ico", ".pbm",  ".pgm", ".ppm",  ".pnm",  ".tga", ".psd", ".jp2"};
    return kExt.count(lower_ext(p)) > 0;
}

// Whether `path` (canonical) is inside `root` (canonical).
bool is_inside(const fs::path& path, const fs::path& root) {
    auto r = root.begin();
    auto p = path.begin();
    for (; r != root.end() && p != path.end() && *r == *p; ++r, ++p) {
    }
    return r == root.end() && p != path.end();
}

// Whether `real` (canonical) lies in the dataset: inside its root, or, for a dataset in the
// Hugging Face cache, inside that repository's blobs/ (the cache keeps a snapshot's files as
// links: hub/datasets--org--name/snapshots/<rev>/x.png -> ../../blobs/<sha256>).
bool within_dataset(const fs::path& real, const DatasetIndex& index) {
    return is_inside(real, index.root) ||
           (!index.linked_root.empty() && is_inside(real, index.linked_root));
}

// The blobs/ folder of a Hugging Face cache repository that `root` is a snapshot (or a folder
// of a snapshot) of, or "".
std::string hf_cache_blobs(const fs::path& root) {
    for (fs::path p = root; p.has_relative_path(); p = p.parent_path()) {
        const fs::path repo = p.parent_path().parent_path();
        std::error_code ec;
        if (p.parent_path().filename() == "snapshots" && fs::is_directory(repo / "blobs", ec))
            return (repo / "blobs").string();
    }
    return "";
}

// Every regular file below `dir`, as HF's imagefolder finds them: hidden names skipped, links to
// folders followed, but each folder walked once (a link cycle is not an endless walk) and,
// unless allowed, never into a folder outside the dataset.
void walk(const fs::path& dir, const DatasetIndex& index, bool allow_outside,
          std::set<std::pair<uint64_t, uint64_t>>* seen, std::vector<fs::path>* files) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0 || !seen->insert({st.st_dev, st.st_ino}).second) return;
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string name = e.path().filename().string();
        if ((name.size() > 1 && name[0] == '.') || name.rfind("__", 0) == 0) continue;
        std::error_code ec;
        if (e.is_directory(ec)) {
            if (e.is_symlink(ec) && !allow_outside &&
                !within_dataset(fs::canonical(e.path()), index))
                throw std::runtime_error(
                    "'" + e.path().string() + "' links to '" + fs::canonical(e.path()).string() +
                    "', outside the dataset folder '" + index.root +
                    "'; pass --allow_paths_outside_dataset if reading files there is intended");
            walk(e.path(), index, allow_outside, seen, files);
        } else if (e.is_regular_file(ec)) {
            files->push_back(e.path());
        }
    }
}

std::vector<fs::path> list_files(const fs::path& dir, const DatasetConfig& cfg,
                                 const DatasetIndex& index) {
    std::vector<fs::path> files;
    std::set<std::pair<uint64_t, uint64_t>> seen;
    walk(dir, index, cfg.allow_paths_outside_dataset, &seen, &files);
    std::sort(files.begin(), files.end());
    return files;
}

std::string where(const Table& t, size_t r) {
    return "'" + t.file + "' record " + std::to_string(r);
}

// The script's tokenize_captions accepts a str or a list of str, and raises otherwise.
std::vector<std::string> parse_captions(const json& cell, const std::string& column,
                                        const std::string& at) {
    std::vector<std::string> out;
    if (cell.is_string()) out.push_back(cell.get<std::string>());
    if (cell.is_array() && !cell.empty())
        for (const auto& c : cell) {
            if (!c.is_string()) break;
            out.push_back(c.get<std::string>());
        }
    if (out.empty() || (cell.is_array() && out.size() != cell.size()))
        throw std::runtime_error("Caption column `" + column +
                                 "` should contain either strings or lists of strings; " + at +
                                 " has " + io::dump_json(cell).substr(0, 200));
    return out;
}

// `path` (an existing file) after resolving ".." and symbolic links lies inside the dataset
// root, unless --allow_paths_outside_dataset. A metadata file is the dataset's author speaking;
// it must not make t2i read (and train on, and write into checkpoints) files elsewhere.
void check_inside_root(const std::string& path, const DatasetConfig& cfg, const DatasetIndex& index,
                       const std::string& at, const char* what = "image") {
    if (cfg.allow_paths_outside_dataset) return;
    std::error_code ec;
    const fs::path real = fs::canonical(path, ec);
    if (ec || !within_dataset(real, index))
        throw std::runtime_error(at + ": " + what + " '" + path +
                                 "' lies outside the dataset folder '" + index.root + "'" +
                                 (ec || real == fs::absolute(path).lexically_normal()
                                      ? ""
                                      : " (it resolves to '" + real.string() + "')") +
                                 "; move it into the folder, or pass --allow_paths_outside_dataset "
                                 "if reading files outside it is intended");
}

// An image cell: a path string or {"path": ...} (HF's Image feature), relative to `base`.
std::string resolve_image(const json& cell, const fs::path& base, const std::string& column,
                          const std::string& at) {
    std::string rel;
    if (cell.is_string())
        rel = cell.get<std::string>();
    else if (cell.is_object() && cell.contains("path") && cell["path"].is_string())
        rel = cell["path"].get<std::string>();
    else
        throw std::runtime_error("image column `" + column + "` should hold a file path; " + at +
                                 " has " + io::dump_json(cell).substr(0, 200));
    const std::string path = (base / rel).lexically_normal().string();
    if (!io::file_exists(path))
        throw std::runtime_error(
            at + ": image file '" + path + "' " +
            (fs::exists(path) ? "is not a regular file (a folder or device)" : "does not exist"));
    return path;
}

// Rows of one table -> records. `image_from_file_name`: imagefolder's "image" column.
void append_records(const Table& t, const DatasetConfig& cfg, bool image_from_file_name,
                    DatasetIndex* index) {
    const fs::path base = fs::path(t.file).parent_path();
    for (size_t r = 0; r < t.rows.size(); ++r) {
        const json& row             = t.rows[r];
        const std::string at        = where(t, r);
        const std::string image_key = image_from_file_name ? "file_name" : cfg.image_column;
        if (!row.contains(image_key))
            throw std::runtime_error(at + " has no '" + image_key + "' value");
        if (!row.contains(cfg.caption_column))
            throw std::runtime_error(at + " has no '" + cfg.caption_column + "' value");
        Record rec;
        rec.image_path = resolve_image(row[image_key], base, image_key, at);
        check_inside_root(rec.image_path, cfg, *index, at);
        rec.captions = parse_captions(row[cfg.caption_column], cfg.caption_column, at);
        index->records.push_back(std::move(rec));
    }
}

// Hugging Face imagefolder with metadata files (each describes the images below its folder).
void index_imagefolder(const std::vector<fs::path>& metadata, const DatasetConfig& cfg,
                       DatasetIndex* index) {
    for (const auto& file : metadata) {
        const Table t = read_table(file.string());
        if (std::find(t.columns.begin(), t.columns.end(), "file_name") == t.columns.end())
            throw std::runtime_error("metadata file '" + t.file +
                                     "' has no 'file_name' column (columns: " + join(t.columns) +
                                     "); imagefolder metadata names each image in 'file_name'");
        std::vector<std::string> columns = {"image"};
        for (const auto& c : t.columns)
            if (c != "file_name") add_column(&columns, c);
        check_column("--image_column", cfg.image_column, columns, t.file);
        check_column("--caption_column", cfg.caption_column, columns, t.file);
        if (cfg.caption_column == "image")
            throw std::runtime_error("--caption_column 'image' is the image column of '" + t.file +
                                     "'; pick a text column: " + join(columns));
        for (const auto& c : columns) add_column(&index->columns, c);
        append_records(t, cfg, cfg.image_column == "image", index);
    }
}

// A .json / .jsonl / .csv file of records with image paths.
void index_record_files(const std::vector<fs::path>& files, const DatasetConfig& cfg,
                        DatasetIndex* index) {
    for (const auto& file : files) {
        const Table t = read_table(file.string());
        check_column("--image_column", cfg.image_column, t.columns, t.file);
        check_column("--caption_column", cfg.caption_column, t.columns, t.file);
        for (const auto& c : t.columns) add_column(&index->columns, c);
        append_records(t, cfg, false, index);
    }
}

// The repeat folder an image lies in: the first component of its path below `dir`.
std::pair<int64_t, std::string> repeat_of(const fs::path& image, const std::string& dir) {
    const auto rel = image.lexically_normal().lexically_relative(fs::path(dir).lexically_normal());
    if (rel.empty() || std::distance(rel.begin(), rel.end()) < 2) return {0, ""};
    return parse_repeat_folder(rel.begin()->string());
}

void index_sidecars(const std::string& dir, const std::vector<fs::path>& images,
                    const DatasetConfig& cfg, DatasetIndex* index) {
    index->columns = {"image", "text"};
    check_column("--image_column", cfg.image_column, {"image"}, dir + " (sidecar captions)");
    check_column("--caption_column", cfg.caption_column, {"text"}, dir + " (sidecar captions)");
    int64_t missing = 0, repeated = 0;
    std::string first_missing;
    for (const auto& image : images) {
        Record rec{image.lexically_normal().string(), {""}};
        check_inside_root(rec.image_path, cfg, *index, "'" + rec.image_path + "'");
        const auto [repeats, name] = repeat_of(image, dir);
        // kohya: no caption file in a repeat folder -> the folder's name is the caption.
        if (!read_sidecar(image, &rec.captions[0])) {
            if (repeats > 0)
                rec.captions[0] = name;
            else if (missing++ == 0)
                first_missing = rec.image_path;
        }
        for (int64_t k = 1; k < repeats; ++k, ++repeated) index->records.push_back(rec);
        index->records.push_back(std::move(rec));
    }
    if (missing > 0)
        log_warn(
            "%lld of %zu images in '%s' have no .txt/.caption file (e.g. '%s'); they are "
            "trained with an empty caption, as kohya-ss does",
            static_cast<long long>(missing), images.size(), dir.c_str(), first_missing.c_str());
    if (repeated > 0)
        log_info("kohya repeat folders (<N>_<name>/): %zu images, %lld with repeats per epoch",
                 images.size(), static_cast<long long>(images.size() + repeated));
}

[[noreturn]] void throw_missing_source(const std::string& flag, const std::string& source) {
    static const std::regex kHubId(R"(^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?$)");
    std::string msg = flag + " '" + source + "': no such file or folder.";
    if (std::regex_match(source, kHubId))
        msg +=
            " If this is a Hugging Face Hub dataset id: t2i reads local folders only; "
            "download it first with\n  huggingface-cli download --repo-type dataset " +
            source + " --local-dir DIR\nand pass " + flag + " DIR.";
    throw std::runtime_error(msg);
}

// Rows of a Parquet / Arrow dataset -> records. An Image feature whose bytes are null names a
// file, read as datasets does (relative to the dataset folder here), inside the dataset root.
void index_arrow(const ArrowFiles& files, const DatasetConfig& cfg, DatasetIndex* index) {
    // A shard symlinked (or named by state.json) out of the folder is data from elsewhere.
    for (const auto& shard : files.shards)
        check_inside_root(shard, cfg, *index, "'" + shard + "'", "data file");
    ArrowIndex a        = read_arrow_dataset(files, cfg.image_column, cfg.caption_column);
    index->layout       = files.layout;
    index->columns      = a.columns;
    index->shards       = files.shards;
    index->shard_reader = a.reader;
    for (auto& row : a.rows) {
        Record rec{row.name, std::move(row.captions), row.at};
        if (!row.image_file.empty()) {
            const std::string at = "'" + row.name + "'";
            rec.image_path       = resolve_image(row.image_file, index->root, cfg.image_column, at);
            rec.shard_row        = {};
            check_inside_root(rec.image_path, cfg, *index, at);
        }
        index->records.push_back(std::move(rec));
    }
}

void index_folder(const std::string& dir, const DatasetConfig& cfg, DatasetIndex* index) {
    std::vector<fs::path> metadata, images, data_files;
    std::vector<std::string> parquet, arrow;
    bool has_sidecar = false;
    for (const auto& f : list_files(dir, cfg, *index)) {
        const std::string name = f.filename().string(), ext = lower_ext(f);
        if (name == "metadata.jsonl" || name == "metadata.csv")
            metadata.push_back(f);
        else if (name == "metadata.parquet")
            throw std::runtime_error("'" + f.string() +
                                     "': imagefolder metadata in Parquet is "
                                     "not supported; write metadata.jsonl or metadata.csv");
        else if (ext == ".parquet" || ext == ".arrow")
            (ext == ".parquet" ? parquet : arrow).push_back(f.string());
        else if (is_image_file(f))
            images.push_back(f);
        else if (ext == ".json" || ext == ".jsonl" || ext == ".csv")
            data_files.push_back(f);
        else if (ext == ".txt" || ext == ".caption")
            has_sidecar = true;
    }
    std::set<std::string> kinds;
    for (const auto& m : metadata) kinds.insert(m.extension().string());
    if (kinds.size() > 1)
        throw std::runtime_error("dataset folder '" + dir +
                                 "' mixes metadata.jsonl and "
                                 "metadata.csv files; use one format");
    if (metadata.empty() && (!parquet.empty() || !arrow.empty())) {
        // A Hub dataset repository: datasets' parquet (or arrow) builder, split "train".
        ArrowFiles files{parquet.empty() ? "arrow" : "parquet", dir, {}};
        files.shards = train_split_files(dir, parquet.empty() ? arrow : parquet);
        index_arrow(files, cfg, index);
    } else if (!metadata.empty()) {
        index->layout = "imagefolder";
        index_imagefolder(metadata, cfg, index);
    } else if (!images.empty() &&
               (has_sidecar || std::any_of(images.begin(), images.end(), [&](const fs::path& f) {
                    return repeat_of(f, dir).first > 0;
                }))) {
        index->layout = "captions";
        index_sidecars(dir, images, cfg, index);
    } else if (!images.empty()) {
        index->layout  = "imagefolder";
        index->columns = {"image"};
        check_column("--caption_column", cfg.caption_column, index->columns,
                     dir +
                         "', which has images but no metadata.jsonl/metadata.csv and no "
                         ".txt/.caption files: add captions");
    } else if (!data_files.empty()) {
        index->layout = "records";
        index_record_files(data_files, cfg, index);
    }
}

void apply_max_train_samples(const DatasetConfig& cfg, DatasetIndex* index) {
    const int64_t n = static_cast<int64_t>(index->records.size());
    if (cfg.max_train_samples < 0) return;
    if (cfg.max_train_samples >= n) {
        log_warn("--max_train_samples %lld >= dataset size %lld: using every example",
                 static_cast<long long>(cfg.max_train_samples), static_cast<long long>(n));
        return;
    }
    Rng rng(cfg.seed);
    const auto perm = random_permutation(n, rng);
    std::vector<Record> kept;
    for (int64_t i = 0; i < cfg.max_train_samples; ++i) kept.push_back(index->records[perm[i]]);
    index->records = std::move(kept);
}

}  // namespace

DatasetIndex index_dataset(const DatasetConfig& cfg) {
    // The script: `if args.dataset_name is not None: ... else: imagefolder(train_data_dir)`.
    const bool by_name       = !cfg.dataset_name.empty();
    const std::string flag   = by_name ? "--dataset_name" : "--train_data_dir";
    const std::string source = by_name ? cfg.dataset_name : cfg.train_data_dir;
    if (source.empty())
        throw std::runtime_error(
            "need --dataset_name or --train_data_dir: a local folder of "
            "images with metadata.jsonl/metadata.csv or .txt captions, or "
            "a .json/.jsonl/.csv file of records");
    DatasetIndex index;
    index.source = source;
    if (io::dir_exists(source) || io::file_exists(source)) {
        const fs::path folder =
            io::dir_exists(source) ? fs::path(source) : fs::absolute(source).parent_path();
        index.root        = fs::canonical(folder).string();
        index.linked_root = hf_cache_blobs(index.root);
    }
    const ArrowFiles saved = io::dir_exists(source) ? find_saved_dataset(source) : ArrowFiles{};
    if (!saved.layout.empty()) {
        index_arrow(saved, cfg, &index);
    } else if (io::dir_exists(source)) {
        index_folder(source, cfg, &index);
    } else if (io::file_exists(source)) {
        const std::string ext = lower_ext(source);
        if (ext == ".parquet" || ext == ".arrow") {
            index_arrow({ext.substr(1), index.root, {source}}, cfg, &index);
        } else if (ext != ".json" && ext != ".jsonl" && ext != ".csv") {
            throw std::runtime_error(flag + " '" + source +
                                     "': expected a folder, a .json, .jsonl or .csv file of "
                                     "records, or a .parquet / .arrow file");
        } else {
            index.layout = "records";
            index_record_files({fs::path(source)}, cfg, &index);
        }
    } else {
        throw_missing_source(flag, source);
    }
    if (index.records.empty())
        throw std::runtime_error("dataset '" + source +
                                 "' has no examples (no images listed in "
                                 "metadata, no records, no captioned images)");
    apply_max_train_samples(cfg, &index);
    return index;
}

CaptionDataset CaptionDataset::open(const DatasetConfig& config,
                                    tokenizer::CLIPTokenizer tokenizer) {
    DatasetIndex index = index_dataset(config);
    log_info("dataset '%s' (%s): %lld examples", index.source.c_str(), index.layout.c_str(),
             static_cast<long long>(index.records.size()));
    warn_truncated_captions(index, tokenizer, config.text_clean);
    return CaptionDataset(config, std::move(index), std::move(tokenizer));
}

const std::string& CaptionDataset::image_file(int64_t i) const {
    const Record& rec = record(i);
    return rec.shard_row.shard < 0 ? rec.image_path : index_.shards.at(rec.shard_row.shard);
}

torch::Tensor CaptionDataset::decode(const Record& rec) const {
    try {  // PIL: Image.open(...).convert("RGB"); datasets' Image feature: from its bytes
        if (rec.shard_row.shard < 0) return io::decode_image(rec.image_path);
        return io::decode_image_bytes(index_.shard_reader->image_bytes(rec.shard_row),
                                      rec.image_path);
    } catch (const std::exception& e) {
        throw BadSampleError(e.what());
    }
}

Example CaptionDataset::get(int64_t i, Rng& rng, const TargetSize* target) const {
    const Record& rec         = record(i);
    const torch::Tensor image = decode(rec);
    Example ex;
    try {
        ex.pixel_values =
            target ? sized_transform(image, config_.transform, *target, &rng, nullptr, &ex.flipped)
                   : train_transform(image, config_.transform, rng, &ex.flipped);
    } catch (const std::exception& e) {
        throw BadSampleError("image '" + rec.image_path + "': " + e.what());
    }
    choose_caption(rec, rng, &ex);
    return ex;
}

void CaptionDataset::choose_caption(const Record& rec, Rng& rng, Example* ex) const {
    // tokenize_captions: random.choice among a list (is_train=True).
    const size_t n    = rec.captions.size();
    ex->caption_index = n == 1 ? 0 : static_cast<int64_t>(rng_uniform_index(rng, n));
    ex->caption       = rec.captions[static_cast<size_t>(ex->caption_index)];
    // kohya's process_caption: dropout first, else the tag shuffle (draws only when enabled).
    const auto& o = config_.captions;
    if (o.dropout_rate > 0 && rng_uniform01(rng) < o.dropout_rate)
        ex->caption = "";
    else if (o.shuffle)
        ex->caption = shuffle_caption_tags(ex->caption, o.keep_tokens, rng);
    ex->input_ids = input_ids(ex->caption);  // [77]
}

torch::Tensor CaptionDataset::input_ids(const std::string& caption) const {
    return torch::tensor(tokenizer_(caption, config_.text_clean).input_ids, torch::kInt64);
}

Example CaptionDataset::draw(int64_t i, Rng& rng) const {
    Example ex;
    ex.flipped = draw_flip(config_.transform, rng);
    choose_caption(record(i), rng, &ex);
    return ex;
}

io::ImageSize CaptionDataset::image_size(int64_t i) const {
    const Record& rec = record(i);
    if (rec.shard_row.shard < 0) return io::read_image_size(rec.image_path);
    // A row of a Parquet / Arrow dataset: the header of its image bytes.
    return io::read_image_size_bytes(index_.shard_reader->image_bytes(rec.shard_row),
                                     rec.image_path);
}

torch::Tensor CaptionDataset::fixed_pixels(int64_t i, bool flip, const TargetSize* target) const {
    const Record& rec         = record(i);
    const torch::Tensor image = decode(rec);
    try {
        return target ? sized_transform(image, config_.transform, *target, nullptr, &flip)
                      : fixed_transform(image, config_.transform, flip);
    } catch (const CropChoiceError& e) {  // a flag problem, not a bad image
        throw std::runtime_error("image '" + rec.image_path + "' " + e.what());
    } catch (const std::exception& e) {
        throw BadSampleError("image '" + rec.image_path + "': " + e.what());
    }
}

}  // namespace t2i::data
