// Implements: aspect-ratio buckets, a t2i addition that kohya-ss sd-scripts (--enable_bucket) and
// SimpleTuner offer, with kohya's flag names and rules. Mirrors kohya-ss
// library/model_util.py make_bucket_resolutions and library/train_util.py BucketManager
// (select_bucket, round_to_steps) and BaseDataset.make_buckets / shuffle_buckets:
//   Buckets: the square int(sqrt(area) / steps) * steps, and for every width w = min, min +
//     steps, ..., <= max the largest height h = min(max, (area // w) // steps * steps) with
//     h >= min, as (w, h) and (h, w); area = --resolution^2 (W x H for --resolution W,H);
//     sorted by (width, height). --resolution W,H without --enable_bucket: the one bucket W x H.
//   Choice: an image whose size is a bucket takes it; otherwise the first bucket of least
//     |bucket aspect - image aspect|. The image is resized (aspect kept, round half up) so that
//     it covers the bucket, then cropped to it (data/transforms.h sized_transform: --center_crop
//     or a random crop, as the square path).
//   --bucket_no_upscale: no predefined buckets. An image above the area is scaled down to it
//     (its long or short side rounded to the steps, whichever keeps the aspect better), one at
//     or below it keeps its size; its bucket is that size rounded down to the steps (a crop,
//     never padding).
//   Batches: every batch holds images of one bucket. Epoch e shuffles the images of each bucket
//     and cuts them into batches (the last one of a bucket may be short, drop_last=False), then
//     shuffles the batches across buckets (kohya shuffles both each epoch), all from one
//     caller-seeded generator, so the order is a function of (seed, epoch).
// Unlike kohya, min / max that are not multiples of the steps are refused (train_config.cpp),
// not adjusted, and t2i's crop offsets are torchvision's (as the square path), not kohya's.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/transforms.h"
#include "io/image_io.h"

namespace t2i::data {

struct BucketConfig {
    int64_t width      = 512;    // --resolution W,H (or N: N x N): buckets hold at most
    int64_t height     = 512;    //   width x height pixels
    bool single        = false;  // --resolution W,H without --enable_bucket: one bucket, W x H
    int64_t min_reso   = 256;    // --min_bucket_reso
    int64_t max_reso   = 1024;   // --max_bucket_reso
    int64_t reso_steps = 64;     // --bucket_reso_steps
    bool no_upscale    = false;  // --bucket_no_upscale
};

struct BucketSize {
    int64_t width  = 0;
    int64_t height = 0;
    bool operator==(const BucketSize& o) const { return width == o.width && height == o.height; }
    bool operator<(const BucketSize& o) const {
        return width != o.width ? width < o.width : height < o.height;
    }
};

// kohya's make_bucket_resolutions((width, height), min, max, steps), sorted; {width x height}
// alone when `single` (kohya's non-bucket path: every image covers and is cropped to it).
std::vector<BucketSize> make_bucket_resolutions(const BucketConfig& config);

// kohya's BucketManager.select_bucket for an image of `image` size: the bucket (width, height)
// and the size it is resized to before the crop. `predefined` is make_bucket_resolutions(config)
// (unused with no_upscale). Throws naming the size when the bucket would be empty (an image
// narrower than --bucket_reso_steps with --bucket_no_upscale).
TargetSize select_bucket(const std::vector<BucketSize>& predefined, io::ImageSize image,
                         const BucketConfig& config);

// One batch of an epoch: dataset indices, all of bucket `bucket`.
struct BucketBatch {
    int64_t bucket = 0;
    std::vector<int64_t> indices;
};

// Every image's bucket, and the batches of an epoch.
class BucketPlan {
  public:
    // sizes[i]: image i's size; a zero size leaves the image out of every batch (unreadable).
    BucketPlan(const std::vector<io::ImageSize>& sizes, const BucketConfig& config);

    // The buckets that hold at least one image, sorted (kohya's BucketManager.sort).
    const std::vector<BucketSize>& buckets() const { return buckets_; }
    // Image i's bucket (an index into buckets()), -1 when it was left out.
    int64_t bucket_of(int64_t i) const { return bucket_of_.at(static_cast<size_t>(i)); }
    // Image i's position among its bucket's members (dataset order), -1 when left out.
    int64_t row_in_bucket(int64_t i) const { return row_in_bucket_.at(static_cast<size_t>(i)); }
    // Image i's resize and crop.
    const TargetSize& target(int64_t i) const { return targets_.at(static_cast<size_t>(i)); }
    const std::vector<int64_t>& members(int64_t bucket) const {
        return members_.at(static_cast<size_t>(bucket));
    }
    int64_t images() const;  // in some bucket
    int64_t dataset_size() const { return static_cast<int64_t>(bucket_of_.size()); }

    // Sum over buckets of ceil(members / batch_size).
    int64_t batches_per_epoch(int64_t batch_size) const;
    // The batches of one epoch in order, from `rng` (seeded by the caller for the epoch).
    std::vector<BucketBatch> epoch_batches(Rng& rng, int64_t batch_size) const;

    // "bucket 0: 256x384 (3 images), ..." and kohya's mean |aspect error|.
    std::string summary() const;

  private:
    std::vector<BucketSize> buckets_;
    std::vector<std::vector<int64_t>> members_;  // per bucket, ascending dataset index
    std::vector<int64_t> bucket_of_, row_in_bucket_;
    std::vector<TargetSize> targets_;
    double mean_aspect_error_ = 0;
};

class CaptionDataset;  // data/caption_dataset.h

// Reads every image's size from its header (CaptionDataset::image_size) and plans the buckets;
// logs the summary. An unreadable header is an error naming the image, unless
// skip_bad_samples: then the image is left out of every batch, with a warning.
BucketPlan plan_buckets(const CaptionDataset& dataset, const BucketConfig& config,
                        bool skip_bad_samples);

}  // namespace t2i::data
