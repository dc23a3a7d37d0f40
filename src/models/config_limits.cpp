// Implements: models/config_limits.h.
#include "models/config_limits.h"

#include <cstdio>
#include <stdexcept>

#include "util/machine.h"

namespace t2i::models {

void check_parameter_budget(const io::JsonConfig& config, double parameters) {
    const double ram   = static_cast<double>(physical_memory_bytes());
    const double bytes = parameters * 4.0;
    if (ram <= 0 || bytes <= ram) return;
    char msg[256];
    std::snprintf(msg, sizeof msg,
                  "describes a model of about %.3g parameters (%.1f GB in fp32), more than this "
                  "machine's %.1f GB of memory; check the channel, layer and block counts",
                  parameters, bytes / 1e9, ram / 1e9);
    throw std::runtime_error("config '" + config.path() + "' " + msg);
}

void check_each(const io::JsonConfig& config, const std::string& key,
                const std::vector<int64_t>& values, double lo, double hi, const std::string& why) {
    for (size_t i = 0; i < values.size(); ++i)
        config.check_range(values.size() == 1 ? key : key + "[" + std::to_string(i) + "]",
                           static_cast<double>(values[i]), lo, hi, why);
}

}  // namespace t2i::models
