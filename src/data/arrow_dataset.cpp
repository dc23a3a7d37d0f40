// Implements: arrow_dataset.h read_arrow_dataset and the ShardReaders, through Apache Arrow's
// own C++ readers: parquet::arrow::FileReader one row group at a time (only the caption and the
// Image feature's `path` leaves while indexing; a row's `bytes` later, from a small cache of
// row groups), and the Arrow IPC stream (or file) format memory-mapped, as datasets reads its
// cache files: record batches are zero-copy views of the mapping, so holding them holds no image
// bytes in memory.
// Mirrors: datasets' packaged parquet / arrow builders and load_from_disk; the Image feature's
// storage (features/image.py: struct {bytes: binary, path: string}; bytes null -> read `path`).
// Compiled only with T2I_WITH_ARROW, as C++20 (Arrow's headers need it); it includes no torch.
#include "data/arrow_dataset.h"

#include <arrow/api.h>
#include <arrow/io/file.h>
#include <arrow/ipc/reader.h>
#include <parquet/arrow/reader.h>
#include <parquet/file_reader.h>
#include <parquet/metadata.h>
#include <parquet/schema.h>
#include <parquet/statistics.h>

#include <algorithm>
#include <list>
#include <mutex>
#include <stdexcept>

#include "data/metadata_table.h"
#include "util/log.h"

namespace t2i::data {
namespace {

// Decoded image columns of Parquet row groups kept for later rows of the same group (a group
// of the Hub's image datasets holds 100 images).
constexpr int64_t kRowGroupCacheBytes = 256ll << 20;

void check(const arrow::Status& st, const std::string& what) {
    if (!st.ok()) throw std::runtime_error(what + ": " + st.ToString());
}

template <typename T>
T value(arrow::Result<T> r, const std::string& what) {
    check(r.status(), what);
    return std::move(r).ValueUnsafe();
}

// A string / binary cell's bytes; false when `a` holds neither.
bool cell_bytes(const arrow::Array& a, int64_t i, std::string_view* out) {
    switch (a.type_id()) {
        case arrow::Type::STRING:
        case arrow::Type::BINARY:
            *out = static_cast<const arrow::BinaryArray&>(a).GetView(i);
            return true;
        case arrow::Type::LARGE_STRING:
        case arrow::Type::LARGE_BINARY:
            *out = static_cast<const arrow::LargeBinaryArray&>(a).GetView(i);
            return true;
        case arrow::Type::STRING_VIEW:
        case arrow::Type::BINARY_VIEW:
            *out = static_cast<const arrow::BinaryViewArray&>(a).GetView(i);
            return true;
        default:
            return false;
    }
}

bool is_text(const arrow::DataType& t) {
    return t.id() == arrow::Type::STRING || t.id() == arrow::Type::LARGE_STRING ||
           t.id() == arrow::Type::STRING_VIEW;
}

bool is_bytes(const arrow::DataType& t) {
    return t.id() == arrow::Type::BINARY || t.id() == arrow::Type::LARGE_BINARY ||
           t.id() == arrow::Type::BINARY_VIEW || is_text(t);
}

// What the image column holds: the Image feature's struct, raw bytes, or a path.
enum class ImageKind { kStruct, kBytes, kPath };

ImageKind image_kind(const arrow::Field& f, const std::string& file) {
    const auto& t = *f.type();
    if (t.id() == arrow::Type::STRUCT) {
        const auto& s    = static_cast<const arrow::StructType&>(t);
        const auto bytes = s.GetFieldByName("bytes");
        const auto path  = s.GetFieldByName("path");
        if (bytes && is_bytes(*bytes->type()) && (!path || is_text(*path->type())))
            return ImageKind::kStruct;
    } else if (t.id() == arrow::Type::BINARY || t.id() == arrow::Type::LARGE_BINARY ||
               t.id() == arrow::Type::BINARY_VIEW) {
        return ImageKind::kBytes;
    } else if (is_text(t)) {
        return ImageKind::kPath;
    }
    throw std::runtime_error("image column `" + f.name() + "` of '" + file + "' has the type " +
                             t.ToString() +
                             "; expected the datasets Image feature (struct<bytes: binary, path: "
                             "string>), binary image bytes, or a string path");
}

// The script's tokenize_captions: a str, or a list of str (one chosen per access).
std::vector<std::string> captions_at(const arrow::Array& a, int64_t i, const std::string& column,
                                     const std::string& at) {
    std::vector<std::string> out;
    std::string_view v;
    bool ok = !a.IsNull(i);
    if (ok && cell_bytes(a, i, &v) && is_text(*a.type())) {
        out.emplace_back(v);
    } else if (ok && (a.type_id() == arrow::Type::LIST || a.type_id() == arrow::Type::LARGE_LIST)) {
        std::shared_ptr<arrow::Array> values;
        int64_t from = 0, n = 0;
        if (a.type_id() == arrow::Type::LIST) {
            const auto& list = static_cast<const arrow::ListArray&>(a);
            values = list.values(), from = list.value_offset(i), n = list.value_length(i);
        } else {
            const auto& list = static_cast<const arrow::LargeListArray&>(a);
            values = list.values(), from = list.value_offset(i), n = list.value_length(i);
        }
        for (int64_t k = 0; ok && k < n; ++k) {
            ok = is_text(*values->type()) && !values->IsNull(from + k) &&
                 cell_bytes(*values, from + k, &v);
            if (ok) out.emplace_back(v);
        }
        ok = ok && !out.empty();
    } else {
        ok = false;
    }
    if (!ok)
        throw std::runtime_error("Caption column `" + column +
                                 "` should contain either strings or lists of strings; " + at +
                                 " has " + (a.IsNull(i) ? "null" : "a " + a.type()->ToString()));
    return out;
}

// One chunk's rows (part of a row group, or a record batch) -> index rows; `at.row` is the
// chunk's first row in its row group / batch, `first_row` in its shard.
// `bytes_read`: the image's bytes are in `image` (else they are known not to be null).
void index_chunk(const arrow::Array& caption, const arrow::Array& image, ImageKind kind,
                 bool bytes_read, ShardRow at, int64_t first_row, const std::string& file,
                 const std::string& image_column, const std::string& caption_column,
                 ArrowIndex* index) {
    std::shared_ptr<arrow::Array> bytes, path;
    if (kind == ImageKind::kStruct) {
        const auto& s = static_cast<const arrow::StructArray&>(image);
        bytes         = s.GetFieldByName("bytes");
        path          = s.GetFieldByName("path");
    }
    for (int64_t r = 0; r < caption.length(); ++r) {
        ArrowRow row;
        row.at       = at;
        row.at.row   = at.row + r;  // `at.row`: the chunk's first row
        row.name     = file + "[" + std::to_string(first_row + r) + "]";
        const auto w = "'" + file + "' row " + std::to_string(first_row + r);
        row.captions = captions_at(caption, r, caption_column, w);
        std::string_view v;
        if (image.IsNull(r))
            throw std::runtime_error(w + ": the image column `" + image_column + "` is null");
        if (kind == ImageKind::kPath) {
            cell_bytes(image, r, &v);
            row.image_file = std::string(v);
        } else if (kind == ImageKind::kStruct && bytes_read && bytes && bytes->IsNull(r)) {
            // datasets' Image.decode_example: no bytes -> open `path`.
            if (!path || path->IsNull(r) || !cell_bytes(*path, r, &v) || v.empty())
                throw std::runtime_error(w + ": the image column `" + image_column +
                                         "` has neither bytes nor a path");
            row.image_file = std::string(v);
        }
        index->rows.push_back(std::move(row));
    }
}

// The bytes of an image column chunk: the struct's `bytes` field, or the column itself.
std::shared_ptr<arrow::Array> bytes_of(const std::shared_ptr<arrow::Array>& image) {
    if (image->type_id() != arrow::Type::STRUCT) return image;
    return static_cast<const arrow::StructArray&>(*image).GetFieldByName("bytes");
}

std::string bytes_at(const arrow::Array& bytes, int64_t row, const std::string& where) {
    std::string_view v;
    if (row < 0 || row >= bytes.length() || bytes.IsNull(row) || !cell_bytes(bytes, row, &v))
        throw std::runtime_error(where +
                                 ": no image bytes (the file changed since it was indexed?)");
    return std::string(v);
}

// ---- Parquet ----

struct ParquetLeaves {
    std::vector<int> caption;  // every leaf of the caption column
    int path  = -1;            // the Image struct's `path` leaf, or a path column's
    int bytes = -1;            // its `bytes` leaf, or a binary column's
};

ParquetLeaves find_leaves(const parquet::SchemaDescriptor& schema, const std::string& image,
                          const std::string& caption, ImageKind kind) {
    ParquetLeaves l;
    for (int i = 0; i < schema.num_columns(); ++i) {
        const std::vector<std::string> p =
            schema.Column(i)->path()->ToDotVector();  // a copy: path() is a temporary
        if (p[0] == caption) l.caption.push_back(i);
        if (p[0] != image) continue;
        if (kind == ImageKind::kStruct && p.size() == 2 && p[1] == "bytes") l.bytes = i;
        if (kind == ImageKind::kStruct && p.size() == 2 && p[1] == "path") l.path = i;
        if (kind == ImageKind::kBytes) l.bytes = i;
        if (kind == ImageKind::kPath) l.path = i;
    }
    return l;
}

std::unique_ptr<parquet::arrow::FileReader> open_parquet(const std::string& path) {
    const std::string what = "cannot read Parquet file '" + path + "'";
    auto file              = value(arrow::io::ReadableFile::Open(path), what);
    return value(parquet::arrow::OpenFile(file, arrow::default_memory_pool()), what);
}

class ParquetReader : public ShardReader {
  public:
    void add_shard(std::string path, int bytes_leaf) {
        shards_.push_back(std::make_unique<Shard>());
        shards_.back()->path       = std::move(path);
        shards_.back()->bytes_leaf = bytes_leaf;
    }

    std::string image_bytes(const ShardRow& at) const override {
        const auto& shard       = *shards_.at(static_cast<size_t>(at.shard));
        const std::string where = "'" + shard.path + "' row group " + std::to_string(at.chunk) +
                                  " row " + std::to_string(at.row);
        const auto group = row_group(shard, at);
        int64_t row      = at.row;  // the row group's rows may come in several chunks
        for (const auto& chunk : group->chunks()) {
            if (row < chunk->length()) return bytes_at(*bytes_of(chunk), row, where);
            row -= chunk->length();
        }
        throw std::runtime_error(where + ": the row group has only " +
                                 std::to_string(group->length()) + " rows");
    }

  private:
    struct Shard {
        std::string path;
        int bytes_leaf = -1;
        mutable std::mutex mutex;  // parquet::arrow::FileReader is not thread safe
        mutable std::unique_ptr<parquet::arrow::FileReader> reader;
    };
    struct Entry {
        int32_t shard, chunk;
        std::shared_ptr<arrow::ChunkedArray> column;
        int64_t bytes;
    };

    std::shared_ptr<arrow::ChunkedArray> find_cached(const ShardRow& at) const {
        std::lock_guard<std::mutex> lock(cache_mutex_);
        for (auto it = cache_.begin(); it != cache_.end(); ++it)
            if (it->shard == at.shard && it->chunk == at.chunk) {
                cache_.splice(cache_.begin(), cache_, it);  // most recently used first
                return it->column;
            }
        return nullptr;
    }

    // Row group `at.chunk`'s image column, from the cache or the file. Locks: the shard's, then
    // the cache's (never the other way), so a worker that waited for another's read of the same
    // row group finds it cached.
    std::shared_ptr<arrow::ChunkedArray> row_group(const Shard& shard, const ShardRow& at) const {
        if (auto cached = find_cached(at)) return cached;
        std::lock_guard<std::mutex> shard_lock(shard.mutex);
        if (auto cached = find_cached(at)) return cached;
        if (!shard.reader) shard.reader = open_parquet(shard.path);
        const auto table =
            value(shard.reader->ReadRowGroup(at.chunk, {shard.bytes_leaf}),
                  "cannot read row group " + std::to_string(at.chunk) + " of '" + shard.path + "'");
        auto column   = table->column(0);
        int64_t bytes = 0;
        for (const auto& c : column->chunks())
            for (const auto& b : bytes_of(c)->data()->buffers)
                if (b) bytes += b->size();
        std::lock_guard<std::mutex> lock(cache_mutex_);
        cache_.push_front({at.shard, at.chunk, column, bytes});
        cached_bytes_ += bytes;
        while (cache_.size() > 1 && cached_bytes_ > kRowGroupCacheBytes) {
            cached_bytes_ -= cache_.back().bytes;
            cache_.pop_back();
        }
        return column;
    }

    std::vector<std::unique_ptr<Shard>> shards_;
    mutable std::mutex cache_mutex_;
    mutable std::list<Entry> cache_;
    mutable int64_t cached_bytes_ = 0;
};

// Every row group of one Parquet shard: the caption leaves and the image's `path` leaf; its
// `bytes` leaf only for row groups whose statistics do not rule out null bytes.
void index_parquet_shard(int32_t shard, const std::string& path, const std::string& image_column,
                         const std::string& caption_column, ArrowIndex* index,
                         ParquetReader* reader) {
    auto file = open_parquet(path);
    std::shared_ptr<arrow::Schema> schema;
    check(file->GetSchema(&schema), "cannot read the schema of Parquet file '" + path + "'");
    if (index->columns.empty()) index->columns = schema->field_names();
    check_column("--image_column", image_column, schema->field_names(), path);
    check_column("--caption_column", caption_column, schema->field_names(), path);
    const ImageKind kind = image_kind(*schema->GetFieldByName(image_column), path);
    const auto meta      = file->parquet_reader()->metadata();
    const auto leaves    = find_leaves(*meta->schema(), image_column, caption_column, kind);
    if (leaves.caption.empty() || (kind != ImageKind::kPath && leaves.bytes < 0))
        throw std::runtime_error("Parquet file '" + path + "': cannot find the leaf columns of `" +
                                 image_column + "` / `" + caption_column + "` in its schema");
    reader->add_shard(path, leaves.bytes);
    int64_t first_row = 0;
    for (int g = 0; g < file->num_row_groups(); ++g) {
        bool bytes_null_free = false;
        if (leaves.bytes >= 0) {
            const auto chunk = meta->RowGroup(g)->ColumnChunk(leaves.bytes);
            const auto stats = chunk->is_stats_set() ? chunk->statistics() : nullptr;
            bytes_null_free  = stats && stats->HasNullCount() && stats->null_count() == 0;
        }
        std::vector<int> cols = leaves.caption;
        if (leaves.path >= 0) cols.push_back(leaves.path);
        if (leaves.bytes >= 0 && (!bytes_null_free || leaves.path < 0))
            cols.push_back(leaves.bytes);
        const auto table =
            value(file->ReadRowGroup(g, cols),
                  "cannot read row group " + std::to_string(g) + " of '" + path + "'");
        // The table's columns may be chunked differently: walk it as aligned record batches.
        arrow::TableBatchReader batches(*table);
        for (int64_t row_in_group = 0;;) {
            std::shared_ptr<arrow::RecordBatch> batch;
            check(batches.ReadNext(&batch),
                  "cannot read row group " + std::to_string(g) + " of '" + path + "'");
            if (!batch) break;
            index_chunk(*batch->GetColumnByName(caption_column),
                        *batch->GetColumnByName(image_column), kind, !bytes_null_free,
                        {shard, g, row_in_group}, first_row, path, image_column, caption_column,
                        index);
            row_in_group += batch->num_rows();
            first_row += batch->num_rows();
        }
    }
}

// ---- Arrow IPC (save_to_disk, .arrow files) ----

class IpcReader : public ShardReader {
  public:
    std::string image_bytes(const ShardRow& at) const override {
        const auto& shard = shards_.at(static_cast<size_t>(at.shard));
        return bytes_at(*shard.images.at(static_cast<size_t>(at.chunk)), at.row,
                        "'" + shard.path + "' record batch " + std::to_string(at.chunk) + " row " +
                            std::to_string(at.row));
    }

    struct Shard {
        std::string path;
        std::shared_ptr<arrow::io::MemoryMappedFile> map;   // keeps the batches' memory valid
        std::vector<std::shared_ptr<arrow::Array>> images;  // per batch: the image bytes
    };
    std::vector<Shard> shards_;
};

// All record batches of an IPC stream (datasets' cache / save_to_disk files) or IPC file.
std::vector<std::shared_ptr<arrow::RecordBatch>> read_batches(
    const std::shared_ptr<arrow::io::MemoryMappedFile>& map, const std::string& path,
    std::shared_ptr<arrow::Schema>* schema) {
    const std::string what = "cannot read Arrow file '" + path + "'";
    std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
    const auto head = value(map->ReadAt(0, 6), what);
    if (head->ToString() == "ARROW1") {  // the IPC file format (random access, a footer)
        auto reader = value(arrow::ipc::RecordBatchFileReader::Open(map), what);
        *schema     = reader->schema();
        for (int i = 0; i < reader->num_record_batches(); ++i)
            batches.push_back(value(reader->ReadRecordBatch(i), what));
        return batches;
    }
    auto reader = value(arrow::ipc::RecordBatchStreamReader::Open(map), what);
    *schema     = reader->schema();
    for (;;) {
        std::shared_ptr<arrow::RecordBatch> batch;
        check(reader->ReadNext(&batch), what);
        if (!batch) return batches;
        batches.push_back(std::move(batch));
    }
}

void index_ipc_shard(int32_t shard, const std::string& path, const std::string& image_column,
                     const std::string& caption_column, ArrowIndex* index, IpcReader* reader) {
    IpcReader::Shard s;
    s.path = path;
    s.map  = value(arrow::io::MemoryMappedFile::Open(path, arrow::io::FileMode::READ),
                   "cannot open Arrow file '" + path + "'");
    std::shared_ptr<arrow::Schema> schema;
    const auto batches = read_batches(s.map, path, &schema);
    if (index->columns.empty()) index->columns = schema->field_names();
    check_column("--image_column", image_column, schema->field_names(), path);
    check_column("--caption_column", caption_column, schema->field_names(), path);
    const ImageKind kind = image_kind(*schema->GetFieldByName(image_column), path);
    int64_t first_row    = 0;
    for (size_t b = 0; b < batches.size(); ++b) {
        const auto image = batches[b]->GetColumnByName(image_column);
        index_chunk(*batches[b]->GetColumnByName(caption_column), *image, kind, true,
                    {shard, static_cast<int32_t>(b), 0}, first_row, path, image_column,
                    caption_column, index);
        s.images.push_back(kind == ImageKind::kPath ? image : bytes_of(image));
        first_row += batches[b]->num_rows();
    }
    reader->shards_.push_back(std::move(s));
}

}  // namespace

bool arrow_enabled() { return true; }

ArrowIndex read_arrow_dataset(const ArrowFiles& files, const std::string& image_column,
                              const std::string& caption_column) {
    ArrowIndex index;
    if (files.layout == "parquet") {
        auto reader = std::make_shared<ParquetReader>();
        for (size_t i = 0; i < files.shards.size(); ++i)
            index_parquet_shard(static_cast<int32_t>(i), files.shards[i], image_column,
                                caption_column, &index, reader.get());
        index.reader = reader;
    } else {
        auto reader = std::make_shared<IpcReader>();
        for (size_t i = 0; i < files.shards.size(); ++i)
            index_ipc_shard(static_cast<int32_t>(i), files.shards[i], image_column, caption_column,
                            &index, reader.get());
        index.reader = reader;
    }
    return index;
}

}  // namespace t2i::data
