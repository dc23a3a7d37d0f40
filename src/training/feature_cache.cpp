// Implements: training/feature_cache.h.
#include "training/feature_cache.h"

#include <sys/stat.h>

#include <chrono>
#include <cinttypes>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "io/file_util.h"
#include "io/json_config.h"
#include "io/safetensors.h"
#include "io/tensorboard.h"
#include "util/autocast.h"
#include "util/log.h"

namespace t2i::training {

namespace fs = std::filesystem;
using json   = nlohmann::json;

namespace {

constexpr int kCacheVersion        = 1;
constexpr const char* kMetadataKey = "t2i_cache";
constexpr const char* kLatentFile  = "latents.safetensors";
constexpr const char* kTextFile    = "text_encoder_outputs.safetensors";
constexpr int64_t kTextEncodeBatch = 16;

// What an image file was when it was encoded: a changed file (size or modification time) is
// encoded again. `name` is the record's image path; `file` the file it is read from (the shard
// for an image stored in a Parquet / Arrow dataset: any change to the shard encodes its rows
// again).
// The path's bytes are stored in hex: a file name need not be UTF-8 (JSON text must be).
json image_stamp(const std::string& name, const std::string& file) {
    static const char* const kHex = "0123456789abcdef";
    std::string hex;
    for (const unsigned char ch : name) hex += kHex[ch >> 4], hex += kHex[ch & 15];
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0) return json::array({hex, -1, -1});
    const int64_t mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    return json::array({hex, int64_t(st.st_size), mtime_ns});
}

// A cache file's record of what it was made from, or null when there is no usable file.
json read_record(const std::string& file, const std::string& what) {
    if (!io::file_exists(file)) return nullptr;
    try {
        io::SafetensorsFile f(file);
        const auto it = f.metadata().find(kMetadataKey);
        if (it == f.metadata().end())
            throw std::runtime_error("no '" + std::string(kMetadataKey) + "' metadata");
        return json::parse(it->second);
    } catch (const std::exception& e) {
        log_warn("%s cache '%s' is unreadable (%s); building it again", what.c_str(), file.c_str(),
                 e.what());
        return nullptr;
    }
}

// A progress line every ~10% (and at the end) while a cache is built.
class CacheProgress {
  public:
    CacheProgress(std::string what, int64_t total) : what_(std::move(what)), total_(total) {}
    void advance(int64_t n) {
        done_ += n;
        const int64_t decile = total_ > 0 ? done_ * 10 / total_ : 10;
        if (decile == last_decile_ && done_ < total_) return;
        last_decile_ = decile;
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
        const double eta = done_ > 0 ? s / done_ * (total_ - done_) : 0;
        log_info("caching %s: %lld/%lld (%.0f%%), %.1f s, ~%.0f s left", what_.c_str(),
                 (long long)done_, (long long)total_, 100.0 * done_ / std::max<int64_t>(1, total_),
                 s, eta);
    }

  private:
    std::string what_;
    int64_t total_, done_ = 0, last_decile_ = -1;
    std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

// Rank 0's tensor on every rank (any dtype: sent as bytes, with its dtype and shape first).
torch::Tensor share_tensor(DataParallel& dp, const torch::Tensor& on_main,
                           const std::string& what) {
    auto header = torch::zeros({10}, torch::kInt64);
    if (dp.is_main()) {
        header[0] = on_main.dim();
        header[1] = static_cast<int64_t>(on_main.scalar_type());
        for (int64_t d = 0; d < on_main.dim(); ++d) header[2 + d] = on_main.size(d);
    }
    dp.group()->broadcast({header}, 0, what);
    std::vector<int64_t> shape;
    for (int64_t d = 0; d < header[0].item<int64_t>(); ++d)
        shape.push_back(header[2 + d].item<int64_t>());
    const auto dtype = static_cast<torch::ScalarType>(header[1].item<int64_t>());
    auto t           = dp.is_main() ? on_main.contiguous() : torch::empty(shape, dtype);
    auto bytes       = t.view({-1}).view(torch::kUInt8);
    if (bytes.numel() > 0) dp.group()->broadcast({bytes}, 0, what);
    return t;
}

// The distinct token sequences of every caption (each alternative of a list), in
// first-appearance order, and the row of caption c of sample i in text_row[i][c].
std::vector<torch::Tensor> distinct_token_ids(const data::CaptionDataset& ds,
                                              std::vector<std::vector<int64_t>>* text_row) {
    std::map<std::vector<int64_t>, int64_t> row_of;
    std::vector<torch::Tensor> ids;
    text_row->assign(static_cast<size_t>(ds.size()), {});
    for (int64_t i = 0; i < ds.size(); ++i)
        for (const auto& caption : ds.record(i).captions) {
            auto t = ds.input_ids(caption);
            std::vector<int64_t> key(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
            auto [it, added] = row_of.emplace(std::move(key), int64_t(ids.size()));
            if (added) ids.push_back(t);
            (*text_row)[size_t(i)].push_back(it->second);
        }
    return ids;
}

// --enable_bucket: each image's bucket and row there (the plan's); the bucket tensors unset.
void set_bucket_rows(const data::BucketPlan& plan, FeatureCache* cache) {
    for (int64_t i = 0; i < plan.dataset_size(); ++i) {
        cache->bucket_of.push_back(plan.bucket_of(i));
        cache->bucket_row.push_back(plan.row_in_bucket(i));
    }
    cache->bucket_mean.assign(plan.buckets().size(), torch::Tensor());
    cache->bucket_std.assign(plan.buckets().size(), torch::Tensor());
}

// A bucket's name in a latent cache file: "WxH" (tensors "mean.WxH", "std.WxH").
std::string bucket_name(const data::BucketSize& b) {
    return std::to_string(b.width) + "x" + std::to_string(b.height);
}

// Image stamp (or bucket name) -> [flips, Z, h, w] posterior mean and std.
using LatentRows = std::map<std::string, std::pair<torch::Tensor, torch::Tensor>>;

// The rows of an earlier latent cache file made from `made_from` (its images aside), by image
// stamp. Empty when there is no such file or it is damaged.
LatentRows read_old_latents(const std::string& file, const json& made_from, int64_t flips) {
    LatentRows old_rows;
    const json rec = read_record(file, "latent");
    if (rec.is_null()) return old_rows;
    json key = rec;
    key.erase("images");
    key.erase("rows");
    if (key != made_from || !rec.contains("images") || !rec["images"].is_array()) {
        log_info(
            "latent cache '%s' was made from other VAE weights or transform flags; encoding "
            "every image again",
            file.c_str());
        return old_rows;
    }
    try {
        io::SafetensorsFile f(file);
        const auto& images  = rec["images"];
        const bool bucketed = rec.contains("rows");  // --enable_bucket: [bucket, row] per image
        LatentRows groups;
        for (size_t j = 0; j < images.size(); ++j) {
            std::string name;
            int64_t row = int64_t(j);
            if (bucketed) {
                const auto& r = rec["rows"].at(j);
                if (r.is_null()) continue;
                name = "." + r.at(0).get<std::string>();
                row  = r.at(1).get<int64_t>();
            }
            if (!groups.count(name)) groups[name] = {f.get("mean" + name), f.get("std" + name)};
            const auto& [mean, stdev] = groups[name];
            if (mean.sizes() != stdev.sizes() || mean.dim() != 4 || row < 0 ||
                mean.size(0) < (row + 1) * flips ||
                (!bucketed && mean.size(0) != int64_t(images.size()) * flips))
                throw std::runtime_error("unexpected tensor shapes");
            old_rows[images[j].dump()] = {mean.narrow(0, row * flips, flips),
                                          stdev.narrow(0, row * flips, flips)};
        }
    } catch (const std::exception& e) {
        old_rows.clear();
        log_warn("latent cache '%s' is damaged (%s); encoding every image again", file.c_str(),
                 e.what());
    }
    return old_rows;
}

void build_latents(const TrainConfig& c, const data::CaptionDataset& ds,
                   const data::BucketPlan* plan, StepModels& m, torch::ScalarType weight_dtype,
                   io::OutputFolder* out, torch::Device device, FeatureCache* cache) {
    const int64_t n = ds.size(), flips = c.random_flip ? 2 : 1;
    // What a disk cache was made from (the weights hash reads every VAE weight: disk caches only).
    json made_from = {{"version", kCacheVersion},
                      {"vae", c.cache_latents_to_disk ? weights_fingerprint(*m.vae) : ""},
                      {"dtype", std::string(c10::toString(weight_dtype))},
                      {"resolution", c.resolution},
                      {"center_crop", c.center_crop},
                      {"random_flip", c.random_flip},
                      {"image_interpolation_mode", c.image_interpolation_mode}};
    if (plan)  // --enable_bucket, or the one W x H bucket of --resolution W,H without it
        made_from["buckets"] = {{"enable_bucket", c.enable_bucket},
                                {"min_bucket_reso", c.min_bucket_reso},
                                {"max_bucket_reso", c.max_bucket_reso},
                                {"bucket_reso_steps", c.bucket_reso_steps},
                                {"bucket_no_upscale", c.bucket_no_upscale}};
    const std::string file = out ? out->file(std::string("cache/") + kLatentFile) : "";
    // Rows that can be reused, by image stamp: an earlier file's, and (below) this run's, so an
    // image listed N times (kohya's N_name folders) is encoded once.
    auto old_rows =
        c.cache_latents_to_disk ? read_old_latents(file, made_from, flips) : LatentRows{};
    if (plan) set_bucket_rows(*plan, cache);
    // Image i's rows: row i of the square cache, or its row in its bucket's tensors.
    auto place = [&](int64_t i, const torch::Tensor& mean, const torch::Tensor& stdev) {
        const int64_t b   = plan ? cache->bucket_of[size_t(i)] : 0;
        auto& dst_mean    = plan ? cache->bucket_mean[size_t(b)] : cache->latent_mean;
        auto& dst_std     = plan ? cache->bucket_std[size_t(b)] : cache->latent_std;
        const int64_t row = plan ? cache->bucket_row[size_t(i)] : i;
        if (!dst_mean.defined()) {
            std::vector<int64_t> shape{(plan ? int64_t(plan->members(b).size()) : n) * flips};
            for (int64_t d = 1; d < mean.dim(); ++d) shape.push_back(mean.size(d));
            dst_mean = torch::zeros(shape, mean.options());
            dst_std  = torch::zeros(shape, stdev.options());
        }
        dst_mean.narrow(0, row * flips, flips).copy_(mean);
        dst_std.narrow(0, row * flips, flips).copy_(stdev);
    };
    json stamps = json::array(), rows = json::array();
    bool any = false;
    CacheProgress progress("latents", n);
    torch::NoGradGuard no_grad;
    const auto vae_param = m.vae->parameters().front();
    for (int64_t i = 0; i < n; ++i) {
        stamps.push_back(image_stamp(ds.record(i).image_path, ds.image_file(i)));
        rows.push_back(nullptr);
        if (plan && cache->bucket_of[size_t(i)] < 0) {  // in no bucket: its header was unreadable
            stamps.back() = json::array({"", -1, -1});  // never reused
            progress.advance(1);
            continue;
        }
        torch::Tensor mean, stdev;
        const auto old = old_rows.find(stamps.back().dump());
        if (old != old_rows.end()) {
            mean  = old->second.first;
            stdev = old->second.second;
            ++cache->latents_reused;
        } else {
            std::vector<torch::Tensor> pixels;
            try {
                for (int64_t f = 0; f < flips; ++f)
                    pixels.push_back(ds.fixed_pixels(i, f == 1, plan ? &plan->target(i) : nullptr));
            } catch (const data::BadSampleError& e) {
                if (!c.skip_bad_samples) throw;
                log_warn("skipping bad sample: %s", e.what());
                (*cache->bad_samples)[i] = e.what();
                stamps.back()            = json::array({"", -1, -1});  // never reused
            }
            if (!pixels.empty()) {
                AutocastGuard autocast(device, weight_dtype);  // as the step encodes
                const auto dist = m.vae->encode(
                    torch::stack(pixels).to(vae_param.device(), vae_param.scalar_type()));
                mean  = dist.mean.to(torch::kCPU).contiguous();
                stdev = dist.std.to(torch::kCPU).contiguous();
                ++cache->latents_encoded;
                old_rows.emplace(stamps.back().dump(), std::make_pair(mean, stdev));
            }
        }
        if (mean.defined()) {
            place(i, mean, stdev);
            any = true;
            if (plan)
                rows.back() =
                    json::array({bucket_name(plan->buckets()[size_t(cache->bucket_of[size_t(i)])]),
                                 cache->bucket_row[size_t(i)]});
        }
        progress.advance(1);
    }
    if (!any) throw std::runtime_error("--cache_latents: no image of the dataset could be read");
    cache->flips = flips;
    io::TensorMap tensors{{"mean", cache->latent_mean}, {"std", cache->latent_std}};
    if (plan) {
        tensors.clear();
        for (size_t b = 0; b < cache->bucket_mean.size(); ++b) {
            if (!cache->bucket_mean[b].defined()) {  // every image of the bucket was bad
                cache->bucket_mean[b] = cache->bucket_std[b] = torch::empty({0});
                continue;
            }
            const std::string name = "." + bucket_name(plan->buckets()[b]);
            tensors["mean" + name] = cache->bucket_mean[b];
            tensors["std" + name]  = cache->bucket_std[b];
        }
        made_from["rows"] = rows;
    }
    if (c.cache_latents_to_disk && cache->latents_encoded > 0) {
        made_from["images"] = stamps;
        io::save_safetensors(file, tensors, {{"format", "pt"}, {kMetadataKey, made_from.dump()}});
        log_info("latent cache written: %s", file.c_str());
    }
}

void build_text(const TrainConfig& c, const data::CaptionDataset& ds, StepModels& m,
                torch::ScalarType weight_dtype, io::OutputFolder* out, torch::Device device,
                FeatureCache* cache) {
    const auto all_ids   = torch::stack(distinct_token_ids(ds, &cache->text_row));  // [U, S]
    const int64_t u      = all_ids.size(0);
    const json made_from = {
        {"version", kCacheVersion},
        {"text_encoder",
         c.cache_text_encoder_outputs_to_disk ? weights_fingerprint(*m.text_encoder) : ""},
        {"dtype", std::string(c10::toString(weight_dtype))}};
    const std::string file = out ? out->file(std::string("cache/") + kTextFile) : "";
    std::vector<int64_t> todo;
    std::vector<torch::Tensor> rows(static_cast<size_t>(u));
    if (c.cache_text_encoder_outputs_to_disk) {
        const json rec = read_record(file, "text encoder output");
        if (!rec.is_null() && rec == made_from) {
            try {
                io::SafetensorsFile f(file);
                const auto old_ids = f.get("input_ids"), old_states = f.get("hidden_states");
                if (old_ids.scalar_type() != torch::kInt64 || old_ids.dim() != 2 ||
                    old_states.dim() != 3 || old_states.size(0) != old_ids.size(0))
                    throw std::runtime_error("unexpected tensor shapes or dtypes");
                std::map<std::vector<int64_t>, int64_t> old_row;
                auto key = [](const torch::Tensor& ids) {
                    const auto row = ids.contiguous();
                    return std::vector<int64_t>(row.data_ptr<int64_t>(),
                                                row.data_ptr<int64_t>() + row.numel());
                };
                for (int64_t r = 0; r < old_ids.size(0); ++r) old_row[key(old_ids[r])] = r;
                for (int64_t r = 0; r < u; ++r) {
                    const auto old = old_row.find(key(all_ids[r]));
                    if (old == old_row.end()) continue;
                    rows[size_t(r)] = old_states[old->second];
                    ++cache->texts_reused;
                }
            } catch (const std::exception& e) {
                for (auto& row : rows) row = torch::Tensor();
                cache->texts_reused = 0;
                log_warn(
                    "text encoder output cache '%s' is damaged (%s); encoding every caption again",
                    file.c_str(), e.what());
            }
        } else if (!rec.is_null()) {
            log_info(
                "text encoder output cache '%s' was made from other weights; encoding every "
                "caption again",
                file.c_str());
        }
    }
    for (int64_t r = 0; r < u; ++r)
        if (!rows[size_t(r)].defined()) todo.push_back(r);
    CacheProgress progress("text encoder outputs", int64_t(todo.size()));
    torch::NoGradGuard no_grad;
    const auto te_device = m.text_encoder->parameters().front().device();
    for (size_t b = 0; b < todo.size(); b += kTextEncodeBatch) {
        const size_t e = std::min(todo.size(), b + size_t(kTextEncodeBatch));
        const auto pick =
            torch::tensor(std::vector<int64_t>(todo.begin() + b, todo.begin() + e), torch::kInt64);
        AutocastGuard autocast(device, weight_dtype);  // as the step encodes
        const auto states =
            m.text_encoder->forward(all_ids.index_select(0, pick).to(te_device)).last_hidden_state;
        const auto host = states.to(torch::kCPU);
        for (size_t k = b; k < e; ++k) rows[size_t(todo[k])] = host[int64_t(k - b)];
        cache->texts_encoded += int64_t(e - b);
        progress.advance(int64_t(e - b));
    }
    cache->hidden_states = torch::stack(rows);  // [U, S, D]
    if (c.cache_text_encoder_outputs_to_disk && cache->texts_encoded > 0) {
        io::save_safetensors(file,
                             {{"input_ids", all_ids}, {"hidden_states", cache->hidden_states}},
                             {{"format", "pt"}, {kMetadataKey, made_from.dump()}});
        log_info("text encoder output cache written: %s", file.c_str());
    }
}

}  // namespace

std::string weights_fingerprint(const torch::nn::Module& module) {
    // Per tensor: CRC-32C of its name and bytes (io/tensorboard.h), chained with its shape and
    // dtype through the loader's SplitMix64 hash (data/loader.h mix_seed).
    uint64_t h = 0;
    for (const auto& p : module.named_parameters()) {
        const auto t = p.value().detach().to(torch::kCPU).contiguous();
        h            = data::mix_seed(h, io::crc32c(p.key().data(), p.key().size()),
                                      io::crc32c(t.data_ptr(), t.nbytes()), uint64_t(t.scalar_type()));
        for (auto d : t.sizes()) h = data::mix_seed(h, uint64_t(d));
    }
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016" PRIx64, h);
    return buf;
}

double release_cached_encoders(const TrainConfig& c, const FeatureCache& cache, StepModels& m) {
    if (!c.validation_images().empty()) return 0;  // validation decodes and encodes prompts
    double bytes = 0;
    auto release = [&](torch::nn::Module& module) {
        torch::NoGradGuard no_grad;
        for (auto& t : module.parameters()) {
            bytes += double(t.nbytes());
            t.set_data(torch::empty({0}, t.options()));
        }
        for (auto& t : module.buffers()) {
            bytes += double(t.nbytes());
            t.set_data(torch::empty({0}, t.options()));
        }
    };
    if (cache.has_latents()) release(*m.vae);
    if (cache.has_text()) release(*m.text_encoder);
    return bytes / (1 << 20);
}

void FeatureCache::fill(const data::Batch& batch, torch::Device device, StepInputs* in) const {
    const int64_t b = batch.size();
    if (has_latents()) {
        // A batch holds one bucket (data/loader.h), so its rows come from one tensor.
        const int64_t bucket =
            bucket_of.empty() || b == 0 ? -1 : bucket_of.at(size_t(batch.indices[0]));
        std::vector<int64_t> rows(static_cast<size_t>(b));
        for (int64_t k = 0; k < b; ++k) {
            const auto i = size_t(batch.indices[size_t(k)]);
            TORCH_CHECK(bucket < 0 || bucket_of.at(i) == bucket, "a batch mixes buckets");
            rows[size_t(k)] = (bucket < 0 ? int64_t(i) : bucket_row[i]) * flips +
                              (batch.flipped[size_t(k)] ? 1 : 0);
        }
        const auto pick   = torch::tensor(rows, torch::kInt64);
        const auto& mean  = bucket < 0 ? latent_mean : bucket_mean.at(size_t(bucket));
        const auto& stdev = bucket < 0 ? latent_std : bucket_std.at(size_t(bucket));
        in->latent_mean   = mean.index_select(0, pick).to(device);
        in->latent_std    = stdev.index_select(0, pick).to(device);
    }
    if (has_text()) {
        std::vector<int64_t> rows(static_cast<size_t>(b));
        for (int64_t k = 0; k < b; ++k)
            rows[size_t(k)] = text_row.at(size_t(batch.indices[size_t(k)]))
                                  .at(size_t(batch.caption_index[size_t(k)]));
        in->encoder_hidden_states =
            hidden_states.index_select(0, torch::tensor(rows, torch::kInt64)).to(device);
    }
}

FeatureCache build_feature_cache(const TrainConfig& c, DataParallel& dp,
                                 const data::CaptionDataset& dataset, StepModels& models,
                                 torch::ScalarType weight_dtype, io::OutputFolder* out,
                                 torch::Device device, const data::BucketPlan* buckets) {
    FeatureCache cache;
    cache.bad_samples  = std::make_shared<std::map<int64_t, std::string>>();
    const bool latents = c.cache_latents || c.cache_latents_to_disk;
    const bool text    = c.cache_text_encoder_outputs || c.cache_text_encoder_outputs_to_disk;
    if (!latents && !text) return cache;
    // Several processes: the others wait, without a deadline, for rank 0 to finish encoding (a
    // large dataset takes longer than --ddp_timeout; a launcher stops every worker when one dies).
    const std::string ready =
        dp.active() ? "feature_cache_ready/" + std::to_string(dp.group()->next_sequence()) : "";
    if (dp.active() && !dp.is_main())
        while (!dp.group()->store_check(ready))
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (dp.is_main()) {
        if (out && (c.cache_latents_to_disk || c.cache_text_encoder_outputs_to_disk)) {
            out->claim("cache");
            fs::create_directories(out->file("cache"));
        }
        if (latents) build_latents(c, dataset, buckets, models, weight_dtype, out, device, &cache);
        if (text) build_text(c, dataset, models, weight_dtype, out, device, &cache);
        if (dp.active()) dp.group()->store_set(ready, "1");
    }
    if (!dp.active()) return cache;
    // Several processes: rank 0's caches on every rank.
    if (latents && buckets) {  // one pair per bucket; the rows are the plan's on every rank
        const size_t count = buckets->buckets().size();
        if (!dp.is_main()) set_bucket_rows(*buckets, &cache);
        for (size_t b = 0; b < count; ++b) {
            cache.bucket_mean[b] =
                share_tensor(dp, cache.bucket_mean[b], "sharing the latent cache");
            cache.bucket_std[b] = share_tensor(dp, cache.bucket_std[b], "sharing the latent cache");
        }
    } else if (latents) {
        cache.latent_mean = share_tensor(dp, cache.latent_mean, "sharing the latent cache");
        cache.latent_std  = share_tensor(dp, cache.latent_std, "sharing the latent cache");
    }
    if (latents) {
        cache.flips = c.random_flip ? 2 : 1;
        auto bad    = torch::zeros({dataset.size()}, torch::kUInt8);
        for (const auto& kv : *cache.bad_samples) bad[kv.first] = 1;
        bad = share_tensor(dp, bad, "sharing the latent cache");
        for (int64_t i = 0; i < dataset.size(); ++i)
            if (bad[i].item<uint8_t>() && !cache.bad_samples->count(i))
                (*cache.bad_samples)[i] =
                    "'" + dataset.record(i).image_path + "' is unreadable (see rank 0's log)";
    }
    if (text) {
        // The same rows on every rank: the mapping is computed locally.
        if (!dp.is_main()) distinct_token_ids(dataset, &cache.text_row);
        cache.hidden_states =
            share_tensor(dp, cache.hidden_states, "sharing the text encoder output cache");
    }
    return cache;
}

}  // namespace t2i::training
