// Implements: reading a config.json into typed values with errors that name the file and key.
// diffusers' rule: a key that is absent (or null) takes the class default, so every getter with a
// default accepts both.
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace t2i::io {

namespace detail {
template <typename T>
struct is_vector : std::false_type {};
template <typename T>
struct is_vector<std::vector<T>> : std::true_type {};
}  // namespace detail

class JsonConfig {
  public:
    JsonConfig() = default;
    // `json` must be an object: a config that is an array, a string or a number would otherwise
    // read as "every key absent" and silently take the defaults.
    JsonConfig(nlohmann::json json, std::string path);

    const nlohmann::json& json() const { return json_; }
    const std::string& path() const { return path_; }
    bool has(const std::string& key) const {
        return json_.contains(key) && !json_.at(key).is_null();
    }

    // Required value: throws "missing key 'k' in path" or a type error naming both.
    template <typename T>
    T get(const std::string& key) const {
        if (!has(key))
            throw std::runtime_error("config '" + path_ + "': missing key '" + key + "'");
        return convert<T>(key, json_.at(key));
    }

    // Optional value: the default when absent or null.
    template <typename T>
    T get(const std::string& key, const T& fallback) const {
        return has(key) ? convert<T>(key, json_.at(key)) : fallback;
    }

    // Throws "config 'path': 'key' must be in [lo, hi] (why), got value" unless lo <= value <=
    // hi (NaN and infinities fail). Configs are checked with this before anything is allocated.
    void check_range(const std::string& key, double value, double lo, double hi,
                     const std::string& why = "") const;
    // Throws "config 'path': 'key' ..." with `what` appended.
    [[noreturn]] void fail(const std::string& key, const std::string& what) const;

    // An int or a list of ints (diffusers' `attention_head_dim: 8` or `[5, 10, 20, 20]`),
    // broadcast to `n` entries; a list of another length is an error.
    std::vector<int64_t> get_int_or_list(const std::string& key, size_t n, int64_t fallback) const;

  private:
    // nlohmann converts 1.5 to an int silently; a config value of the wrong kind is an error.
    template <typename T>
    static bool json_type_matches(const nlohmann::json& v) {
        if constexpr (std::is_same_v<T, bool>) {
            return v.is_boolean();
        } else if constexpr (std::is_integral_v<T>) {
            return v.is_number_integer();
        } else if constexpr (detail::is_vector<T>::value) {
            if (!v.is_array()) return false;
            for (const auto& e : v)
                if (!json_type_matches<typename T::value_type>(e)) return false;
            return true;
        } else {
            return true;
        }
    }

    template <typename T>
    T convert(const std::string& key, const nlohmann::json& v) const {
        try {
            if (!json_type_matches<T>(v)) throw std::runtime_error("type");
            return v.get<T>();
        } catch (const std::exception&) {
            throw std::runtime_error("config '" + path_ + "': key '" + key + "' has value " +
                                     v.dump() + " of the wrong type");
        }
    }

    nlohmann::json json_;
    std::string path_;
};

// Reads and parses a JSON file holding an object (at most io::kMaxConfigFileBytes); a parse
// error names the file, line and column.
JsonConfig read_json(const std::string& path);

// json.dump() that never throws: strings that are not UTF-8 (flag values, CSV cells, file
// names) are written with U+FFFD in place of the bad bytes instead of raising type_error 316.
template <typename Json>
std::string dump_json(const Json& json, int indent = -1) {
    return json.dump(indent, ' ', false, Json::error_handler_t::replace);
}

}  // namespace t2i::io
