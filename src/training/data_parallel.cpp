// Implements: training/data_parallel.h.
#include "training/data_parallel.h"

#include "dist/zero.h"
#include "util/log.h"

namespace t2i::training {

DataParallel::DataParallel(const TrainConfig& c, const dist::WorldInfo& world,
                           const torch::Device& device) {
    if (!world.distributed()) return;
    set_log_rank(world.rank, world.world_size);
    dist::GroupOptions o;
    o.backend = !c.ddp_backend.empty() ? c.ddp_backend : device.is_cuda() ? "nccl" : "gloo";
    o.timeout = std::chrono::milliseconds(static_cast<int64_t>(c.ddp_timeout * 1000));
    group_    = std::make_unique<dist::ProcessGroup>(world, o);
    zero1_    = c.zero_stage == 1;
    log_info("rank %d of %d joined through %s:%d (%s)", world.rank, world.world_size,
             world.master_addr.c_str(), world.master_port, o.backend.c_str());
}

uint64_t DataParallel::shared_seed(uint64_t local) {
    if (!group_) return local;
    if (is_main()) group_->store_set("seed", std::to_string(local));
    return std::stoull(group_->store_get("seed"));
}

std::optional<std::string> DataParallel::shared_path(const std::optional<std::string>& on_main,
                                                     const std::string& key) {
    if (!group_) return on_main;
    if (is_main()) group_->store_set(key, on_main.value_or(""));
    const std::string shared = group_->store_get(key);
    if (shared.empty()) return std::nullopt;
    return shared;
}

void DataParallel::check_dataset_size(int64_t size) {
    if (!group_) return;
    auto n = torch::tensor({double(size), -double(size)}, torch::kFloat64);
    group_->all_reduce(n, "comparing the dataset sizes of the ranks", /*max=*/true);
    if (n[0].item<double>() != -n[1].item<double>())
        throw std::runtime_error(
            strformat("rank %d reads %lld samples, but the ranks read between %.0f and %.0f: "
                      "every process must see the same dataset (same --train_data_dir / "
                      "--dataset_name contents and --max_train_samples)",
                      rank(), (long long)size, -n[1].item<double>(), n[0].item<double>()));
}

NamedParameters DataParallel::optimizer_parameters(const NamedParameters& params) {
    params_ = params;
    if (!zero1_) return params;
    owner_ = dist::partition_parameters(params, world_size());
    owned_names_.assign(size_t(world_size()), {});
    for (size_t i = 0; i < params.size(); ++i)
        owned_names_[size_t(owner_[i])].push_back(params[i].key());
    return dist::owned_parameters(params, owner_, rank());
}

OptimizerStateFilter DataParallel::optimizer_state_filter() const {
    if (!zero1_) return {};
    const auto mine = owned_names_[size_t(rank())];
    return [mine](const TensorMap& full) { return dist::shard_optimizer_state(full, mine); };
}

void DataParallel::broadcast_and_hook(const std::vector<torch::Tensor>& params,
                                      double bucket_cap_mb) {
    if (!group_) return;
    group_->broadcast(params, 0, "the initial weight broadcast");
    reducer_ = std::make_unique<dist::GradReducer>(
        *group_, params, static_cast<int64_t>(bucket_cap_mb * 1024 * 1024));
}

void DataParallel::before_last_backward() {
    if (!reducer_) return;
    reducer_->prepare_for_backward();
    prepared_ = true;
}

void DataParallel::sync_gradients(double& loss_sum, int64_t& samples, bool& stop,
                                  int64_t global_step) {
    if (!group_) return;
    if (!prepared_) reducer_->prepare_for_backward();  // no micro-batch was the last one
    prepared_ = false;
    group_->set_progress(global_step);
    reducer_->finish();
    auto totals = torch::tensor({loss_sum, double(samples), stop ? 1.0 : 0.0}, torch::kFloat64);
    group_->all_reduce(totals, "the loss all-reduce");
    loss_sum = totals[0].item<double>();
    samples  = static_cast<int64_t>(totals[1].item<double>());
    stop     = totals[2].item<double>() > 0;
}

void DataParallel::after_optimizer_step(const std::vector<torch::Tensor>& params) {
    if (!zero1_) return;
    for (auto p : params) p.mutable_grad() = torch::Tensor();  // the others' were not used
    dist::sync_owned_parameters(*group_, params_, owner_);
}

TensorMap DataParallel::checkpoint_optimizer_state(const AdamW& optimizer) {
    if (!zero1_) return is_main() ? optimizer.state_dict() : TensorMap();
    auto shards = dist::gather_tensor_maps(*group_, optimizer.state_dict(),
                                           "gathering the ZeRO-1 optimizer state");
    return is_main() ? dist::merge_optimizer_states(shards, owned_names_) : TensorMap();
}

StepDraws DataParallel::local_draws(const StepDraws& d, const data::Batch& batch) const {
    if (!active()) return d;
    const int64_t offset = batch.global_offset, n = batch.size();
    auto part = [&](const torch::Tensor& t) { return t.defined() ? t.narrow(0, offset, n) : t; };
    StepDraws s;
    s.vae_eps       = part(d.vae_eps);
    s.noise         = part(d.noise);
    s.offset_noise  = part(d.offset_noise);
    s.perturb_noise = part(d.perturb_noise);
    s.timesteps     = part(d.timesteps);
    return s;
}

double DataParallel::loss_share(const data::Batch& batch) const {
    return active() ? double(batch.size()) / double(batch.global_size) : 1.0;
}

}  // namespace t2i::training
