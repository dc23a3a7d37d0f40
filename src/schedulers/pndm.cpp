// Implements: schedulers/pndm.h, following diffusers v0.27.2 scheduling_pndm.py.
#include "schedulers/pndm.h"

#include <algorithm>
#include <stdexcept>

namespace t2i::schedulers {

PNDMConfig PNDMConfig::from_json(const io::JsonConfig& json) {
    PNDMConfig c;
    c.read_beta_keys(json);
    c.skip_prk_steps   = json.get<bool>("skip_prk_steps", c.skip_prk_steps);
    c.set_alpha_to_one = json.get<bool>("set_alpha_to_one", c.set_alpha_to_one);
    c.prediction_type  = json.get<std::string>("prediction_type", c.prediction_type);
    c.timestep_spacing = json.get<std::string>("timestep_spacing", c.timestep_spacing);
    c.steps_offset     = read_steps_offset(json, c.steps_offset, c.num_train_timesteps);
    return c;
}

PNDMScheduler::PNDMScheduler(PNDMConfig config)
    : config_(std::move(config)),
      schedule_(make_noise_schedule(config_.beta_schedule, config_.beta_start, config_.beta_end,
                                    config_.num_train_timesteps, config_.trained_betas, false)) {
    if (config_.prediction_type != "epsilon" && config_.prediction_type != "v_prediction")
        throw std::runtime_error("PNDMScheduler: prediction_type '" + config_.prediction_type +
                                 "' is not supported (accepted: epsilon, v_prediction)");
    final_alpha_cumprod_ =
        config_.set_alpha_to_one ? torch::tensor(1.0f) : schedule_.alphas_cumprod[0].clone();
}

void PNDMScheduler::set_timesteps(int64_t n) {
    const int64_t T      = config_.num_train_timesteps;
    num_inference_steps_ = n;
    // 1. ascending base timesteps (`_timesteps`).
    std::vector<int64_t> base;
    if (config_.timestep_spacing == "linspace") {
        for (double v : np_linspace(0, static_cast<double>(T - 1), n))
            base.push_back(static_cast<int64_t>(std::nearbyint(v)));
    } else {
        auto t = spaced_timesteps(config_.timestep_spacing, T, n, config_.steps_offset);
        for (auto it = t.rbegin(); it != t.rend(); ++it) base.push_back(static_cast<int64_t>(*it));
    }
    const auto B = static_cast<int64_t>(base.size());
    std::vector<int64_t> plms;
    prk_timesteps_.clear();
    if (config_.skip_prk_steps) {
        // 2a. [_t[:-1], _t[-2:-1], _t[-1:]][::-1]: the second-to-last entry is repeated, because
        //     the first PLMS step needs two model evaluations at the same x (eq. 12, k = 1).
        for (int64_t i = 0; i + 1 < B; ++i) plms.push_back(base[i]);
        if (B >= 2) plms.push_back(base[B - 2]);  // numpy slices: empty for one step
        plms.push_back(base[B - 1]);
        std::reverse(plms.begin(), plms.end());
    } else {
        // 2b. PRK: the last 4 base timesteps, each with t and t + T//n//2, repeated for the 4
        //     Runge-Kutta evaluations: prk = (x[:-1].repeat(2)[1:-1])[::-1].
        if (B < 4)  // diffusers fails here too (a shape mismatch in np.tile)
            throw std::runtime_error(
                "PNDMScheduler with skip_prk_steps=false needs at least 4 inference steps, got " +
                std::to_string(n) +
                "; use --num_inference_steps 4 or more, or another --scheduler");
        const int64_t half = T / n / 2;
        std::vector<int64_t> x;
        for (int64_t i = B - 4; i < B; ++i) {
            x.push_back(base[i]);
            x.push_back(base[i] + half);
        }
        std::vector<int64_t> rep;
        for (size_t i = 0; i + 1 < x.size(); ++i) rep.insert(rep.end(), {x[i], x[i]});
        prk_timesteps_.assign(rep.begin() + 1, rep.end() - 1);
        std::reverse(prk_timesteps_.begin(), prk_timesteps_.end());
        for (int64_t i = B - 4; i >= 0; --i) plms.push_back(base[i]);  // _t[:-3][::-1]
    }
    std::vector<int64_t> all = prk_timesteps_;
    all.insert(all.end(), plms.begin(), plms.end());
    timesteps_ = torch::tensor(all, torch::kInt64);
    ets_.clear();
    counter_          = 0;
    cur_model_output_ = torch::Tensor();
    cur_sample_       = torch::Tensor();
}

torch::Tensor PNDMScheduler::step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                                  const torch::Tensor& sample, at::Generator* generator) {
    if (num_inference_steps_ == 0)
        throw std::runtime_error("PNDMScheduler: call set_timesteps before step");
    const int64_t t = timestep.item<int64_t>();
    if (counter_ < static_cast<int64_t>(prk_timesteps_.size()) && !config_.skip_prk_steps)
        return step_prk(model_output, t, sample);
    return step_plms(model_output, t, sample);
}

// Runge-Kutta 4 on the pseudo-numerical x_{t-delta} (eq. 13): weights 1/6, 1/3, 1/3, 1/6.
torch::Tensor PNDMScheduler::step_prk(const torch::Tensor& model_output, int64_t timestep,
                                      const torch::Tensor& sample) {
    const int64_t diff_to_prev =
        counter_ % 2 ? 0 : config_.num_train_timesteps / num_inference_steps_ / 2;
    const int64_t prev_timestep = timestep - diff_to_prev;
    timestep                    = prk_timesteps_[counter_ / 4 * 4];
    auto add                    = [&](double w) {
        cur_model_output_ = cur_model_output_.defined() ? cur_model_output_ + w * model_output
                                                                           : 0 + w * model_output;
    };
    torch::Tensor mo = model_output;
    if (counter_ % 4 == 0) {
        add(1.0 / 6);
        ets_.push_back(model_output);
        cur_sample_ = sample;
    } else if ((counter_ - 1) % 4 == 0 || (counter_ - 2) % 4 == 0) {
        add(1.0 / 3);
    } else {
        mo                = cur_model_output_ + 1.0 / 6 * model_output;
        cur_model_output_ = torch::Tensor();
    }
    const auto& cur = cur_sample_.defined() ? cur_sample_ : sample;
    auto prev       = prev_sample(cur, timestep, prev_timestep, mo);
    ++counter_;
    return prev;
}

// Linear multistep (Adams-Bashforth) on the model outputs, eq. 12.
torch::Tensor PNDMScheduler::step_plms(torch::Tensor model_output, int64_t timestep,
                                       torch::Tensor sample) {
    if (!config_.skip_prk_steps && ets_.size() < 3)
        throw std::runtime_error("PNDMScheduler: PLMS steps need 3 PRK steps first");
    const int64_t delta   = config_.num_train_timesteps / num_inference_steps_;
    int64_t prev_timestep = timestep - delta;
    if (counter_ != 1) {
        if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
        ets_.push_back(model_output);
    } else {
        prev_timestep = timestep;
        timestep      = timestep + delta;
    }
    const auto n = ets_.size();
    if (n == 1 && counter_ == 0) {
        cur_sample_ = sample;
    } else if (n == 1 && counter_ == 1) {
        model_output = (model_output + ets_[0]) / 2;
        sample       = cur_sample_;
        cur_sample_  = torch::Tensor();
    } else if (n == 2) {
        model_output = (3 * ets_[1] - ets_[0]) / 2;
    } else if (n == 3) {
        model_output = (23 * ets_[2] - 16 * ets_[1] + 5 * ets_[0]) / 12;
    } else {
        model_output =
            (1.0 / 24) * (55 * ets_[n - 1] - 59 * ets_[n - 2] + 37 * ets_[n - 3] - 9 * ets_[n - 4]);
    }
    auto prev = prev_sample(sample, timestep, prev_timestep, model_output);
    ++counter_;
    return prev;
}

// x_{t-delta} = sqrt(a_prev / a_t) x_t - (a_prev - a_t) eps /
//               (a_t sqrt(1 - a_prev) + sqrt(a_t (1 - a_t) a_prev))     (eq. 9)
torch::Tensor PNDMScheduler::prev_sample(const torch::Tensor& sample, int64_t timestep,
                                         int64_t prev_timestep, torch::Tensor model_output) const {
    const auto& ac         = schedule_.alphas_cumprod;
    auto alpha_prod_t      = ac[timestep];
    auto alpha_prod_t_prev = prev_timestep >= 0 ? ac[prev_timestep] : final_alpha_cumprod_;
    auto beta_prod_t       = 1 - alpha_prod_t;
    auto beta_prod_t_prev  = 1 - alpha_prod_t_prev;
    if (config_.prediction_type == "v_prediction")
        model_output = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
    auto sample_coeff = (alpha_prod_t_prev / alpha_prod_t).pow(0.5);
    auto denom        = alpha_prod_t * beta_prod_t_prev.pow(0.5) +
                 (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).pow(0.5);
    return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / denom;
}

}  // namespace t2i::schedulers
