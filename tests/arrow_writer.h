// Implements: writing small Parquet and Arrow IPC datasets for the tests, through Apache Arrow
// itself, laid out as datasets writes them (the Image feature's struct {bytes, path}).
// Mirrors: datasets' Image feature storage (features/image.py) and ArrowWriter (stream format).
// Holds no Arrow type: arrow_writer.cpp is compiled as C++20 (Arrow's headers), the tests as C++17.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace t2i::testing {

struct ArrowTestRow {
    bool has_bytes = true;              // false: the Image struct's bytes are null
    std::string bytes;                  // PNG bytes
    std::string path;                   // the Image struct's path ("" writes null)
    std::vector<std::string> captions;  // a list<string> cell, or captions[0] as a string
};

struct ArrowTestTable {
    std::string image_column   = "image";
    std::string caption_column = "text";
    bool caption_list          = true;   // list<string>; else string
    bool caption_int           = false;  // an int64 caption column instead (a type error)
    std::vector<ArrowTestRow> rows;
};

// `rows_per_group` rows per Parquet row group.
void write_parquet(const std::string& path, const ArrowTestTable& table, int64_t rows_per_group);
// The Arrow IPC stream format (save_to_disk's data-NNNNN-of-NNNNN.arrow), `rows_per_batch` rows
// per record batch.
void write_arrow_stream(const std::string& path, const ArrowTestTable& table,
                        int64_t rows_per_batch);

}  // namespace t2i::testing
