// Implements: models/weights.h.
#include "models/weights.h"

#include <memory>
#include <set>
#include <stdexcept>

#include "util/log.h"

namespace t2i::models {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string list_keys(const std::vector<std::string>& keys, size_t max_shown = 10) {
    std::string out;
    for (size_t i = 0; i < keys.size() && i < max_shown; ++i) out += "\n    " + keys[i];
    if (keys.size() > max_shown)
        out += strformat("\n    ... and %zu more", keys.size() - max_shown);
    return out;
}

std::string join_files(const std::vector<std::string>& files) {
    std::string s;
    for (const auto& f : files) s += (s.empty() ? "" : ", ") + f;
    return s;
}

}  // namespace

io::TensorMap state_dict(const torch::nn::Module& module) {
    io::TensorMap out;
    for (const auto& p : module.named_parameters(/*recurse=*/true)) out[p.key()] = p.value();
    for (const auto& b : module.named_buffers(/*recurse=*/true)) out[b.key()] = b.value();
    return out;
}

std::string canonical_key(const std::string& key) {
    // Old diffusers VAE checkpoints (and conversions of the original CompVis weights) name the
    // mid-block attention projections query/key/value/proj_attn. diffusers renames them on load
    // (ModelMixin._convert_deprecated_attention_blocks); so do we.
    static const std::pair<const char*, const char*> kLegacy[] = {
        {".query.", ".to_q."},
        {".key.", ".to_k."},
        {".value.", ".to_v."},
        {".proj_attn.", ".to_out.0."},
    };
    for (const auto& [from, to] : kLegacy) {
        const auto pos = key.find(from);
        if (pos != std::string::npos && key.find(".attentions.") != std::string::npos)
            return key.substr(0, pos) + to + key.substr(pos + std::string(from).size());
    }
    return key;
}

bool is_ignored_key(const std::string& key) {
    // transformers < 4.31 saved CLIP's position_ids buffer (an arange); it is recomputed.
    return ends_with(key, "embeddings.position_ids");
}

void load_weights(torch::nn::Module& module, const std::vector<std::string>& files,
                  const std::string& component) {
    if (files.empty())
        throw std::runtime_error(component + ": no weight files (*.safetensors) were found");
    io::TensorMap targets = state_dict(module);
    std::set<std::string> seen;
    std::vector<std::string> unexpected;
    torch::NoGradGuard no_grad;
    for (const auto& file : files) {
        io::SafetensorsFile st(file);
        for (const auto& info : st.tensors()) {
            const std::string key = canonical_key(info.name);
            auto it               = targets.find(key);
            if (it == targets.end()) {
                if (!is_ignored_key(info.name)) unexpected.push_back(info.name);
                continue;
            }
            torch::Tensor& dst = it->second;
            torch::Tensor src  = st.view(info.name);
            if (src.sizes() != dst.sizes())
                throw std::runtime_error(strformat(
                    "%s: weight '%s' in '%s' has shape %s but the model built from config.json "
                    "expects %s; the config and the weights do not belong together",
                    component.c_str(), info.name.c_str(), file.c_str(),
                    c10::str(src.sizes()).c_str(), c10::str(dst.sizes()).c_str()));
            if (!seen.insert(key).second)
                throw std::runtime_error(component + ": weight '" + key +
                                         "' appears more than once in " + join_files(files));
            dst.copy_(src);
        }
    }
    std::vector<std::string> missing;
    for (const auto& [key, _] : targets)
        if (!seen.count(key)) missing.push_back(key);
    if (!missing.empty() || !unexpected.empty()) {
        std::string msg = component + ": the weights in " + join_files(files) +
                          " do not match the model built from its config.json.";
        if (!missing.empty())
            msg += strformat("\n  missing keys (%zu):", missing.size()) + list_keys(missing);
        if (!unexpected.empty())
            msg +=
                strformat("\n  unexpected keys (%zu):", unexpected.size()) + list_keys(unexpected);
        msg +=
            "\n  hint: check that config.json and the .safetensors file come from the same model";
        throw std::runtime_error(msg);
    }
}

void save_weights(const torch::nn::Module& module, const std::string& path,
                  c10::optional<torch::ScalarType> dtype) {
    io::TensorMap tensors = state_dict(module);
    for (auto& [_, t] : tensors) {
        t = t.detach();
        if (dtype && t.is_floating_point()) t = t.to(*dtype);
    }
    io::save_safetensors(path, tensors);
}

namespace {

void check_finite_tensor(const std::string& name, const torch::Tensor& t, const std::string& what) {
    if (!t.is_floating_point() || t.isfinite().all().item<bool>()) return;
    throw std::runtime_error(what + ": '" + name +
                             "' holds NaN or infinite values; nothing was written");
}

}  // namespace

void check_finite(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                  const std::string& what) {
    for (const auto& [name, t] : tensors) check_finite_tensor(name, t, what);
}

void check_finite(const io::TensorMap& tensors, const std::string& what) {
    for (const auto& [name, t] : tensors) check_finite_tensor(name, t, what);
}

void check_finite(const torch::OrderedDict<std::string, torch::Tensor>& tensors,
                  const std::string& what) {
    for (const auto& item : tensors) check_finite_tensor(item.key(), item.value(), what);
}

int64_t count_parameters(const torch::nn::Module& module) {
    int64_t n = 0;
    for (const auto& p : module.parameters()) n += p.numel();
    return n;
}

void to_channels_last(torch::nn::Module& module) {
    torch::NoGradGuard no_grad;
    for (auto& p : module.parameters())
        if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
}

}  // namespace t2i::models
