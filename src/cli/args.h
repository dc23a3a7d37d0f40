// Implements: the flag machinery every command uses: a table of flags (name, target, help) that
// drives parsing, --help and error messages. `--flag value` and `--flag=value`; `--` ends flags.
// A bad flag or value throws UsageError, which main turns into exit code 2.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace t2i::cli {

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class ArgParser {
  public:
    ArgParser(std::string usage, std::string description);

    void add_flag(const std::string& name, bool* target, const std::string& help);
    void add_option(const std::string& name, std::string* target, const std::string& metavar,
                    const std::string& help);
    void add_option(const std::string& name, int* target, const std::string& metavar,
                    const std::string& help);
    // Typed options for flag tables (training/train_config.h): `add(field, name, help)`.
    void add(bool& target, const std::string& name, const std::string& help);
    void add(std::string& target, const std::string& name, const std::string& help);
    void add(int64_t& target, const std::string& name, const std::string& help);
    void add(double& target, const std::string& name, const std::string& help);
    void add(std::optional<std::string>& target, const std::string& name, const std::string& help);
    void add(std::optional<int64_t>& target, const std::string& name, const std::string& help);
    void add(std::optional<double>& target, const std::string& name, const std::string& help);
    // A value type of its own: `static T parse(const std::string&)` (throws
    // std::invalid_argument, reported naming the flag), `std::string str() const` (the default
    // shown by --help) and `static const char* metavar()` (e.g. training::Resolution).
    template <typename T, typename = decltype(T::parse(std::string()))>
    void add(T& target, const std::string& name, const std::string& help) {
        add_parsed(name, T::metavar(), target.str(), help,
                   [t = &target](const std::string& v) { *t = T::parse(v); });
    }
    // One or more values: `--name a b c` (up to the next flag).
    void add(std::vector<std::string>& target, const std::string& name, const std::string& help);
    // A string option whose value must be one of `choices`.
    void add_choice(const std::string& name, std::string* target,
                    const std::vector<std::string>& choices, const std::string& help);
    // Remaining non-flag arguments, in order.
    void add_positionals(std::vector<std::string>* target, const std::string& metavar,
                         const std::string& help, size_t min_count);

    // Returns false when --help was printed (the command should exit 0).
    bool parse(const std::vector<std::string>& args);
    std::string help() const;
    // Whether --name was on the command line (parse() seen it).
    bool given(const std::string& name) const { return given_.count(name) > 0; }

  private:
    struct Spec {
        std::string name, metavar, help, default_text;
        bool takes_value;
        std::function<void(const std::string& value)> set;
        bool is_list = false;
    };
    const Spec* find(const std::string& name) const;
    void add_parsed(const std::string& name, const std::string& metavar,
                    const std::string& default_text, const std::string& help,
                    std::function<void(const std::string&)> set);

    std::string usage_, description_;
    std::vector<Spec> specs_;
    std::vector<std::string>* positionals_ = nullptr;
    std::string positional_metavar_, positional_help_;
    size_t positional_min_ = 0;
    std::set<std::string> given_;
};

}  // namespace t2i::cli
