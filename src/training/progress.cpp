// Implements: training/progress.h.
#include "training/progress.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "util/log.h"

namespace t2i::training {

double peak_rss_mb() {
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_maxrss) / 1024.0;
}

std::string format_duration(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "?";
    const auto s = static_cast<int64_t>(seconds + 0.5);
    if (s >= 3600)
        return strformat("%lld:%02lld:%02lld", (long long)(s / 3600), (long long)(s / 60 % 60),
                         (long long)(s % 60));
    return strformat("%02lld:%02lld", (long long)(s / 60), (long long)(s % 60));
}

ProgressReporter::ProgressReporter(int64_t total_steps, int64_t start_step, int64_t logging_steps,
                                   const std::string& metrics_path)
    : total_(total_steps),
      start_(start_step),
      logging_steps_(logging_steps),
      tty_(::isatty(STDERR_FILENO) == 1),
      t0_(std::chrono::steady_clock::now()) {
    if (!metrics_path.empty()) {
        std::filesystem::create_directories(std::filesystem::path(metrics_path).parent_path());
        metrics_ = std::fopen(metrics_path.c_str(), "a");
        if (!metrics_) throw std::runtime_error("cannot open metrics file '" + metrics_path + "'");
    }
}

ProgressReporter::~ProgressReporter() {
    finish();
    if (metrics_) std::fclose(metrics_);
}

void ProgressReporter::update(const StepMetrics& m) {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const double per_step = elapsed / std::max<int64_t>(1, m.step - start_);
    const double eta      = per_step * static_cast<double>(total_ - m.step);
    if (metrics_) {
        nlohmann::json j{{"step", m.step},
                         {"epoch", m.epoch},
                         {"train_loss", m.train_loss},
                         {"lr", m.lr},
                         {"grad_norm", m.grad_norm},
                         {"step_time", m.step_time},
                         {"samples_per_s", m.samples_per_s},
                         {"peak_rss_mb", peak_rss_mb()},
                         {"optimizer_state_mb", m.optimizer_state_mb},
                         {"comm_wait_s", m.comm_wait_s}};
        if (m.peak_gpu_mb >= 0) j["peak_gpu_mb"] = m.peak_gpu_mb;
        if (!m.profile.empty()) {
            auto& p = j["profile"];
            for (const auto& [stage, s] : m.profile) p[stage] = s;
        }
        std::fprintf(metrics_, "%s\n", j.dump().c_str());
        std::fflush(metrics_);
    }
    if (tty_) {
        const int width   = 24;
        const double frac = total_ > 0 ? static_cast<double>(m.step) / total_ : 1.0;
        const int fill    = static_cast<int>(frac * width);
        std::string bar(static_cast<size_t>(fill), '#');
        bar.append(static_cast<size_t>(width - fill), '.');
        std::fprintf(stderr, "\r\033[K[%s] %lld/%lld | loss %.4f | lr %.2e | %.2f s/step | ETA %s",
                     bar.c_str(), (long long)m.step, (long long)total_, m.train_loss, m.lr,
                     m.step_time, format_duration(eta).c_str());
        std::fflush(stderr);
        bar_drawn_ = true;
    } else if (m.step % logging_steps_ == 0 || m.step == total_) {
        log_info(
            "step %lld/%lld epoch %lld loss %.5f lr %.3e grad_norm %.4f %.3f s/step %.2f samples/s "
            "ETA %s",
            (long long)m.step, (long long)total_, (long long)m.epoch, m.train_loss, m.lr,
            m.grad_norm, m.step_time, m.samples_per_s, format_duration(eta).c_str());
    }
}

void ProgressReporter::message(const std::string& text) {
    if (bar_drawn_) std::fputs("\r\033[K", stderr);
    log_info("%s", text.c_str());
}

void ProgressReporter::finish() {
    if (bar_drawn_) {
        std::fputc('\n', stderr);
        bar_drawn_ = false;
    }
}

void report_step(ProgressReporter* progress, io::EventWriter* tensorboard, const StepMetrics& m) {
    if (progress) progress->update(m);
    if (!tensorboard) return;
    tensorboard->add_scalar("train_loss", m.train_loss, m.step);
    tensorboard->add_scalar("lr", m.lr, m.step);
    tensorboard->add_scalar("grad_norm", m.grad_norm, m.step);
    tensorboard->add_scalar("step_time", m.step_time, m.step);
    tensorboard->add_scalar("samples_per_s", m.samples_per_s, m.step);
}

}  // namespace t2i::training
