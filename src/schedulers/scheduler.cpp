// Implements: schedulers/scheduler.h: make_scheduler (diffusers v0.27.2 ConfigMixin.from_config)
// and the helpers the samplers share (scheduling_euler_discrete.py set_timesteps, _sigma_to_t,
// _convert_to_karras; utils/torch_utils.py randn_tensor; numpy's linspace/arange/interp).
#include "schedulers/scheduler.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "schedulers/ddim.h"
#include "schedulers/ddpm_sampling.h"
#include "schedulers/dpm_solver.h"
#include "schedulers/euler.h"
#include "schedulers/pndm.h"
#include "util/log.h"

namespace t2i::schedulers {

const std::vector<std::string> kSchedulerNames = {
    "ddim", "pndm", "euler", "euler_ancestral", "dpm++2m", "dpm++2m_karras", "ddpm"};

namespace {

// `_class_name` -> CLI name.
const std::vector<std::pair<std::string, std::string>> kClassNames = {
    {"DDIMScheduler", "ddim"},
    {"PNDMScheduler", "pndm"},
    {"EulerDiscreteScheduler", "euler"},
    {"EulerAncestralDiscreteScheduler", "euler_ancestral"},
    {"DPMSolverMultistepScheduler", "dpm++2m"},
    {"DDPMScheduler", "ddpm"},
};

}  // namespace

void BetaScheduleConfig::read_beta_keys(const io::JsonConfig& json) {
    num_train_timesteps = json.get<int64_t>("num_train_timesteps", num_train_timesteps);
    beta_start          = json.get<double>("beta_start", beta_start);
    beta_end            = json.get<double>("beta_end", beta_end);
    beta_schedule       = json.get<std::string>("beta_schedule", beta_schedule);
    trained_betas       = json.get<std::vector<double>>("trained_betas", trained_betas);
    check_beta_keys(json, num_train_timesteps, beta_start, beta_end, trained_betas);
}

int64_t read_steps_offset(const io::JsonConfig& json, int64_t fallback,
                          int64_t num_train_timesteps) {
    const auto offset = json.get<int64_t>("steps_offset", fallback);
    json.check_range("steps_offset", static_cast<double>(offset), 0,
                     static_cast<double>(num_train_timesteps - 1), "an index into the schedule");
    return offset;
}

void check_beta_keys(const io::JsonConfig& json, int64_t num_train_timesteps, double beta_start,
                     double beta_end, const std::vector<double>& trained_betas) {
    json.check_range("num_train_timesteps", static_cast<double>(num_train_timesteps), 1, 100000);
    json.check_range("beta_start", beta_start, 0, 0.999999, "alphas = 1 - betas must stay > 0");
    json.check_range("beta_end", beta_end, 0, 0.999999, "alphas = 1 - betas must stay > 0");
    for (size_t i = 0; i < trained_betas.size(); ++i)
        json.check_range("trained_betas[" + std::to_string(i) + "]", trained_betas[i], 0, 0.999999,
                         "alphas = 1 - betas must stay > 0");
    if (!trained_betas.empty() && static_cast<int64_t>(trained_betas.size()) != num_train_timesteps)
        json.fail("trained_betas", "has " + std::to_string(trained_betas.size()) +
                                       " values but num_train_timesteps is " +
                                       std::to_string(num_train_timesteps));
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& name_or_empty,
                                          const io::JsonConfig& json) {
    std::string name = name_or_empty;
    if (name.empty()) {
        const auto cls = json.get<std::string>("_class_name", "");
        for (const auto& [c, n] : kClassNames)
            if (c == cls) name = n;
        if (name.empty()) {
            std::string known;
            for (const auto& [c, n] : kClassNames) known += (known.empty() ? "" : ", ") + c;
            throw std::runtime_error("scheduler config '" + json.path() + "': _class_name '" + cls +
                                     "' is not supported (supported: " + known +
                                     "); HINT: pick one with --scheduler " + join(kSchedulerNames));
        }
    }
    if (name == "ddim") return std::make_unique<DDIMScheduler>(DDIMConfig::from_json(json));
    if (name == "pndm") return std::make_unique<PNDMScheduler>(PNDMConfig::from_json(json));
    if (name == "euler")
        return std::make_unique<EulerDiscreteScheduler>(EulerConfig::from_json(json));
    if (name == "euler_ancestral")
        return std::make_unique<EulerAncestralDiscreteScheduler>(
            EulerAncestralConfig::from_json(json));
    if (name == "ddpm")
        return std::make_unique<DDPMSamplingScheduler>(SchedulerConfig::from_json(json));
    if (name == "dpm++2m" || name == "dpm++2m_karras") {
        auto c = DPMSolverConfig::from_json(json);
        if (!name_or_empty.empty()) {  // a name picked on the command line sets the variant
            c.algorithm_type    = "dpmsolver++";
            c.solver_order      = 2;
            c.use_karras_sigmas = name == "dpm++2m_karras";
        }
        return std::make_unique<DPMSolverMultistepScheduler>(c);
    }
    throw std::runtime_error("unknown scheduler '" + name +
                             "' (accepted: " + join(kSchedulerNames) + ")");
}

torch::Tensor randn_tensor(at::IntArrayRef shape, at::Generator* generator,
                           const torch::Device& device, torch::ScalarType dtype) {
    if (generator == nullptr) return torch::randn(shape, torch::dtype(dtype).device(device));
    auto opts = torch::dtype(dtype).device(generator->device());
    if (generator->device().is_cpu() && device.is_cuda())  // page-locked: an async copy
        return torch::randn(shape, *generator, opts.pinned_memory(true))
            .to(device, /*non_blocking=*/true);
    return torch::randn(shape, *generator, opts).to(device);
}

std::vector<double> np_linspace(double start, double stop, int64_t n) {
    std::vector<double> y(static_cast<size_t>(std::max<int64_t>(n, 0)));
    if (n <= 0) return y;
    if (n == 1) return {start};
    const double step = (stop - start) / static_cast<double>(n - 1);
    for (int64_t i = 0; i < n; ++i) y[i] = static_cast<double>(i) * step + start;
    y[n - 1] = stop;
    return y;
}

std::vector<double> spaced_timesteps(const std::string& spacing, int64_t T, int64_t n,
                                     int64_t steps_offset) {
    if (n <= 0 || n > T)
        throw std::runtime_error("num_inference_steps must lie in [1, " + std::to_string(T) +
                                 "], got " + std::to_string(n));
    std::vector<double> t;
    if (spacing == "linspace") {
        t = np_linspace(0, static_cast<double>(T - 1), n);
        std::reverse(t.begin(), t.end());
    } else if (spacing == "leading") {
        const int64_t ratio = T / n;
        for (int64_t i = n - 1; i >= 0; --i)
            t.push_back(static_cast<double>(i * ratio + steps_offset));
    } else if (spacing == "trailing") {
        // np.round(np.arange(T, 0, -T / n)) - 1; arange's length is ceil(T / (T / n)).
        const double ratio = static_cast<double>(T) / static_cast<double>(n);
        const auto len     = static_cast<int64_t>(std::ceil(static_cast<double>(T) / ratio));
        for (int64_t i = 0; i < len; ++i)
            t.push_back(std::nearbyint(static_cast<double>(T) - static_cast<double>(i) * ratio) -
                        1);
    } else {
        throw std::runtime_error("timestep_spacing '" + spacing +
                                 "' is not supported (accepted: linspace, leading, trailing)");
    }
    return t;
}

std::vector<double> train_sigmas(const torch::Tensor& alphas_cumprod) {
    auto s = ((1 - alphas_cumprod) / alphas_cumprod).pow(0.5).to(torch::kFloat64).contiguous();
    return std::vector<double>(s.data_ptr<double>(), s.data_ptr<double>() + s.numel());
}

std::vector<double> np_interp(const std::vector<double>& x, const std::vector<double>& fp) {
    const auto n = static_cast<int64_t>(fp.size());
    std::vector<double> y;
    for (double v : x) {
        if (v <= 0) {
            y.push_back(fp[0]);
            continue;
        }
        if (v >= static_cast<double>(n - 1)) {
            y.push_back(fp[n - 1]);
            continue;
        }
        const auto j       = static_cast<int64_t>(std::floor(v));
        const double slope = fp[j + 1] - fp[j];  // xp[j + 1] - xp[j] == 1
        y.push_back(slope * (v - static_cast<double>(j)) + fp[j]);
    }
    return y;
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n) {
    const double rho         = 7.0;
    const double min_inv_rho = std::pow(sigma_min, 1 / rho);
    const double max_inv_rho = std::pow(sigma_max, 1 / rho);
    std::vector<double> sigmas;
    for (double r : np_linspace(0, 1, n))
        sigmas.push_back(std::pow(max_inv_rho + r * (min_inv_rho - max_inv_rho), rho));
    return sigmas;
}

double sigma_to_t(double sigma, const std::vector<double>& log_sigmas) {
    const double log_sigma = std::log(std::max(sigma, 1e-10));
    const auto n           = static_cast<int64_t>(log_sigmas.size());
    // A one-step schedule has only t = 0 (numpy's clip(max=n-2) gives index -1 there, which
    // Python wraps around; here it would read before the array).
    if (n < 2) return 0.0;
    // low_idx = cumsum(log_sigma - log_sigmas >= 0).argmax(), clipped to n - 2: the last index
    // with log_sigmas[i] <= log_sigma (0 when there is none).
    int64_t low_idx = 0, count = 0, best = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (log_sigma - log_sigmas[i] >= 0) ++count;
        if (count > best) {
            best    = count;
            low_idx = i;
        }
    }
    low_idx          = std::min(low_idx, n - 2);
    const double low = log_sigmas[low_idx], high = log_sigmas[low_idx + 1];
    const double w = std::clamp((low - log_sigma) / (low - high), 0.0, 1.0);
    return (1 - w) * static_cast<double>(low_idx) + w * static_cast<double>(low_idx + 1);
}

torch::Tensor threshold_sample(const torch::Tensor& sample, double ratio, double max_value) {
    const auto dtype = sample.scalar_type();
    auto x           = sample;
    if (dtype != torch::kFloat32 && dtype != torch::kFloat64) x = x.to(torch::kFloat32);
    x      = x.reshape({sample.size(0), -1});                                      // [B, C*h*w]
    auto s = torch::quantile(x.abs(), ratio, 1).clamp(1, max_value).unsqueeze(1);  // [B, 1]
    x      = torch::max(torch::min(x, s), -s) / s;
    return x.reshape(sample.sizes()).to(dtype);
}

int64_t index_for_timestep(const torch::Tensor& schedule, const torch::Tensor& timestep,
                           int64_t fallback) {
    auto idx = (schedule == timestep.to(torch::kCPU).to(schedule.scalar_type())).nonzero();
    if (idx.size(0) == 0) {
        if (fallback >= 0) return fallback;
        throw std::runtime_error("scheduler step: timestep " +
                                 std::to_string(timestep.item<double>()) +
                                 " is not one of the scheduler's timesteps");
    }
    return idx[idx.size(0) > 1 ? 1 : 0][0].item<int64_t>();
}

}  // namespace t2i::schedulers
