// Implements: reading a dataset's metadata file (metadata.jsonl / .json / .csv, as Hugging Face's
// json and csv loaders do) into rows of JSON objects, with the columns in file order.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace t2i::data {

// A data file read into rows of JSON objects (CSV cells become strings).
struct Table {
    std::string file;
    std::vector<std::string> columns;  // in order of first appearance
    std::vector<nlohmann::ordered_json> rows;
};

// .jsonl: one object per line. .json: an array of objects (or, as HF's json loader falls back
// to, JSON lines). .csv: a header row (RFC 4180: quoted fields with "" escapes and embedded
// newlines; CRLF or LF; a UTF-8 BOM skipped). Text is UTF-8, or UTF-16 with a byte-order mark
// (io::read_utf8_file); at most io::kMaxDataFileBytes. Throws naming the file and the line or
// record for malformed input.
Table read_table(const std::string& file);

// Appends `name` to `columns` unless it is there (the order of first appearance).
void add_column(std::vector<std::string>* columns, const std::string& name);

// The script's error for a --image_column / --caption_column (`flag`) `value` that is not one
// of `columns`, the columns of `file` (any layout: metadata, Parquet, Arrow).
void check_column(const std::string& flag, const std::string& value,
                  const std::vector<std::string>& columns, const std::string& file);

}  // namespace t2i::data
