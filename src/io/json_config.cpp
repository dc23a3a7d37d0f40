// Implements: io/json_config.h.
#include "io/json_config.h"

#include <cstdio>

#include "io/file_util.h"

namespace t2i::io {

namespace {

const char* type_name(const nlohmann::json& j) {
    switch (j.type()) {
        case nlohmann::json::value_t::array:
            return "an array";
        case nlohmann::json::value_t::string:
            return "a string";
        case nlohmann::json::value_t::null:
            return "null";
        case nlohmann::json::value_t::boolean:
            return "a boolean";
        default:
            return j.is_number() ? "a number" : "a value";
    }
}

std::string format_number(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.10g", v);
    return buf;
}

}  // namespace

JsonConfig::JsonConfig(nlohmann::json json, std::string path)
    : json_(std::move(json)), path_(std::move(path)) {
    if (!json_.is_object())
        throw std::runtime_error("config '" + path_ +
                                 "': expected a JSON object {\"key\": value, " +
                                 "...} at the top level, found " + type_name(json_));
}

void JsonConfig::fail(const std::string& key, const std::string& what) const {
    throw std::runtime_error("config '" + path_ + "': '" + key + "' " + what);
}

void JsonConfig::check_range(const std::string& key, double value, double lo, double hi,
                             const std::string& why) const {
    if (value >= lo && value <= hi) return;
    fail(key, "must be in [" + format_number(lo) + ", " + format_number(hi) + "]" +
                  (why.empty() ? "" : " (" + why + ")") + ", got " + format_number(value));
}

JsonConfig read_json(const std::string& path) {
    const std::string text = read_text_file(path, kMaxConfigFileBytes);
    nlohmann::json json;
    try {
        json = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error("cannot parse JSON file '" + path + "': " + e.what());
    }
    return JsonConfig(std::move(json), path);
}

std::vector<int64_t> JsonConfig::get_int_or_list(const std::string& key, size_t n,
                                                 int64_t fallback) const {
    if (!has(key)) return std::vector<int64_t>(n, fallback);
    const auto& v = json_.at(key);
    if (v.is_number_integer()) return std::vector<int64_t>(n, v.get<int64_t>());
    if (v.is_array()) {
        auto out = convert<std::vector<int64_t>>(key, v);
        if (out.size() != n)
            throw std::runtime_error("config '" + path_ + "': key '" + key + "' has " +
                                     std::to_string(out.size()) + " entries but " +
                                     std::to_string(n) + " are expected (one per block)");
        return out;
    }
    throw std::runtime_error("config '" + path_ + "': key '" + key +
                             "' must be an int or a list of ints, got " + v.dump());
}

}  // namespace t2i::io
