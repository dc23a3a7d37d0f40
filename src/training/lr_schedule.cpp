// Implements: the LR schedule multipliers of diffusers src/diffusers/optimization.py, formula for
// formula (see lr_schedule.h). All arithmetic in double, as Python floats.
#include "training/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>

namespace t2i::training {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Shared by every schedule with warmup: s / max(1, W) while s < W.
double warmup_fraction(int64_t step, int64_t warmup) {
    return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
}

// (s - W) / max(1, T - W): the progress after warmup of linear and the cosine schedules.
double progress_after_warmup(int64_t step, int64_t warmup, int64_t total) {
    return static_cast<double>(step - warmup) /
           static_cast<double>(std::max<int64_t>(1, total - warmup));
}

// get_piecewise_constant_schedule: "m1:s1,m2:s2,...,m_last" -> {s_i: m_i} and m_last. A step
// below the smallest boundary s_i > step takes that boundary's multiplier.
double piecewise_constant(const std::string& rules, int64_t step) {
    std::map<int64_t, double> boundaries;
    std::vector<std::string> parts;
    size_t start = 0;
    while (true) {
        const size_t comma = rules.find(',', start);
        parts.push_back(rules.substr(start, comma - start));
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    try {
        for (size_t i = 0; i + 1 < parts.size(); ++i) {
            const size_t colon = parts[i].find(':');
            if (colon == std::string::npos) throw std::invalid_argument("no ':'");
            boundaries[std::stoll(parts[i].substr(colon + 1))] =
                std::stod(parts[i].substr(0, colon));
        }
        const double last = std::stod(parts.back());
        for (const auto& [boundary, multiplier] : boundaries)
            if (step < boundary) return multiplier;
        return last;
    } catch (const std::invalid_argument&) {
        throw std::runtime_error("piecewise_constant: bad step_rules '" + rules +
                                 "'; expected \"multiplier:step,...,last_multiplier\", e.g. "
                                 "\"1:10,0.1:20,0.01\"");
    }
}

std::string accepted_names() {
    std::string out;
    for (const auto& n : lr_schedule_names()) out += (out.empty() ? "" : ", ") + n;
    return out;
}

}  // namespace

const std::vector<std::string>& lr_schedule_names() {
    static const std::vector<std::string> names = {"linear",
                                                   "cosine",
                                                   "cosine_with_restarts",
                                                   "polynomial",
                                                   "constant",
                                                   "constant_with_warmup",
                                                   "piecewise_constant"};
    return names;
}

double lr_multiplier(const LRScheduleConfig& c, int64_t step, double base_lr) {
    const int64_t W = c.warmup_steps, T = c.total_steps;
    if (c.name == "constant") return 1.0;  // warmup ignored, as in diffusers
    if (c.name == "piecewise_constant") return piecewise_constant(c.step_rules, step);
    if (c.name == "polynomial" && !(base_lr > c.lr_end))
        throw std::runtime_error("lr_end (" + std::to_string(c.lr_end) +
                                 ") must be smaller than initial lr (" + std::to_string(base_lr) +
                                 ") for --lr_scheduler polynomial");
    const bool known = std::find(lr_schedule_names().begin(), lr_schedule_names().end(), c.name) !=
                       lr_schedule_names().end();
    if (!known)
        throw std::runtime_error("unknown --lr_scheduler '" + c.name +
                                 "'; accepted: " + accepted_names());
    if (step < W) return warmup_fraction(step, W);
    if (c.name == "constant_with_warmup") return 1.0;
    if (c.name == "linear")
        return std::max(
            0.0, static_cast<double>(T - step) / static_cast<double>(std::max<int64_t>(1, T - W)));
    if (c.name == "cosine") {
        const double cycles = c.num_cycles < 0 ? 0.5 : c.num_cycles;
        const double p      = progress_after_warmup(step, W, T);
        return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * cycles * 2.0 * p)));
    }
    if (c.name == "cosine_with_restarts") {
        const double cycles = c.num_cycles < 0 ? 1.0 : c.num_cycles;
        const double p      = progress_after_warmup(step, W, T);
        if (p >= 1.0) return 0.0;
        // Python's % on floats: the result takes the divisor's sign (here always >= 0).
        double frac = std::fmod(cycles * p, 1.0);
        if (frac < 0) frac += 1.0;
        return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * frac)));
    }
    // polynomial (get_polynomial_decay_schedule_with_warmup)
    if (step > T) return c.lr_end / base_lr;
    const double lr_range      = base_lr - c.lr_end;
    const double decay_steps   = static_cast<double>(T - W);
    const double pct_remaining = 1.0 - static_cast<double>(step - W) / decay_steps;
    return (lr_range * std::pow(pct_remaining, c.power) + c.lr_end) / base_lr;
}

double lr_multiplier(const std::string& name, int64_t step, int64_t warmup_steps,
                     int64_t total_steps, double base_lr) {
    LRScheduleConfig c;
    c.name         = name;
    c.warmup_steps = warmup_steps;
    c.total_steps  = total_steps;
    return lr_multiplier(c, step, base_lr);
}

LRSchedule::LRSchedule(LRScheduleConfig config, double base_lr)
    : config_(std::move(config)), base_lr_(base_lr) {
    lr_multiplier(config_, 0, base_lr_);  // throws on a bad name, lr_end or step_rules
    if (config_.name == "polynomial" && config_.total_steps <= config_.warmup_steps)
        throw std::runtime_error(
            "--lr_scheduler polynomial needs more training steps than --lr_warmup_steps (got " +
            std::to_string(config_.total_steps) + " <= " + std::to_string(config_.warmup_steps) +
            "); diffusers divides by zero here");
}

double LRSchedule::get_lr() const {
    return base_lr_ * lr_multiplier(config_, step_count_, base_lr_);
}

nlohmann::json LRSchedule::state() const {
    return {{"name", config_.name}, {"base_lr", base_lr_}, {"step_count", step_count_}};
}

void LRSchedule::load_state(const nlohmann::json& state) {
    const std::string name = state.at("name").get<std::string>();
    if (name != config_.name)
        throw std::runtime_error("checkpoint LR schedule is '" + name + "' but this run uses '" +
                                 config_.name + "'; pass --lr_scheduler " + name + " to resume it");
    step_count_ = state.at("step_count").get<int64_t>();
}

}  // namespace t2i::training
