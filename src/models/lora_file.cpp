// Implements: read_lora_file, to_kohya and to_diffusers of models/lora.h: the key maps of the
// LoRA file layouts. Mirrors: diffusers loaders/lora_pipeline.py (StableDiffusionLoraLoaderMixin.
// lora_state_dict / load_lora_into_unet), loaders/lora_conversion_utils.py
// (_convert_non_diffusers_lora_to_diffusers for kohya's SD 1.x / 2.x names) and
// utils/state_dict_utils.py (convert_state_dict_to_kohya).
#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "io/safetensors.h"
#include "models/lora.h"

namespace t2i::models {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool starts_with(const std::string& s, const std::string& prefix) {
    return s.rfind(prefix, 0) == 0;
}

std::string underscored(std::string name) {
    std::replace(name.begin(), name.end(), '.', '_');
    return name;
}

// kohya's module names: the diffusers name with '_' for '.'. Only modules with a weight.
std::map<std::string, std::string> kohya_names(const torch::nn::Module* root) {
    std::map<std::string, std::string> out;
    if (!root) return out;
    for (const auto& item : root->named_modules("", /*include_self=*/false))
        if (item.value()->named_parameters(/*recurse=*/false).contains("weight"))
            out[underscored(item.key())] = item.key();
    return out;
}

enum class Part { kDown, kUp, kAlpha };

struct Parsed {
    std::string component, module;
    Part part;
};

[[noreturn]] void unknown_key(const std::string& path, const std::string& key,
                              const std::string& why) {
    throw std::invalid_argument(path + ": LoRA key '" + key + "': " + why +
                                ". t2i reads LoRA files in diffusers / PEFT layout "
                                "(unet.<module>.lora_A.weight) and kohya / A1111 layout "
                                "(lora_unet_<module>.lora_down.weight, .alpha) for SD 1.x / 2.x");
}

// "unet." / "text_encoder." / "base_model.model." / none -> component, rest.
std::pair<std::string, std::string> split_component(const std::string& key) {
    for (const char* prefix : {"unet.", "text_encoder."})
        if (starts_with(key, prefix))
            return {std::string(prefix).substr(0, std::string(prefix).size() - 1),
                    key.substr(std::string(prefix).size())};
    if (starts_with(key, "base_model.model.")) return {"unet", key.substr(17)};
    return {"unet", key};
}

Parsed parse_key(const std::string& path, const std::string& key,
                 const std::map<std::string, std::string>& unet_names,
                 const std::map<std::string, std::string>& text_names, std::string* format) {
    for (const char* bad : {"hada_", "lokr_", ".dora_scale", "lora_te1_", "lora_te2_"})
        if (key.find(bad) != std::string::npos)
            unknown_key(path, key, "LyCORIS (LoHa / LoKr), DoRA and SDXL LoRAs are not supported");
    // kohya / A1111
    for (const auto& [prefix, component] :
         {std::pair<std::string, std::string>{"lora_unet_", "unet"},
          std::pair<std::string, std::string>{"lora_te_", "text_encoder"}}) {
        if (!starts_with(key, prefix)) continue;
        *format           = "kohya";
        const auto dot    = key.find('.');
        const auto stem   = key.substr(prefix.size(), dot - prefix.size());
        const auto rest   = dot == std::string::npos ? std::string() : key.substr(dot + 1);
        const Part part   = rest == "lora_down.weight" ? Part::kDown
                            : rest == "lora_up.weight" ? Part::kUp
                            : rest == "alpha"
                                ? Part::kAlpha
                                : (unknown_key(path, key, "unknown part"), Part::kAlpha);
        const auto& names = component == "unet" ? unet_names : text_names;
        if (names.empty())
            unknown_key(path, key, "a kohya LoRA needs the model to resolve its module names");
        const auto it = names.find(stem);
        if (it == names.end())
            unknown_key(path, key,
                        "no " + component + " module is named '" + stem +
                            "' (with '_' for '.'); a LoRA for another model family?");
        return {component, it->second, part};
    }
    auto [component, rest] = split_component(key);
    // PEFT (diffusers >= 0.24): <module>.lora_A[.<adapter>].weight
    for (const auto& [marker, part] : {std::pair<std::string, Part>{".lora_A.", Part::kDown},
                                       std::pair<std::string, Part>{".lora_B.", Part::kUp},
                                       std::pair<std::string, Part>{".lora.down.", Part::kDown},
                                       std::pair<std::string, Part>{".lora.up.", Part::kUp},
                                       std::pair<std::string, Part>{".lora_down.", Part::kDown},
                                       std::pair<std::string, Part>{".lora_up.", Part::kUp}}) {
        const auto at = rest.find(marker);
        if (at == std::string::npos || !ends_with(rest, "weight")) continue;
        if (format->empty()) *format = "diffusers";
        return {component, rest.substr(0, at), part};
    }
    if (ends_with(rest, ".alpha"))
        return {component, rest.substr(0, rest.size() - 6), Part::kAlpha};
    // diffusers' attention processors (before PEFT): <attn>.processor.to_q_lora.down.weight
    const auto proc = rest.find(".processor.");
    if (proc != std::string::npos) {
        const auto tail = rest.substr(proc + 11);  // to_q_lora.down.weight
        for (const char* p : {"to_q", "to_k", "to_v", "to_out"}) {
            const std::string lp = std::string(p) + "_lora.";
            if (!starts_with(tail, lp)) continue;
            const auto what = tail.substr(lp.size());
            if (what != "down.weight" && what != "up.weight") break;
            *format                  = "diffusers-attn-procs";
            const std::string target = std::string(p) == "to_out" ? "to_out.0" : p;
            return {component, rest.substr(0, proc) + "." + target,
                    what == "down.weight" ? Part::kDown : Part::kUp};
        }
    }
    unknown_key(path, key, "not a LoRA weight of a known layout");
}

// PEFT metadata (diffusers >= 0.34 writes it): lora_alpha, r and alpha_pattern of a component.
double metadata_alpha(const io::Metadata& metadata, const std::string& component,
                      const std::string& module, int64_t rank, const std::string& path) {
    const auto it = metadata.find("lora_adapter_metadata");
    if (it == metadata.end()) return static_cast<double>(rank);
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(it->second);
    } catch (const std::exception& e) {
        throw std::invalid_argument(path +
                                    ": metadata 'lora_adapter_metadata' is not JSON: " + e.what());
    }
    const std::string prefix = component + ".";
    const auto pattern       = j.find(prefix + "alpha_pattern");
    if (pattern != j.end() && pattern->is_object())
        for (const auto& [name, value] : pattern->items())
            if (value.is_number() && (module == name || ends_with(module, "." + name)))
                return value.get<double>();
    const auto alpha = j.find(prefix + "lora_alpha");
    if (alpha != j.end() && alpha->is_number()) return alpha->get<double>();
    return static_cast<double>(rank);
}

}  // namespace

LoraFile read_lora_file(const std::string& path, const torch::nn::Module* unet,
                        const torch::nn::Module* text_encoder,
                        const std::map<std::string, std::string>& unet_aliases) {
    const auto lower = [](std::string s) {
        std::transform(s.begin(), s.end(), s.begin(), ::tolower);
        return s;
    };
    for (const char* ext : {".ckpt", ".pt", ".pth", ".bin"})
        if (ends_with(lower(path), ext))
            throw std::invalid_argument(
                path +
                ": pickled LoRA files are not read (unpickling can run arbitrary code); "
                "t2i reads .safetensors only. Convert it once with safetensors' "
                "save_file in a Python you trust");
    io::SafetensorsFile file(path);
    auto unet_names       = kohya_names(unet);
    const auto text_names = kohya_names(text_encoder);
    for (const auto& [alias, module] : unet_aliases) unet_names.emplace(underscored(alias), module);
    struct Entry {
        torch::Tensor down, up, alpha;
        std::string key;
    };
    std::map<std::pair<std::string, std::string>, Entry> entries;
    std::vector<std::pair<std::string, std::string>> order;
    LoraFile out;
    out.path = path;
    for (const auto& info : file.tensors()) {
        const auto p  = parse_key(path, info.name, unet_names, text_names, &out.format);
        const auto id = std::make_pair(p.component, p.module);
        if (!entries.count(id)) order.push_back(id);
        auto& e    = entries[id];
        auto& slot = p.part == Part::kDown ? e.down : p.part == Part::kUp ? e.up : e.alpha;
        if (slot.defined()) unknown_key(path, info.name, "a second tensor for the same module");
        slot = file.get(info.name);
        if (p.part == Part::kDown) e.key = info.name;
        if (p.part == Part::kAlpha && slot.numel() != 1)
            unknown_key(path, info.name, "alpha must be one number");
    }
    if (order.empty()) throw std::invalid_argument(path + ": holds no tensors; not a LoRA file");
    for (const auto& id : order) {
        const auto& e = entries[id];
        if (!e.down.defined() || !e.up.defined())
            throw std::invalid_argument(
                path + ": LoRA module '" + id.first + "." + id.second + "' has only its " +
                (e.down.defined() ? "down (A)" : "up (B)") + " weight; the file is incomplete");
        if (e.down.dim() < 2 || e.up.dim() < 2 || e.down.size(0) != e.up.size(1))
            unknown_key(path, e.key, "down and up weights of different ranks");
        if (e.down.size(0) < 1) unknown_key(path, e.key, "rank 0 (empty down / up weights)");
        LoraModule m;
        m.component     = id.first;
        m.module        = id.second;
        m.down          = e.down;
        m.up            = e.up;
        m.key           = e.key;
        const auto rank = e.down.size(0);
        const double alpha =
            e.alpha.defined() ? e.alpha.to(torch::kFloat64).item<double>()
                              : metadata_alpha(file.metadata(), m.component, m.module, rank, path);
        if (!std::isfinite(alpha))  // it scales every weight it touches
            unknown_key(path, e.key, "alpha is NaN or infinite");
        m.alpha_scale = alpha / static_cast<double>(rank);
        out.modules.push_back(std::move(m));
    }
    return out;
}

io::TensorMap to_kohya(const LoraFile& lora) {
    io::TensorMap out;
    for (const auto& m : lora.modules) {
        const std::string stem =
            (m.component == "unet" ? "lora_unet_" : "lora_te_") + underscored(m.module);
        out[stem + ".lora_down.weight"] = m.down;
        out[stem + ".lora_up.weight"]   = m.up;
        out[stem + ".alpha"] =
            torch::full({}, m.alpha_scale * static_cast<double>(m.down.size(0)), torch::kFloat32);
    }
    return out;
}

io::TensorMap to_diffusers(const LoraFile& lora) {
    io::TensorMap out;
    for (const auto& m : lora.modules) {
        const std::string stem       = m.component + "." + m.module;
        out[stem + ".lora_A.weight"] = m.down;
        out[stem + ".lora_B.weight"] =
            m.alpha_scale == 1.0
                ? m.up
                : (m.up.to(torch::kFloat32) * m.alpha_scale).to(m.up.scalar_type());
    }
    return out;
}

}  // namespace t2i::models
