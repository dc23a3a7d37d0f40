// Implements: models/lora.h (adapters, trainable LoRA, merging). The file layouts are read in
// models/lora_file.cpp.
#include "models/lora.h"

#include <map>
#include <sstream>
#include <stdexcept>

#include "models/attention.h"

namespace t2i::models {

namespace {

using Attentions = std::vector<std::pair<std::string, std::shared_ptr<AttentionImpl>>>;

Attentions attention_modules(const torch::nn::Module& root) {
    Attentions out;
    for (const auto& item : root.named_modules("", /*include_self=*/false))
        if (auto attn = std::dynamic_pointer_cast<AttentionImpl>(item.value()))
            out.emplace_back(item.key(), attn);
    return out;
}

// "<attention>.to_q" ... "<attention>.to_out.0", in AttentionImpl's slot order.
std::string projection_name(const std::string& attention, int slot) {
    static const char* names[] = {".to_q", ".to_k", ".to_v", ".to_out.0"};
    return attention + names[slot];
}

bool is_lora_parameter(const std::string& name) {
    return name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos;
}

}  // namespace

torch::OrderedDict<std::string, torch::Tensor> add_trainable_lora(UNet2DConditionModel& unet,
                                                                  int64_t rank,
                                                                  at::Generator& generator) {
    if (rank < 1)
        throw std::invalid_argument("LoRA rank must be >= 1, got " + std::to_string(rank));
    for (auto& p : unet->parameters()) p.requires_grad_(false);
    torch::NoGradGuard no_grad;
    for (const auto& [name, attn] : attention_modules(*unet)) {
        for (int slot = 0; slot < 4; ++slot) {
            auto base = attn->projection(slot);
            if (base->named_children().contains("lora_A"))
                throw std::logic_error("a LoRA is already attached to " +
                                       projection_name(name, slot));
            const auto device = base->weight.device();
            const int64_t in = base->options.in_features(), out = base->options.out_features();
            LoraAdapter a;
            a.lora_A = torch::nn::Linear(torch::nn::LinearOptions(in, rank).bias(false));
            a.lora_B = torch::nn::Linear(torch::nn::LinearOptions(rank, out).bias(false));
            // PEFT's init_lora_weights="gaussian": A ~ N(0, 1/r), B = 0 (so the LoRA starts as
            // the identity). Drawn on the CPU generator: the same values on any device.
            auto a_init = torch::empty({rank, in}, torch::kFloat32);
            a_init.normal_(0.0, 1.0 / static_cast<double>(rank), generator);
            a.lora_A->weight.set_data(a_init.to(device));
            a.lora_B->weight.set_data(
                torch::zeros({out, rank}, torch::dtype(torch::kFloat32).device(device)));
            a.scale = 1.0;  // lora_alpha / r with lora_alpha = r
            base->register_module("lora_A", a.lora_A);
            base->register_module("lora_B", a.lora_B);
            attn->lora[slot].push_back(a);
        }
    }
    return lora_parameters(unet);
}

torch::OrderedDict<std::string, torch::Tensor> lora_parameters(const UNet2DConditionModel& unet) {
    torch::OrderedDict<std::string, torch::Tensor> out;
    for (const auto& p : unet->named_parameters())
        if (is_lora_parameter(p.key())) out.insert(p.key(), p.value());
    return out;
}

LoraFile lora_file_from_parameters(const torch::OrderedDict<std::string, torch::Tensor>& params) {
    LoraFile out;
    out.format = "diffusers";
    for (const auto& p : params) {
        const auto at = p.key().find(".lora_A.weight");
        if (at == std::string::npos) continue;
        const auto module = p.key().substr(0, at);
        LoraModule m;
        m.component = "unet";
        m.module    = module;
        m.down      = p.value().detach();
        m.up        = params[module + ".lora_B.weight"].detach();
        m.key       = p.key();
        out.modules.push_back(std::move(m));
    }
    return out;
}

io::TensorMap lora_state_dict_for_saving(
    const torch::OrderedDict<std::string, torch::Tensor>& params) {
    io::TensorMap out;
    for (const auto& p : params) out["unet." + p.key()] = p.value().detach();
    return out;
}

void load_lora_parameters(torch::OrderedDict<std::string, torch::Tensor>& params,
                          const std::string& path) {
    const auto file = io::load_safetensors(path);
    for (const auto& [key, value] : file)
        if (key.rfind("unet.", 0) != 0 || !params.contains(key.substr(5)))
            throw std::runtime_error(path + ": unexpected key '" + key +
                                     "' (expected the LoRA parameters of this run's --rank on "
                                     "the UNet's attention projections)");
    torch::NoGradGuard no_grad;
    for (auto& p : params) {
        const auto it = file.find("unet." + p.key());
        if (it == file.end())
            throw std::runtime_error(path + ": missing key 'unet." + p.key() +
                                     "'; the file is incomplete or from another model");
        if (it->second.sizes() != p.value().sizes()) {
            std::ostringstream s;
            s << path << ": '" << it->first << "' has shape " << it->second.sizes()
              << ", this run's LoRA has " << p.value().sizes() << " (a different --rank?)";
            throw std::runtime_error(s.str());
        }
        p.value().copy_(it->second);
    }
}

torch::Tensor lora_delta(const LoraModule& m, const torch::Tensor& weight,
                         const std::string& path) {
    const auto down = m.down.to(torch::kFloat32).flatten(1);  // [r, in * kh * kw]
    const auto up   = m.up.to(torch::kFloat32).flatten(1);    // [out, r]
    auto fail       = [&](const std::string& why) {
        std::ostringstream s;
        s << path << ": LoRA key '" << m.key << "' (module " << m.component << "." << m.module
          << "): " << why << "; down " << m.down.sizes() << ", up " << m.up.sizes()
          << ", the model's weight " << weight.sizes()
          << ". Is this LoRA made for a different base model?";
        return std::invalid_argument(s.str());
    };
    if (up.size(1) != down.size(0)) throw fail("the ranks of down and up differ");
    if (m.up.dim() == 4 && (m.up.size(2) != 1 || m.up.size(3) != 1))
        throw fail("an up weight with a kernel larger than 1x1 is not a LoRA");
    if (up.size(0) != weight.size(0) || down.size(1) * up.size(0) != weight.numel())
        throw fail("the shapes do not fit");
    return (torch::mm(up, down) * m.alpha_scale).view(weight.sizes());
}

void apply_lora(const LoraFile& lora, double scale, bool fuse, UNet2DConditionModel& unet,
                CLIPTextModel& text_encoder) {
    std::map<std::string, std::pair<std::shared_ptr<AttentionImpl>, int>> projections;
    for (const auto& [name, attn] : attention_modules(*unet))
        for (int slot = 0; slot < 4; ++slot)
            projections[projection_name(name, slot)] = {attn, slot};
    const auto unet_modules = unet->named_modules();
    const auto text_modules = text_encoder->named_modules();
    torch::NoGradGuard no_grad;
    for (const auto& m : lora.modules) {
        const auto& modules = m.component == "unet" ? unet_modules : text_modules;
        const auto* module  = modules.find(m.module);
        const auto params   = module ? (*module)->named_parameters(/*recurse=*/false)
                                     : torch::OrderedDict<std::string, torch::Tensor>();
        const auto* weight  = params.find("weight");
        if (!weight)
            throw std::invalid_argument(lora.path + ": LoRA key '" + m.key + "' targets " +
                                        m.component + " module '" + m.module +
                                        "', which this model does not have (a LoRA for a "
                                        "different model family?)");
        auto delta         = lora_delta(m, *weight, lora.path);
        const auto adapter = projections.find(m.module);
        if (!fuse && m.component == "unet" && adapter != projections.end() && m.down.dim() == 2 &&
            m.up.dim() == 2) {
            auto& [attn, slot] = adapter->second;
            const auto opts    = weight->options();
            LoraAdapter a;
            a.lora_A = torch::nn::Linear(
                torch::nn::LinearOptions(m.down.size(1), m.down.size(0)).bias(false));
            a.lora_B =
                torch::nn::Linear(torch::nn::LinearOptions(m.up.size(1), m.up.size(0)).bias(false));
            a.lora_A->weight.set_data(m.down.to(opts));
            a.lora_B->weight.set_data(m.up.to(opts));
            a.lora_A->weight.requires_grad_(false);
            a.lora_B->weight.requires_grad_(false);
            a.scale = scale * m.alpha_scale;
            attn->lora[slot].push_back(a);
            continue;
        }
        auto w = *weight;
        w.copy_((w.to(torch::kFloat32) + delta.to(w.device()) * scale).to(w.scalar_type()));
    }
}

}  // namespace t2i::models
