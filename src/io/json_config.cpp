// Implements: io/json_config.h.
#include "io/json_config.h"

#include "io/file_util.h"

namespace t2i::io {

JsonConfig read_json(const std::string& path) {
    const std::string text = read_text_file(path);
    try {
        return JsonConfig(nlohmann::json::parse(text), path);
    } catch (const nlohmann::json::parse_error& e) {
        throw std::runtime_error("cannot parse JSON file '" + path + "': " + e.what());
    }
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
