// Implements: dist/zero.h.
#include "dist/zero.h"

#include <algorithm>
#include <cstring>
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
    // Three messages per rank, all through the backend (so a rank that dies fails the receive
    // at once): [metadata bytes, data bytes], the metadata JSON, the data.
    const int tag = group.next_sequence() * 3;
    std::vector<TensorMap> out;
    auto bytes_of = [](const std::string& s) {
        auto t = torch::empty({std::max<int64_t>(1, int64_t(s.size()))}, torch::kUInt8);
        std::memcpy(t.data_ptr<uint8_t>(), s.data(), s.size());
        return t;
    };
    if (!group.is_main()) {
        nlohmann::json meta = nlohmann::json::array();
        std::vector<torch::Tensor> bytes;
        for (const auto& [key, t] : local) {
            auto c = t.detach().to(torch::kCPU).contiguous();
            meta.push_back({{"key", key},
                            {"dtype", io::dtype_to_safetensors(c.scalar_type())},
                            {"shape", c.sizes().vec()}});
            if (c.numel() > 0) bytes.push_back(c.reshape({-1}).view(torch::kUInt8));
        }
        auto data            = bytes.empty() ? torch::zeros({1}, torch::kUInt8) : torch::cat(bytes);
        const std::string js = meta.dump();
        auto sizes           = torch::tensor({int64_t(js.size()), data.numel()}, torch::kInt64);
        auto js_bytes        = bytes_of(js);
        group.send(sizes, 0, tag, what);
        group.send(js_bytes, 0, tag + 1, what);
        group.send(data, 0, tag + 2, what);
        return out;
    }
    out.resize(size_t(group.size()));
    out[0] = local;
    for (int q = 1; q < group.size(); ++q) {
        auto sizes = torch::empty({2}, torch::kInt64);
        group.recv(sizes, q, tag, what);
        const int64_t js_size = sizes[0].item<int64_t>(), data_size = sizes[1].item<int64_t>();
        auto js_bytes = torch::empty({std::max<int64_t>(1, js_size)}, torch::kUInt8);
        group.recv(js_bytes, q, tag + 1, what);
        auto data = torch::empty({data_size}, torch::kUInt8);
        group.recv(data, q, tag + 2, what);
        const auto meta = nlohmann::json::parse(
            std::string(reinterpret_cast<const char*>(js_bytes.data_ptr<uint8_t>()), js_size));
        int64_t offset = 0;
        for (const auto& m : meta) {
            const auto dtype = io::dtype_from_safetensors(m["dtype"].get<std::string>(), what);
            auto t = torch::empty(m["shape"].get<std::vector<int64_t>>(), torch::dtype(dtype));
            const int64_t n = t.numel() * int64_t(t.element_size());
            TORCH_CHECK(offset + n <= data_size, what, ": rank ", q, " sent ", data_size,
                        " bytes, its metadata describes more");
            if (n > 0) t.reshape({-1}).view(torch::kUInt8).copy_(data.narrow(0, offset, n));
            offset += n;
            out[size_t(q)][m["key"].get<std::string>()] = t;
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
