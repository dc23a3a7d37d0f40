// Implements: arrow_writer.h through Arrow's builders, parquet::arrow::WriteTable and the IPC
// stream writer.
// Mirrors: datasets' ArrowWriter / to_parquet output for an Image column and a caption column.
#include "arrow_writer.h"

#include <arrow/api.h>
#include <arrow/io/file.h>
#include <arrow/ipc/writer.h>
#include <gtest/gtest.h>
#include <parquet/arrow/writer.h>

#include <stdexcept>

namespace t2i::testing {
namespace {

// Every Arrow call that writes a test's dataset must succeed: a failure fails the test (and
// stops the writer) with Arrow's message.
void check(const arrow::Status& st) {
    EXPECT_TRUE(st.ok()) << "arrow_writer: " << st.ToString();
    if (!st.ok()) throw std::runtime_error("arrow_writer: " + st.ToString());
}

template <typename T>
T value(arrow::Result<T> r) {
    check(r.status());
    return std::move(r).ValueUnsafe();
}

std::shared_ptr<arrow::RecordBatch> make_batch(const ArrowTestTable& t) {
    // image: struct<bytes: binary, path: string>, as datasets' Image feature stores it.
    auto image_type = arrow::struct_(
        {arrow::field("bytes", arrow::binary()), arrow::field("path", arrow::utf8())});
    arrow::StructBuilder image(
        image_type, arrow::default_memory_pool(),
        {std::make_shared<arrow::BinaryBuilder>(), std::make_shared<arrow::StringBuilder>()});
    auto* bytes      = static_cast<arrow::BinaryBuilder*>(image.field_builder(0));
    auto* path       = static_cast<arrow::StringBuilder*>(image.field_builder(1));
    auto text_values = std::make_shared<arrow::StringBuilder>();
    arrow::ListBuilder text_list(arrow::default_memory_pool(), text_values);
    arrow::StringBuilder text_string;
    arrow::Int64Builder text_int;
    for (const auto& row : t.rows) {
        check(image.Append());
        check(row.has_bytes ? bytes->Append(row.bytes) : bytes->AppendNull());
        check(row.path.empty() ? path->AppendNull() : path->Append(row.path));
        check(text_list.Append());
        for (const auto& c : row.captions) check(text_values->Append(c));
        check(text_string.Append(row.captions.at(0)));
        check(text_int.Append(7));
    }
    std::shared_ptr<arrow::Array> image_array, text_array;
    check(image.Finish(&image_array));
    if (t.caption_int)
        check(text_int.Finish(&text_array));
    else if (t.caption_list)
        check(text_list.Finish(&text_array));
    else
        check(text_string.Finish(&text_array));
    auto schema = arrow::schema({arrow::field(t.image_column, image_array->type()),
                                 arrow::field(t.caption_column, text_array->type())});
    return arrow::RecordBatch::Make(schema, image_array->length(), {image_array, text_array});
}

}  // namespace

void write_parquet(const std::string& path, const ArrowTestTable& table, int64_t rows_per_group) {
    const auto batch = make_batch(table);
    const auto t     = value(arrow::Table::FromRecordBatches({batch}));
    auto out         = value(arrow::io::FileOutputStream::Open(path));
    check(parquet::arrow::WriteTable(*t, arrow::default_memory_pool(), out, rows_per_group));
    check(out->Close());
}

void write_arrow_stream(const std::string& path, const ArrowTestTable& table,
                        int64_t rows_per_batch) {
    const auto batch = make_batch(table);
    auto out         = value(arrow::io::FileOutputStream::Open(path));
    auto writer      = value(arrow::ipc::MakeStreamWriter(out, batch->schema()));
    for (int64_t off = 0; off < batch->num_rows(); off += rows_per_batch)
        check(writer->WriteRecordBatch(*batch->Slice(off, rows_per_batch)));
    check(writer->Close());
    check(out->Close());
}

}  // namespace t2i::testing
