// Implements: dist/zero.h.
#include "dist/zero.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "io/safetensors.h"

namespace t2i::dist {

namespace {

// Optimizer state keys are "<kind>.<param>" (kind: exp_avg, exp_avg_sq, their 8-bit absmax
// scales, step) plus the 0-d "step".
std::pair<std::string, std::string> split_key(const std::string& key) {
    const auto dot = key.find('.');
    if (dot == std::string::npos) return {key, ""};
    return {key.substr(0, dot), key.substr(dot + 1)};
}

std::map<std::string, int64_t> param_steps(const TensorMap& state,
                                           const std::vector<std::string>& names) {
    auto it = state.find("step");
    if (it == state.end()) throw std::runtime_error("optimizer state: missing 'step'");
    const int64_t step = it->second.item<int64_t>();
    std::map<std::string, int64_t> out;
    for (const auto& n : names) {
        auto own = state.find("step." + n);
        out[n]   = own == state.end() ? step : own->second.item<int64_t>();
    }
    return out;
}

void put_steps(TensorMap& state, const std::map<std::string, int64_t>& steps) {
    int64_t top = 0;
    for (const auto& [n, s] : steps) top = std::max(top, s);
    state["step"] = torch::tensor(top, torch::kInt64);
    for (const auto& [n, s] : steps)
        if (s != top) state["step." + n] = torch::tensor(s, torch::kInt64);
}

}  // namespace

std::vector<int> partition_parameters(const NamedParameters& params, int world_size) {
    std::vector<size_t> order(params.size());
    std::iota(order.begin(), order.end(), 0);
    // Largest first, ties by position: balances element counts like ZeroRedundancyOptimizer.
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        return params[a].value().numel() > params[b].value().numel();
    });
    std::vector<int64_t> load(size_t(world_size), 0);
    std::vector<int> owner(params.size(), 0);
    for (size_t i : order) {
        const int r = int(std::min_element(load.begin(), load.end()) - load.begin());
        owner[i]    = r;
        load[size_t(r)] += params[i].value().numel();
    }
    return owner;
}

NamedParameters owned_parameters(const NamedParameters& params, const std::vector<int>& owner,
                                 int rank) {
    NamedParameters out;
    for (size_t i = 0; i < params.size(); ++i)
        if (owner[i] == rank) out.insert(params[i].key(), params[i].value());
    return out;
}

TensorMap shard_optimizer_state(const TensorMap& full, const std::vector<std::string>& names) {
    const std::set<std::string> keep(names.begin(), names.end());
    TensorMap out;
    for (const auto& [key, t] : full) {
        const auto [kind, name] = split_key(key);
        if (kind != "step" && keep.count(name)) out[key] = t;
    }
    put_steps(out, param_steps(full, names));
    return out;
}

TensorMap merge_optimizer_states(const std::vector<TensorMap>& shards,
                                 const std::vector<std::vector<std::string>>& names) {
    TORCH_CHECK(shards.size() == names.size(), "merge_optimizer_states: ", shards.size(),
                " shards but ", names.size(), " name lists");
    TensorMap out;
    std::map<std::string, int64_t> steps;
    for (size_t r = 0; r < shards.size(); ++r) {
        for (const auto& [key, t] : shards[r])
            if (split_key(key).first != "step") out[key] = t;
        for (const auto& [n, s] : param_steps(shards[r], names[r])) steps[n] = s;
    }
    put_steps(out, steps);
    return out;
}

std::vector<TensorMap> gather_tensor_maps(ProcessGroup& group, const TensorMap& local,
                                          const std::string& what) {
    const int seq          = group.next_sequence();
    const std::string base = "gather/" + std::to_string(seq) + "/";
    std::vector<TensorMap> out;
    if (!group.is_main()) {
        nlohmann::json meta = nlohmann::json::array();
        std::vector<torch::Tensor> bytes;
        for (const auto& [key, t] : local) {
            auto c = t.detach().to(torch::kCPU).contiguous();
            meta.push_back({{"key", key},
                            {"dtype", io::dtype_to_safetensors(c.scalar_type())},
                            {"shape", c.sizes().vec()}});
            bytes.push_back(c.reshape({-1}).view(torch::kUInt8));
        }
        group.store_set(base + std::to_string(group.rank()), meta.dump());
        auto flat = bytes.empty() ? torch::Tensor() : torch::cat(bytes);
        if (!flat.defined() || flat.numel() == 0) flat = torch::zeros({1}, torch::kUInt8);
        group.send(flat, 0, seq, what);
        return out;
    }
    out.resize(size_t(group.size()));
    out[0] = local;
    for (int q = 1; q < group.size(); ++q) {
        const auto meta = nlohmann::json::parse(group.store_get(base + std::to_string(q)));
        std::vector<std::pair<std::string, torch::Tensor>> parts;
        int64_t total = 0;
        for (const auto& m : meta) {
            const auto dtype = io::dtype_from_safetensors(m["dtype"].get<std::string>(), what);
            auto t = torch::empty(m["shape"].get<std::vector<int64_t>>(), torch::dtype(dtype));
            total += t.numel() * int64_t(t.element_size());
            parts.emplace_back(m["key"].get<std::string>(), t);
        }
        auto flat = torch::empty({std::max<int64_t>(total, 1)}, torch::kUInt8);
        group.recv(flat, q, seq, what);
        int64_t offset = 0;
        for (auto& [key, t] : parts) {
            const int64_t n = t.numel() * int64_t(t.element_size());
            t.reshape({-1}).view(torch::kUInt8).copy_(flat.narrow(0, offset, n));
            offset += n;
            out[size_t(q)][key] = t;
        }
    }
    return out;
}

void sync_owned_parameters(ProcessGroup& group, const NamedParameters& params,
                           const std::vector<int>& owner) {
    for (int r = 0; r < group.size(); ++r) {
        std::vector<torch::Tensor> mine;
        for (size_t i = 0; i < params.size(); ++i)
            if (owner[i] == r) mine.push_back(params[i].value());
        if (!mine.empty()) group.broadcast(mine, r, "the ZeRO-1 parameter broadcast");
    }
}

}  // namespace t2i::dist
