// Implements: dist/process_group.h.
#include "dist/process_group.h"

#include <dlfcn.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "dist/nccl_loader.h"
#include "util/log.h"

namespace t2i::dist {

namespace {

// An integer environment variable, or `fallback` when it is unset.
int env_int(const char* name, int fallback, int min_value) {
    const char* v = std::getenv(name);
    if (!v || !*v) return fallback;
    char* end = nullptr;
    errno     = 0;
    long x    = std::strtol(v, &end, 10);
    if (errno || *end || x < min_value || x > 1 << 24)
        throw std::runtime_error(strformat(
            "environment variable %s='%s' is not an integer >= %d; it is set by the launcher "
            "(t2i launch, torchrun, accelerate launch): unset it or fix its value",
            name, v, min_value));
    return static_cast<int>(x);
}

std::string heartbeat_key(int rank) { return "t2i/heartbeat/" + std::to_string(rank); }

const std::string kFaultKey = "t2i/fault";

std::vector<uint8_t> to_bytes(const std::string& s) { return {s.begin(), s.end()}; }

}  // namespace

WorldInfo WorldInfo::from_env() {
    WorldInfo w;
    w.world_size = env_int("WORLD_SIZE", 1, 1);
    w.rank       = env_int("RANK", 0, 0);
    if (w.rank >= w.world_size)
        throw std::runtime_error(strformat(
            "environment: RANK=%d is not below WORLD_SIZE=%d; the launcher must give each of "
            "the WORLD_SIZE processes a distinct RANK in [0, WORLD_SIZE)",
            w.rank, w.world_size));
    w.local_rank       = env_int("LOCAL_RANK", w.rank, 0);
    w.local_world_size = env_int("LOCAL_WORLD_SIZE", w.world_size, 1);
    if (const char* a = std::getenv("MASTER_ADDR"); a && *a) w.master_addr = a;
    w.master_port = env_int("MASTER_PORT", 29500, 1);
    if (w.master_port > 65535)
        throw std::runtime_error(
            strformat("environment variable MASTER_PORT=%d is not a TCP port", w.master_port));
    return w;
}

// Gloo always (CPU tensors: the loss, flags, gathered optimizer state, barriers), NCCL beside it
// for CUDA tensors with --ddp_backend nccl (as torch keeps a Gloo group for object collectives).
struct ProcessGroup::Backend {
    c10::intrusive_ptr<c10d::Backend> gloo;
    c10::intrusive_ptr<c10d::Backend> nccl;  // from libt2i_nccl.so (dist/nccl_backend.cpp)
    template <typename Fn>
    auto call(bool device_tensors, Fn&& fn) {
        if (nccl && device_tensors) return fn(nccl);
        return fn(gloo);
    }
};

ProcessGroup::ProcessGroup(const WorldInfo& world, const GroupOptions& options)
    : world_(world), options_(options), backend_(std::make_unique<Backend>()) {
    const std::string where = world.master_addr + ":" + std::to_string(world.master_port);
    // Under torchrun (torch >= 1.9) the agent already hosts a TCPStore at MASTER_PORT and tells
    // the workers to join it as clients, under a prefix per restart (torch's env:// rendezvous).
    const char* agent_env  = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
    const bool agent_store = agent_env && std::string(agent_env) == "True";
    c10d::TCPStoreOptions so;
    so.port        = static_cast<uint16_t>(world.master_port);
    so.isServer    = world.rank == 0 && !agent_store;
    so.numWorkers  = static_cast<size_t>(world.world_size);
    so.waitWorkers = true;
    so.timeout     = options.timeout;
    try {
        store_ = c10::make_intrusive<c10d::TCPStore>(world.master_addr, so);
        c10d::TCPStoreOptions ho;
        ho.port        = so.port;
        ho.waitWorkers = false;
        ho.timeout     = std::max(options.heartbeat_interval * 5, std::chrono::milliseconds(5000));
        hb_store_      = c10::make_intrusive<c10d::TCPStore>(world.master_addr, ho);
        if (agent_store) {
            const char* restart = std::getenv("TORCHELASTIC_RESTART_COUNT");
            const std::string prefix =
                std::string("/worker/attempt_") + (restart && *restart ? restart : "0");
            store_    = c10::make_intrusive<c10d::PrefixStore>(prefix, store_);
            hb_store_ = c10::make_intrusive<c10d::PrefixStore>(prefix, hb_store_);
        }
    } catch (const std::exception& e) {
        throw std::runtime_error(strformat(
            "rank %d of %d: rendezvous at MASTER_ADDR:MASTER_PORT = %s failed within %llds: %s. "
            "Check that all %d processes were started with the same MASTER_ADDR / MASTER_PORT, "
            "that rank 0 can listen on that port, and raise --ddp_timeout if workers start late",
            world.rank, world.world_size, where.c_str(),
            (long long)(options.timeout.count() / 1000), e.what(), world.world_size));
    }
    if (options.backend != "gloo" && options.backend != "nccl")
        throw std::runtime_error("--ddp_backend must be gloo or nccl, got '" + options.backend +
                                 "'");
    if (options.backend == "nccl")
        backend_->nccl = make_nccl_backend(
            c10::make_intrusive<c10d::PrefixStore>("t2i/nccl", store_), world.rank,
            world.world_size,
            std::chrono::duration_cast<std::chrono::milliseconds>(options.timeout));
    auto o             = c10d::ProcessGroupGloo::Options::create(options.timeout);
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    if (ifname && *ifname)
        o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else if (world.master_addr == "127.0.0.1" || world.master_addr == "localhost")
        o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else
        o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    try {
        backend_->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
            c10::make_intrusive<c10d::PrefixStore>("t2i/pg", store_), world.rank, world.world_size,
            o);
    } catch (const std::exception& e) {
        throw std::runtime_error(
            strformat("rank %d of %d: connecting the Gloo process group failed: %s. On several "
                      "machines, set GLOO_SOCKET_IFNAME to the network interface the ranks share",
                      world.rank, world.world_size, e.what()));
    }
    heartbeat_ = std::thread([this] { heartbeat_loop(); });
}

ProcessGroup::~ProcessGroup() {
    // After a failure, rank 0 keeps the store (and the diagnosis in it) up a little longer for
    // the ranks that notice later.
    if (failed_ && world_.rank == 0) std::this_thread::sleep_for(options_.heartbeat_interval * 4);
    stop_ = true;
    if (heartbeat_.joinable()) heartbeat_.join();
    backend_.reset();
    hb_store_.reset();
    store_.reset();
}

void ProcessGroup::heartbeat_loop() {
    int64_t beats = 0;
    while (!stop_) {
        {
            std::lock_guard<std::mutex> lock(hb_mutex_);
            try {
                hb_store_->set(
                    heartbeat_key(world_.rank),
                    to_bytes(std::to_string(++beats) + " " + std::to_string(progress_.load())));
            } catch (const std::exception&) {
                // The store host (rank 0) is gone; diagnose_peers reports it.
            }
        }
        const auto until = std::chrono::steady_clock::now() + options_.heartbeat_interval;
        while (!stop_ && std::chrono::steady_clock::now() < until)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

std::string ProcessGroup::diagnose_peers() {
    // The first rank that diagnosed the failure published it: later ones (whose peers may
    // already have exited because of it) repeat that instead of guessing.
    try {
        std::lock_guard<std::mutex> lock(hb_mutex_);
        if (hb_store_->check({kFaultKey})) {
            const auto v = hb_store_->get(kFaultKey);
            return std::string(v.begin(), v.end());
        }
    } catch (const std::exception&) {
    }
    std::string found = diagnose_heartbeats();
    try {
        std::lock_guard<std::mutex> lock(hb_mutex_);
        const auto stored = hb_store_->compareSet(
            kFaultKey, {}, to_bytes(strformat("rank %d found: ", world_.rank) + found));
        return std::string(stored.begin(), stored.end());
    } catch (const std::exception&) {
        return found;
    }
}

std::string ProcessGroup::diagnose_heartbeats() {
    // (beats, step) per rank; beats = -1 when the rank never wrote one.
    auto snapshot = [&] {
        std::vector<std::pair<int64_t, int64_t>> s(size_t(world_.world_size), {-1, -1});
        std::lock_guard<std::mutex> lock(hb_mutex_);
        for (int q = 0; q < world_.world_size; ++q) {
            if (!hb_store_->check({heartbeat_key(q)})) continue;
            const auto v = hb_store_->get(heartbeat_key(q));
            std::istringstream in(std::string(v.begin(), v.end()));
            in >> s[size_t(q)].first >> s[size_t(q)].second;
        }
        return s;
    };
    try {
        const auto before = snapshot();
        std::this_thread::sleep_for(options_.heartbeat_interval * 5 / 2);
        const auto after = snapshot();
        std::string dead, lagging;
        int64_t newest = -1;
        for (const auto& a : after) newest = std::max(newest, a.second);
        for (int q = 0; q < world_.world_size; ++q) {
            if (q == world_.rank) continue;
            const auto& b = before[size_t(q)];
            const auto& a = after[size_t(q)];
            if (a.first < 0)
                dead += strformat("rank %d never sent a heartbeat; ", q);
            else if (a.first == b.first)
                dead += strformat(
                    "rank %d stopped sending heartbeats at step %lld (it died or "
                    "is frozen); ",
                    q, (long long)a.second);
            else if (a.second < newest)
                lagging += strformat(
                    "rank %d is alive but still at step %lld (it hangs or is "
                    "slower than --ddp_timeout allows); ",
                    q, (long long)a.second);
        }
        if (!dead.empty()) return dead.substr(0, dead.size() - 2);
        if (!lagging.empty()) return lagging.substr(0, lagging.size() - 2);
        return "every other rank still sends heartbeats";
    } catch (const std::exception&) {
        return strformat(
            "the TCPStore on rank 0 (%s:%d) is unreachable: rank 0 died or its machine is down",
            world_.master_addr.c_str(), world_.master_port);
    }
}

void ProcessGroup::fail(const std::string& what, const std::string& error) {
    failed_                 = true;
    const std::string peers = diagnose_peers();
    throw CollectiveError(strformat(
        "rank %d of %d: %s failed: %s. %s. The last complete checkpoint in --output_dir is "
        "usable: resume with --resume_from_checkpoint latest (on any number of processes)",
        world_.rank, world_.world_size, what.c_str(), error.c_str(), peers.c_str()));
}

c10::intrusive_ptr<c10d::Work> ProcessGroup::all_reduce_async(torch::Tensor& tensor, bool max) {
    std::vector<at::Tensor> v{tensor};
    c10d::AllreduceOptions o;
    o.reduceOp = max ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
    return backend_->call(tensor.is_cuda(), [&](auto& pg) { return pg->allreduce(v, o); });
}

void ProcessGroup::wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what) {
    try {
        work->wait();
    } catch (const std::exception& e) {
        fail(what, e.what());
    }
}

template <typename Start>
void ProcessGroup::run(const std::string& what, Start&& start) {
    c10::intrusive_ptr<c10d::Work> work;
    try {
        work = start();
    } catch (const std::exception& e) {
        fail(what, e.what());
    }
    wait(work, what);
}

void ProcessGroup::all_reduce(torch::Tensor& tensor, const std::string& what, bool max) {
    run(what, [&] { return all_reduce_async(tensor, max); });
}

void ProcessGroup::broadcast(const std::vector<torch::Tensor>& tensors, int root,
                             const std::string& what) {
    torch::NoGradGuard no_grad;
    // One flat buffer per dtype, in first-appearance order (the same on every rank).
    std::vector<torch::ScalarType> dtypes;
    for (const auto& t : tensors)
        if (std::find(dtypes.begin(), dtypes.end(), t.scalar_type()) == dtypes.end())
            dtypes.push_back(t.scalar_type());
    for (const auto dtype : dtypes) {
        std::vector<torch::Tensor> group;
        for (const auto& t : tensors)
            if (t.scalar_type() == dtype) group.push_back(t);
        std::vector<torch::Tensor> flat_parts;
        for (const auto& t : group) flat_parts.push_back(t.reshape({-1}));
        std::vector<at::Tensor> flat{torch::cat(flat_parts)};
        c10d::BroadcastOptions o;
        o.rootRank = root;
        run(what, [&] {
            return backend_->call(flat[0].is_cuda(),
                                  [&](auto& pg) { return pg->broadcast(flat, o); });
        });
        if (world_.rank == root) continue;
        int64_t offset = 0;
        for (auto& t : group) {
            t.copy_(flat[0].narrow(0, offset, t.numel()).view_as(t));
            offset += t.numel();
        }
    }
}

void ProcessGroup::barrier(const std::string& what) {
    run(what, [&] { return backend_->call(false, [&](auto& pg) { return pg->barrier(); }); });
}

void ProcessGroup::send(torch::Tensor& tensor, int dst, int tag, const std::string& what) {
    std::vector<at::Tensor> v{tensor};
    run(what, [&] {
        return backend_->call(tensor.is_cuda(), [&](auto& pg) { return pg->send(v, dst, tag); });
    });
}

void ProcessGroup::recv(torch::Tensor& tensor, int src, int tag, const std::string& what) {
    std::vector<at::Tensor> v{tensor};
    run(what, [&] {
        return backend_->call(tensor.is_cuda(), [&](auto& pg) { return pg->recv(v, src, tag); });
    });
}

void ProcessGroup::store_set(const std::string& key, const std::string& value) {
    store_->set("t2i/kv/" + key, to_bytes(value));
}

std::string ProcessGroup::store_get(const std::string& key) {
    try {
        const auto v = store_->get("t2i/kv/" + key);
        return std::string(v.begin(), v.end());
    } catch (const std::exception& e) {
        fail("reading '" + key + "' from the TCPStore", e.what());
    }
}

bool ProcessGroup::store_check(const std::string& key) {
    try {
        return store_->check({"t2i/kv/" + key});
    } catch (const std::exception& e) {
        fail("checking '" + key + "' in the TCPStore", e.what());
    }
}

// ---- GradReducer ----

GradReducer::GradReducer(ProcessGroup& group, std::vector<torch::Tensor> params,
                         int64_t bucket_cap_bytes)
    : group_(group) {
    for (auto& p : params)
        if (p.requires_grad()) params_.push_back(p);
    TORCH_CHECK(!params_.empty(), "GradReducer: no parameter requires grad");
    slot_.resize(params_.size());
    filled_.assign(params_.size(), false);
    used_.assign(params_.size(), 0.0f);
    // Reverse order: the last layers' gradients are ready first.
    int64_t bytes = 0;
    for (size_t k = params_.size(); k-- > 0;) {
        const auto& p        = params_[k];
        const int64_t pbytes = p.numel() * static_cast<int64_t>(p.element_size());
        const bool new_bucket =
            buckets_.empty() || bytes + pbytes > bucket_cap_bytes ||
            params_[buckets_.back().params.front()].scalar_type() != p.scalar_type();
        if (new_bucket) {
            buckets_.emplace_back();
            bytes = 0;
        }
        auto& b  = buckets_.back();
        slot_[k] = {buckets_.size() - 1, b.params.size()};
        b.offsets.push_back(
            b.offsets.empty() ? 0 : b.offsets.back() + params_[b.params.back()].numel());
        b.params.push_back(k);
        bytes += pbytes;
    }
    for (auto& b : buckets_) {
        const auto& last = params_[b.params.back()];
        b.flat =
            torch::zeros({b.offsets.back() + last.numel()}, last.options().requires_grad(false));
    }
    // A post-hook on each parameter's AccumulateGrad node, as torch's Reducer: it runs once .grad
    // holds the parameter's gradient. (A tensor hook would also run for autograd::grad calls
    // that only read the gradient, such as the recomputation of gradient checkpointing.)
    for (size_t k = 0; k < params_.size(); ++k) {
        auto acc = torch::autograd::impl::grad_accumulator(params_[k]);
        TORCH_CHECK(acc, "GradReducer: parameter ", k, " is not a leaf that requires grad");
        hook_keys_.push_back(
            acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
                [this, k](const torch::autograd::variable_list& outputs,
                          const torch::autograd::variable_list&) {
                    on_grad_accumulated(k);
                    return outputs;
                })));
        grad_accumulators_.push_back(std::move(acc));
    }
}

GradReducer::~GradReducer() {
    for (size_t k = 0; k < grad_accumulators_.size(); ++k)
        grad_accumulators_[k]->del_post_hook(hook_keys_[k]);
}

void GradReducer::prepare_for_backward() {
    std::lock_guard<std::mutex> lock(mutex_);
    active_      = true;
    next_launch_ = 0;
    std::fill(filled_.begin(), filled_.end(), false);
    std::fill(used_.begin(), used_.end(), 0.0f);
    for (auto& b : buckets_) {
        b.pending = b.params.size();
        b.work.reset();
    }
}

void GradReducer::on_grad_accumulated(size_t k) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!active_) return;
    torch::NoGradGuard no_grad;
    const auto [bi, pos] = slot_[k];
    auto& b              = buckets_[bi];
    const auto& p        = params_[k];
    // torch DDP refuses this too ("marked ready twice"): the bucket is already on the wire.
    TORCH_CHECK(!filled_[k] || bi >= next_launch_, "GradReducer: parameter ", k, " ", p.sizes(),
                " received a second gradient after its bucket was all-reduced");
    auto view = b.flat.narrow(0, b.offsets[pos], p.numel()).view(p.sizes());
    view.copy_(p.grad());  // the accumulated gradient (a second contribution: the new sum)
    if (filled_[k]) return;
    filled_[k] = true;
    used_[k]   = 1;
    if (--b.pending == 0) launch_ready();
}

void GradReducer::launch(size_t bi) {
    buckets_[bi].work = group_.all_reduce_async(buckets_[bi].flat);
}

void GradReducer::launch_ready() {
    while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0)
        launch(next_launch_++);
}

void GradReducer::finish() {
    std::unique_lock<std::mutex> lock(mutex_);
    TORCH_CHECK(active_, "GradReducer::finish without prepare_for_backward");
    torch::NoGradGuard no_grad;
    for (size_t k = 0; k < params_.size(); ++k) {
        if (filled_[k]) continue;
        const auto [bi, pos] = slot_[k];
        auto& b              = buckets_[bi];
        auto view = b.flat.narrow(0, b.offsets[pos], params_[k].numel()).view(params_[k].sizes());
        const bool has_grad = params_[k].grad().defined();  // from earlier micro-steps
        if (has_grad)
            view.copy_(params_[k].grad());
        else
            view.zero_();
        used_[k]   = has_grad ? 1 : 0;
        filled_[k] = true;
        --b.pending;
    }
    launch_ready();
    // Which parameters got a gradient on any rank: the others keep none, as in one process
    // (AdamW then skips them; torch DDP leaves globally unused parameters alone too).
    auto used      = torch::tensor(used_, torch::kFloat32);  // on the CPU: through Gloo
    auto used_work = group_.all_reduce_async(used);
    active_        = false;
    lock.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    for (auto& b : buckets_) group_.wait(b.work, "the gradient all-reduce");
    group_.wait(used_work, "the gradient all-reduce");
    last_wait_s_   = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const float* u = used.data_ptr<float>();
    for (auto& b : buckets_) {
        for (size_t j = 0; j < b.params.size(); ++j) {
            const size_t k = b.params[j];
            auto& p        = params_[k];
            auto view      = b.flat.narrow(0, b.offsets[j], p.numel()).view(p.sizes());
            if (u[k] == 0)
                p.mutable_grad() = torch::Tensor();
            else if (p.grad().defined())
                p.mutable_grad().copy_(view);
            else
                p.mutable_grad() = view.clone();
        }
        b.work.reset();
    }
}

}  // namespace t2i::dist
