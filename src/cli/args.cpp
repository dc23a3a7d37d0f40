// Implements: cli/args.h.
#include "cli/args.h"

#include <cmath>
#include <cstdio>
#include <sstream>

namespace t2i::cli {

ArgParser::ArgParser(std::string usage, std::string description)
    : usage_(std::move(usage)), description_(std::move(description)) {}

void ArgParser::add_flag(const std::string& name, bool* target, const std::string& help) {
    specs_.push_back({name, "", help, "", false, [target](const std::string&) { *target = true; }});
}

void ArgParser::add_option(const std::string& name, std::string* target, const std::string& metavar,
                           const std::string& help) {
    specs_.push_back(
        {name, metavar, help, *target, true, [target](const std::string& v) { *target = v; }});
}

void ArgParser::add_option(const std::string& name, int* target, const std::string& metavar,
                           const std::string& help) {
    specs_.push_back(
        {name, metavar, help, std::to_string(*target), true, [target, name](const std::string& v) {
             size_t pos = 0;
             int x      = 0;
             try {
                 x = std::stoi(v, &pos);
             } catch (const std::exception&) {
                 pos = 0;
             }
             if (pos != v.size() || v.empty())
                 throw UsageError("--" + name + ": expected an integer, got '" + v + "'");
             *target = x;
         }});
}

namespace {

int64_t parse_int(const std::string& name, const std::string& v) {
    size_t pos = 0;
    int64_t x  = 0;
    try {
        x = std::stoll(v, &pos);
    } catch (const std::exception&) {
        pos = 0;
    }
    if (v.empty() || pos != v.size())
        throw UsageError("--" + name + ": expected an integer, got '" + v + "'");
    return x;
}

double parse_double(const std::string& name, const std::string& v) {
    size_t pos = 0;
    double x   = 0;
    try {
        x = std::stod(v, &pos);
    } catch (const std::exception&) {
        pos = 0;
    }
    if (v.empty() || pos != v.size())
        throw UsageError("--" + name + ": expected a number, got '" + v + "'");
    // No flag means anything by inf or nan, and they would pass every range check (`nan > 0` is
    // false, but so is `nan <= 0`) into the math.
    if (!std::isfinite(x))
        throw UsageError("--" + name + ": expected a finite number, got '" + v + "'");
    return x;
}

std::string format_double(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

}  // namespace

void ArgParser::add(bool& target, const std::string& name, const std::string& help) {
    add_flag(name, &target, help);
}

void ArgParser::add(std::string& target, const std::string& name, const std::string& help) {
    add_option(name, &target, "STR", help);
}

void ArgParser::add(int64_t& target, const std::string& name, const std::string& help) {
    auto* t = &target;
    specs_.push_back({name, "INT", help, std::to_string(target), true,
                      [t, name](const std::string& v) { *t = parse_int(name, v); }});
}

void ArgParser::add(double& target, const std::string& name, const std::string& help) {
    auto* t = &target;
    specs_.push_back({name, "FLOAT", help, format_double(target), true,
                      [t, name](const std::string& v) { *t = parse_double(name, v); }});
}

void ArgParser::add(std::optional<std::string>& target, const std::string& name,
                    const std::string& help) {
    auto* t = &target;
    specs_.push_back(
        {name, "STR", help, target.value_or(""), true, [t](const std::string& v) { *t = v; }});
}

void ArgParser::add(std::optional<int64_t>& target, const std::string& name,
                    const std::string& help) {
    auto* t = &target;
    specs_.push_back({name, "INT", help, target ? std::to_string(*target) : "", true,
                      [t, name](const std::string& v) { *t = parse_int(name, v); }});
}

void ArgParser::add(std::optional<double>& target, const std::string& name,
                    const std::string& help) {
    auto* t = &target;
    specs_.push_back({name, "FLOAT", help, target ? format_double(*target) : "", true,
                      [t, name](const std::string& v) { *t = parse_double(name, v); }});
}

void ArgParser::add_parsed(const std::string& name, const std::string& metavar,
                           const std::string& default_text, const std::string& help,
                           std::function<void(const std::string&)> set) {
    specs_.push_back({name, metavar, help, default_text, true,
                      [name, set = std::move(set)](const std::string& v) {
                          try {
                              set(v);
                          } catch (const std::invalid_argument& e) {
                              throw UsageError("--" + name + ": " + e.what());
                          }
                      }});
}

void ArgParser::add(std::vector<std::string>& target, const std::string& name,
                    const std::string& help) {
    auto* t = &target;
    Spec spec{
        name, "STR [STR ...]", help, "", true, [t](const std::string& v) { t->push_back(v); }};
    spec.is_list = true;
    specs_.push_back(spec);
}

void ArgParser::add_choice(const std::string& name, std::string* target,
                           const std::vector<std::string>& choices, const std::string& help) {
    std::string list;
    for (const auto& c : choices) list += (list.empty() ? "" : "|") + c;
    specs_.push_back(
        {name, list, help, *target, true, [target, name, choices, list](const std::string& v) {
             for (const auto& c : choices)
                 if (c == v) {
                     *target = v;
                     return;
                 }
             throw UsageError("--" + name + ": '" + v + "' is not one of " + list);
         }});
}

void ArgParser::add_positionals(std::vector<std::string>* target, const std::string& metavar,
                                const std::string& help, size_t min_count) {
    positionals_        = target;
    positional_metavar_ = metavar;
    positional_help_    = help;
    positional_min_     = min_count;
}

const ArgParser::Spec* ArgParser::find(const std::string& name) const {
    for (const auto& s : specs_)
        if (s.name == name) return &s;
    return nullptr;
}

bool ArgParser::parse(const std::vector<std::string>& args) {
    bool only_positionals = false;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (only_positionals || a.size() < 2 || a.compare(0, 2, "--") != 0 || a == "-") {
            if (!only_positionals && a.size() > 1 && a[0] == '-' && a != "-")
                throw UsageError("unknown flag '" + a +
                                 "' (see --help; a value starting with '-' "
                                 "goes after --)");
            if (!positionals_) throw UsageError("unexpected argument '" + a + "' (see --help)");
            positionals_->push_back(a);
            continue;
        }
        if (a == "--") {
            only_positionals = true;
            continue;
        }
        if (a == "--help" || a == "-h") {
            std::fputs(help().c_str(), stdout);
            return false;
        }
        std::string name = a.substr(2), value;
        bool has_value   = false;
        if (const auto eq = name.find('='); eq != std::string::npos) {
            value     = name.substr(eq + 1);
            name      = name.substr(0, eq);
            has_value = true;
        }
        const Spec* spec = find(name);
        if (!spec) throw UsageError("unknown flag '--" + name + "' (see --help)");
        given_.insert(name);
        if (spec->takes_value && !has_value) {
            if (i + 1 >= args.size())
                throw UsageError("--" + name + " needs a value (" + spec->metavar + ")");
            value = args[++i];
        } else if (!spec->takes_value && has_value) {
            throw UsageError("--" + name + " is a switch and takes no value");
        }
        if (spec->is_list) {
            // nargs="+": this value and every following one up to the next flag.
            if (!has_value) --i;
            size_t n = has_value ? 1 : 0;
            if (has_value) spec->set(value);
            while (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0) {
                spec->set(args[++i]);
                ++n;
            }
            if (n == 0) throw UsageError("--" + name + " needs at least one value");
            continue;
        }
        spec->set(value);
    }
    if (positionals_ && positionals_->size() < positional_min_)
        throw UsageError("missing " + positional_metavar_ + " (see --help)");
    return true;
}

std::string ArgParser::help() const {
    std::ostringstream out;
    out << "usage: " << usage_ << "\n\n" << description_ << "\n";
    if (positionals_)
        out << "\n  " << positional_metavar_ << "\n      " << positional_help_ << "\n";
    out << "\nflags:\n";
    for (const auto& s : specs_) {
        out << "  --" << s.name;
        if (s.takes_value) out << " " << s.metavar;
        out << "\n      " << s.help;
        if (s.takes_value && !s.default_text.empty()) out << " (default: " << s.default_text << ")";
        out << "\n";
    }
    out << "  --help\n      Show this help and exit.\n";
    return out.str();
}

}  // namespace t2i::cli
