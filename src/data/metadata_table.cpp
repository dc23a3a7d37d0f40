// Implements: data/metadata_table.h: RFC 4180 CSV, JSON arrays and JSON lines into rows of JSON
// objects.
#include "data/metadata_table.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <sstream>
#include <stdexcept>

#include "io/file_util.h"
#include "io/text.h"
#include "util/log.h"

namespace t2i::data {

using json = nlohmann::ordered_json;  // keeps the columns in file order, as HF does

namespace {

std::string lower_extension(const std::string& file) {
    std::string ext = std::filesystem::path(file).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(),
                   [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    return ext;
}

// RFC 4180 CSV: quoted fields with "" escapes and embedded newlines; CRLF or LF.
std::vector<std::vector<std::string>> parse_csv(const std::string& text, const std::string& file) {
    std::vector<std::vector<std::string>> rows;
    std::vector<std::string> row;
    std::string field;
    bool quoted = false, was_quoted = false;
    size_t i     = text.rfind("\xEF\xBB\xBF", 0) == 0 ? 3 : 0;  // UTF-8 BOM
    auto end_row = [&]() {
        row.push_back(field);
        if (!(row.size() == 1 && row[0].empty() && !was_quoted)) rows.push_back(row);
        row.clear();
        field.clear();
        was_quoted = false;
    };
    for (; i < text.size(); ++i) {
        const char c = text[i];
        if (quoted) {
            if (c != '"')
                field += c;
            else if (i + 1 < text.size() && text[i + 1] == '"')
                field += '"', ++i;
            else
                quoted = false;
        } else if (c == '"' && field.empty()) {
            quoted = was_quoted = true;
        } else if (c == ',') {
            row.push_back(field);
            field.clear();
        } else if (c == '\n' || c == '\r') {
            if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
            end_row();
        } else {
            field += c;
        }
    }
    if (quoted) throw std::runtime_error("'" + file + "': unterminated quoted CSV field");
    if (!field.empty() || !row.empty() || was_quoted) end_row();
    return rows;
}

Table read_csv_table(const std::string& file, const std::string& text) {
    Table t{file, {}, {}};
    const auto rows = parse_csv(text, file);
    if (rows.empty()) return t;
    t.columns = rows[0];
    for (size_t r = 1; r < rows.size(); ++r) {
        if (rows[r].size() != t.columns.size())
            throw std::runtime_error("'" + file + "': CSV row " + std::to_string(r) + " has " +
                                     std::to_string(rows[r].size()) + " fields, the header has " +
                                     std::to_string(t.columns.size()));
        json row = json::object();
        for (size_t c = 0; c < t.columns.size(); ++c) row[t.columns[c]] = rows[r][c];
        t.rows.push_back(std::move(row));
    }
    return t;
}

std::vector<json> parse_json_lines(const std::string& text, const std::string& file) {
    std::vector<json> rows;
    std::istringstream in(text);
    std::string line;
    for (int line_no = 1; std::getline(in, line); ++line_no) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        try {
            rows.push_back(json::parse(line));
        } catch (const json::parse_error& e) {
            throw std::runtime_error("'" + file + "' line " + std::to_string(line_no) +
                                     ": invalid JSON: " + e.what());
        }
    }
    return rows;
}

}  // namespace

void add_column(std::vector<std::string>* columns, const std::string& name) {
    if (std::find(columns->begin(), columns->end(), name) == columns->end())
        columns->push_back(name);
}

Table read_table(const std::string& file) {
    const std::string text = io::read_utf8_file(file, io::kMaxDataFileBytes);
    const std::string ext  = lower_extension(file);
    if (ext == ".csv") return read_csv_table(file, text);
    Table t{file, {}, {}};
    if (ext == ".json") {
        json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
        if (doc.is_array())
            t.rows.assign(doc.begin(), doc.end());
        else if (doc.is_object())
            throw std::runtime_error("'" + file +
                                     "' holds one JSON object; expected an array of "
                                     "records [{\"image\": ..., \"text\": ...}, ...]");
        else
            t.rows = parse_json_lines(text, file);
    } else {
        t.rows = parse_json_lines(text, file);
    }
    for (size_t r = 0; r < t.rows.size(); ++r) {
        if (!t.rows[r].is_object())
            throw std::runtime_error("'" + file + "': record " + std::to_string(r) +
                                     " is not a JSON object");
        for (const auto& item : t.rows[r].items()) add_column(&t.columns, item.key());
    }
    return t;
}

void check_column(const std::string& flag, const std::string& value,
                  const std::vector<std::string>& columns, const std::string& file) {
    if (std::find(columns.begin(), columns.end(), value) != columns.end()) return;
    throw std::runtime_error(flag + " value '" + value + "' needs to be one of: " + join(columns) +
                             " (the columns of '" + file + "')");
}

}  // namespace t2i::data
