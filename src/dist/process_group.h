// Implements: the data-parallel world on torch's c10d, the way accelerate / torch DDP set it up.
//   WorldInfo     torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
//                 MASTER_ADDR, MASTER_PORT); no variables = one process.
//   ProcessGroup  rendezvous through c10d's TCPStore (hosted by rank 0), a ProcessGroupGloo (CPU)
//                 or ProcessGroupNCCL (CUDA builds), collectives with a bounded wait, and fault
//                 reports: every rank publishes a heartbeat (beat count, step) in the store, so a
//                 failed collective names the rank that died (no beats) or lags (oldest step).
//   GradReducer   torch DDP's Reducer (torch/csrc/distributed/c10d/reducer.cpp): gradients go into
//                 ~25 MB buckets in reverse parameter order as autograd produces them; a full
//                 bucket is all-reduced (sum) while backward goes on. Buckets launch strictly in
//                 index order so every rank issues the same collectives in the same order.
//                 Only the last micro-step of an optimizer step communicates (DDP's no_sync).
// Every collective here is blocking for its caller unless it returns a Work.
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace c10d {
class Store;
class Work;
}  // namespace c10d

namespace t2i::dist {

struct WorldInfo {
    int rank                = 0;
    int world_size          = 1;
    int local_rank          = 0;
    int local_world_size    = 1;
    std::string master_addr = "127.0.0.1";
    int master_port         = 29500;

    // From the environment torchrun / accelerate launch / t2i launch set. Throws naming the
    // variable when one is malformed or RANK / WORLD_SIZE disagree.
    static WorldInfo from_env();
    bool distributed() const { return world_size > 1; }
};

// A collective that failed or timed out. what() names this rank, the collective, and what the
// heartbeats say about the others (which rank died or hangs).
class CollectiveError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

struct GroupOptions {
    std::string backend = "gloo";                                 // gloo | nccl
    std::chrono::milliseconds timeout{std::chrono::minutes(30)};  // torch's default
    std::chrono::milliseconds heartbeat_interval{1000};
};

class ProcessGroup {
  public:
    // Rendezvous with the other world.world_size - 1 processes (rank 0 hosts the TCPStore at
    // MASTER_ADDR:MASTER_PORT), then creates the backend. Waits at most options.timeout.
    ProcessGroup(const WorldInfo& world, const GroupOptions& options);
    ~ProcessGroup();
    ProcessGroup(const ProcessGroup&)            = delete;
    ProcessGroup& operator=(const ProcessGroup&) = delete;

    int rank() const { return world_.rank; }
    int size() const { return world_.world_size; }
    bool is_main() const { return world_.rank == 0; }
    const WorldInfo& world() const { return world_; }
    const GroupOptions& options() const { return options_; }

    // In-place sum (or max) over ranks, asynchronous; finish with wait(). CUDA tensors go
    // through NCCL when the group has it, CPU tensors through Gloo.
    c10::intrusive_ptr<c10d::Work> all_reduce_async(torch::Tensor& tensor, bool max = false);
    // Waits for `work`; throws CollectiveError (with the fault report) on failure or timeout.
    void wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what);
    void all_reduce(torch::Tensor& tensor, const std::string& what, bool max = false);
    // Copies root's values into `tensors` on every rank (coalesced: one flat buffer per dtype).
    void broadcast(const std::vector<torch::Tensor>& tensors, int root, const std::string& what);
    void barrier(const std::string& what);
    // Point to point (ZeRO state gathering); tensors must be contiguous.
    void send(torch::Tensor& tensor, int dst, int tag, const std::string& what);
    void recv(torch::Tensor& tensor, int src, int tag, const std::string& what);

    // Small values through the store (strings: resume paths, shapes of gathered state).
    void store_set(const std::string& key, const std::string& value);
    std::string store_get(const std::string& key);  // waits up to the timeout for the key
    bool store_check(const std::string& key);       // whether the key is set, without waiting

    // 0, 1, 2, ...: numbers collective calls that need unique store keys or tags (the calls
    // happen in the same order on every rank).
    int next_sequence() { return sequence_++; }

    // The step the heartbeat reports (for naming a lagging rank).
    void set_progress(int64_t step) { progress_ = step; }

    // What the heartbeats say about the other ranks, e.g. "rank 1 stopped sending heartbeats
    // (died?)". Takes about two heartbeat intervals. The first rank to diagnose a failure
    // publishes its finding in the store; the others report that one.
    std::string diagnose_peers();

  private:
    [[noreturn]] void fail(const std::string& what, const std::string& error);
    // Starts a collective (start() returns its Work) and waits; any failure goes to fail().
    template <typename Start>
    void run(const std::string& what, Start&& start);
    void heartbeat_loop();
    std::string diagnose_heartbeats();

    WorldInfo world_;
    GroupOptions options_;
    c10::intrusive_ptr<c10d::Store> store_;     // rank 0: the server
    c10::intrusive_ptr<c10d::Store> hb_store_;  // the heartbeat thread's own client connection
    struct Backend;
    std::unique_ptr<Backend> backend_;
    std::atomic<int64_t> progress_{0};
    int sequence_ = 0;
    std::atomic<bool> stop_{false};
    std::atomic<bool> failed_{false};
    std::mutex hb_mutex_;  // guards hb_store_ between the thread and diagnose_peers
    std::thread heartbeat_;
};

// torch DDP's gradient synchronization (see the file comment). The parameters must share one
// device; any mix of dtypes is bucketed per dtype.
class GradReducer {
  public:
    GradReducer(ProcessGroup& group, std::vector<torch::Tensor> params, int64_t bucket_cap_bytes);
    ~GradReducer();
    GradReducer(const GradReducer&)            = delete;
    GradReducer& operator=(const GradReducer&) = delete;

    // The next backward pass is the optimizer step's last micro-step: reduce what it produces.
    void prepare_for_backward();
    // After that backward (or instead of it, for a rank with no samples): launches the buckets
    // not launched yet (parameters without a new gradient contribute their accumulated grad or
    // zeros), waits for all and writes the summed gradients into .grad. A parameter that has no
    // gradient on any rank keeps none (as in one process).
    void finish();

    size_t num_buckets() const { return buckets_.size(); }
    // Seconds finish() spent waiting on communication that backward did not hide (last step).
    double last_wait_seconds() const { return last_wait_s_; }

  private:
    struct Bucket {
        torch::Tensor flat;
        std::vector<size_t> params;  // indices into params_
        std::vector<int64_t> offsets;
        size_t pending = 0;
        c10::intrusive_ptr<c10d::Work> work;
    };
    void on_grad_accumulated(size_t index);
    void launch_ready();  // launches ready buckets, strictly in order
    void launch(size_t b);

    ProcessGroup& group_;
    std::vector<torch::Tensor> params_;
    std::vector<std::pair<size_t, size_t>> slot_;  // param -> (bucket, position in bucket)
    std::vector<bool> filled_;
    std::vector<float> used_;  // 1: this rank has a gradient for the parameter this step
    std::vector<Bucket> buckets_;
    // The parameters' AccumulateGrad nodes (held, as torch's Reducer holds them) and the keys of
    // the post-hooks on them.
    std::vector<std::shared_ptr<torch::autograd::Node>> grad_accumulators_;
    std::vector<uintptr_t> hook_keys_;
    size_t next_launch_ = 0;
    bool active_        = false;
    double last_wait_s_ = 0;
    std::mutex mutex_;
};

// accelerate's main_process_first: rank 0 runs `fn` while the others wait, then the others run
// it. Without a group (one process) it just runs `fn`.
template <typename Fn>
void main_process_first(ProcessGroup* group, Fn&& fn, const std::string& what) {
    if (group && !group->is_main()) group->barrier(what);
    fn();
    if (group && group->is_main()) group->barrier(what);
}

}  // namespace t2i::dist
