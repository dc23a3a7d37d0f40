// Implements: data/buckets.h: kohya's bucket resolutions and bucket choice, the epoch's batches
// of one bucket each, and the plan for a dataset from its images' headers.
#include "data/buckets.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <stdexcept>

#include "data/caption_dataset.h"
#include "util/log.h"

namespace t2i::data {

std::vector<BucketSize> make_bucket_resolutions(const BucketConfig& config) {
    if (config.single) return {{config.width, config.height}};
    const int64_t area = config.width * config.height, steps = config.reso_steps;
    std::set<BucketSize> resos;
    // int(math.sqrt(max_area) // divisible) * divisible: the square bucket.
    const auto side = static_cast<int64_t>(std::sqrt(static_cast<double>(area)));
    resos.insert({side / steps * steps, side / steps * steps});
    for (int64_t width = config.min_reso; width <= config.max_reso; width += steps) {
        const int64_t height = std::min(config.max_reso, area / width / steps * steps);
        if (height < config.min_reso) continue;
        resos.insert({width, height});
        resos.insert({height, width});
    }
    return {resos.begin(), resos.end()};
}

namespace {

// kohya's BucketManager.round_to_steps: round half up, then down to a multiple of the steps.
int64_t round_to_steps(double x, int64_t steps) {
    const auto v = static_cast<int64_t>(x + 0.5);
    return v - v % steps;
}

// --bucket_no_upscale: the size the image is resized to (itself when within the area).
std::pair<int64_t, int64_t> no_upscale_size(int64_t w, int64_t h, const BucketConfig& config) {
    const double area = double(config.width) * double(config.height);
    if (double(w) * double(h) <= area) return {w, h};
    const double aspect = double(w) / double(h);
    const double rw = std::sqrt(area * aspect), rh = area / rw;
    // The long or the short side on the steps, whichever keeps the aspect better.
    const int64_t s         = config.reso_steps;
    const int64_t w_rounded = round_to_steps(rw, s), h_in_w = round_to_steps(w_rounded / aspect, s);
    const int64_t h_rounded = round_to_steps(rh, s), w_in_h = round_to_steps(h_rounded * aspect, s);
    const double by_width  = h_in_w > 0 ? double(w_rounded) / double(h_in_w) : HUGE_VAL;
    const double by_height = h_rounded > 0 ? double(w_in_h) / double(h_rounded) : HUGE_VAL;
    if (std::abs(by_width - aspect) < std::abs(by_height - aspect))
        return {w_rounded, static_cast<int64_t>(double(w_rounded) / aspect + 0.5)};
    return {static_cast<int64_t>(double(h_rounded) * aspect + 0.5), h_rounded};
}

}  // namespace

TargetSize select_bucket(const std::vector<BucketSize>& predefined, io::ImageSize image,
                         const BucketConfig& config) {
    const int64_t w = image.width, h = image.height;
    const double aspect = double(w) / double(h);
    TargetSize t;
    if (!config.no_upscale) {
        TORCH_CHECK(!predefined.empty(), "select_bucket: no predefined buckets");
        // An image already at a bucket's size keeps it; else the least aspect error (first).
        BucketSize reso{w, h};
        if (std::find(predefined.begin(), predefined.end(), reso) == predefined.end()) {
            double best = HUGE_VAL;
            for (const auto& b : predefined) {
                const double error = std::abs(double(b.width) / double(b.height) - aspect);
                if (error < best) best = error, reso = b;
            }
        }
        // Scale so that the image covers the bucket: a wider image matches the height.
        const double scale = aspect > double(reso.width) / double(reso.height)
                                 ? double(reso.height) / double(h)
                                 : double(reso.width) / double(w);
        t.width            = reso.width;
        t.height           = reso.height;
        t.resized_w        = std::max(reso.width, static_cast<int64_t>(double(w) * scale + 0.5));
        t.resized_h        = std::max(reso.height, static_cast<int64_t>(double(h) * scale + 0.5));
        return t;
    }
    std::tie(t.resized_w, t.resized_h) = no_upscale_size(w, h, config);
    t.width  = t.resized_w - t.resized_w % config.reso_steps;  // a crop, never padding
    t.height = t.resized_h - t.resized_h % config.reso_steps;
    if (t.width <= 0 || t.height <= 0)
        throw std::runtime_error(
            "an image of " + std::to_string(w) + " x " + std::to_string(h) +
            " pixels has no bucket with --bucket_no_upscale: its bucket would be " +
            std::to_string(t.width) + " x " + std::to_string(t.height) +
            " (sides rounded down to --bucket_reso_steps " + std::to_string(config.reso_steps) +
            "); leave it out, or train without --bucket_no_upscale");
    return t;
}

BucketPlan::BucketPlan(const std::vector<io::ImageSize>& sizes, const BucketConfig& config) {
    TORCH_CHECK(config.reso_steps > 0 && config.width > 0 && config.height > 0,
                "BucketPlan: bad config");
    const auto predefined =
        config.no_upscale ? std::vector<BucketSize>{} : make_bucket_resolutions(config);
    std::set<BucketSize> used;
    bucket_of_.assign(sizes.size(), -1);
    targets_.assign(sizes.size(), TargetSize{});
    double error_sum = 0;
    int64_t chosen   = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
        if (sizes[i].width <= 0 || sizes[i].height <= 0) continue;
        targets_[i] = select_bucket(predefined, sizes[i], config);
        used.insert({targets_[i].width, targets_[i].height});
        error_sum += std::abs(double(targets_[i].width) / double(targets_[i].height) -
                              double(sizes[i].width) / double(sizes[i].height));
        ++chosen;
    }
    buckets_.assign(used.begin(), used.end());
    members_.assign(buckets_.size(), {});
    row_in_bucket_.assign(sizes.size(), -1);
    for (size_t i = 0; i < sizes.size(); ++i) {
        if (sizes[i].width <= 0 || sizes[i].height <= 0) continue;
        const BucketSize size{targets_[i].width, targets_[i].height};
        const auto b  = std::lower_bound(buckets_.begin(), buckets_.end(), size) - buckets_.begin();
        bucket_of_[i] = b;
        row_in_bucket_[i] = int64_t(members_[size_t(b)].size());
        members_[size_t(b)].push_back(int64_t(i));
    }
    mean_aspect_error_ = chosen > 0 ? error_sum / double(chosen) : 0.0;
}

int64_t BucketPlan::images() const {
    int64_t n = 0;
    for (const auto& m : members_) n += int64_t(m.size());
    return n;
}

int64_t BucketPlan::batches_per_epoch(int64_t batch_size) const {
    int64_t n = 0;
    for (const auto& m : members_) n += (int64_t(m.size()) + batch_size - 1) / batch_size;
    return n;
}

std::vector<BucketBatch> BucketPlan::epoch_batches(Rng& rng, int64_t batch_size) const {
    // Each bucket's images shuffled and cut into batches, bucket by bucket ...
    std::vector<BucketBatch> batches;
    for (size_t b = 0; b < members_.size(); ++b) {
        const auto& m   = members_[b];
        const auto perm = random_permutation(int64_t(m.size()), rng);
        for (size_t first = 0; first < m.size(); first += size_t(batch_size)) {
            BucketBatch batch;
            batch.bucket = int64_t(b);
            for (size_t j = first; j < std::min(m.size(), first + size_t(batch_size)); ++j)
                batch.indices.push_back(m[size_t(perm[j])]);
            batches.push_back(std::move(batch));
        }
    }
    // ... then the batches shuffled across buckets.
    const auto order = random_permutation(int64_t(batches.size()), rng);
    std::vector<BucketBatch> out;
    out.reserve(batches.size());
    for (const auto k : order) out.push_back(std::move(batches[size_t(k)]));
    return out;
}

std::string BucketPlan::summary() const {
    std::string s;
    for (size_t b = 0; b < buckets_.size(); ++b) {
        if (b == 24) {
            s += ", ... (" + std::to_string(buckets_.size()) + " buckets)";
            break;
        }
        s += (b ? ", " : "") + std::to_string(buckets_[b].width) + "x" +
             std::to_string(buckets_[b].height) + " (" + std::to_string(members_[b].size()) + ")";
    }
    char error[64];
    std::snprintf(error, sizeof error, "; mean aspect error %.4f", mean_aspect_error_);
    return s + error;
}

BucketPlan plan_buckets(const CaptionDataset& dataset, const BucketConfig& config,
                        bool skip_bad_samples) {
    std::vector<io::ImageSize> sizes(static_cast<size_t>(dataset.size()));
    const auto predefined =
        config.no_upscale ? std::vector<BucketSize>{} : make_bucket_resolutions(config);
    int64_t left_out = 0;
    for (int64_t i = 0; i < dataset.size(); ++i) {
        try {
            const auto size = dataset.image_size(i);
            try {
                select_bucket(predefined, size, config);  // throws for an image with no bucket
            } catch (const std::exception& e) {
                throw std::runtime_error("image '" + dataset.record(i).image_path +
                                         "': " + e.what());
            }
            sizes[size_t(i)] = size;
        } catch (const std::exception& e) {
            if (!skip_bad_samples)
                throw std::runtime_error(std::string(e.what()) +
                                         " (--enable_bucket and --resolution W,H read every "
                                         "image's size before training; --skip_bad_samples "
                                         "leaves such images out)");
            log_warn("skipping bad sample: %s", e.what());
            ++left_out;
        }
    }
    BucketPlan plan(sizes, config);
    if (plan.images() == 0)
        throw std::runtime_error("buckets: no image of dataset '" + dataset.source() +
                                 "' could be read");
    log_info("aspect-ratio buckets (images): %s%s", plan.summary().c_str(),
             left_out ? strformat("; %lld unreadable left out", (long long)left_out).c_str() : "");
    return plan;
}

}  // namespace t2i::data
