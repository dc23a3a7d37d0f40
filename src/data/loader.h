// Implements: the script's `torch.utils.data.DataLoader(train_dataset, shuffle=True,
// collate_fn=collate_fn, batch_size=train_batch_size, num_workers=dataloader_num_workers)`
// (drop_last=False), prepared by accelerate for several processes, with what the original lacks:
// an exact, resumable position.
//   Order: epoch e visits the dataset in random_permutation(N, Rng(mix(seed, e))) order (not
//     torch.randperm's sequence). Batch k holds permutation positions [k*B, (k+1)*B).
//   Randomness: the sample at permutation position p of epoch e is transformed with
//     Rng(mix(seed, e, p)), so a batch is a pure function of (seed, epoch, batch index): the same
//     for any worker count and thread timing, and after seek().
//   Workers: num_workers threads build whole batches ahead (at most num_workers x
//     prefetch_factor in flight, across epoch boundaries), delivered strictly in order;
//     num_workers = 0 builds each batch in next().
//   Sharding (world_size > 1): like accelerate's BatchSamplerShard, rank r takes batches r,
//     r + W, r + 2W, ... of the epoch's order, so optimizer step k of W ranks covers permutation
//     positions [k*W*B, (k+1)*W*B): exactly batch k of one process with batch W*B. Every rank
//     gets ceil(N / (W*B)) batches per epoch (accelerate's ceil(ceil(N / B) / W)). Unlike
//     accelerate's even_batches, the end of an epoch is not padded with samples from its start:
//     each sample is seen once per epoch, and a rank past the end gets a smaller or an empty
//     batch (its gradient weight in the step is its share of the samples; see the trainer).
//     With world_size = 1 the last batch of an epoch may be smaller (drop_last=False).
//   Buckets (config.buckets, --enable_bucket; data/buckets.h): the epoch is a list of "step
//     batches" of up to W x B images of one bucket each (BucketPlan::epoch_batches with
//     Rng(mix(seed, epoch)) and batch size W x B), and batch k of rank r is rows [r*B, (r+1)*B)
//     of step batch k: the same sharding and per-sample seeding as above, with step batch k in
//     place of permutation positions [k*W*B, (k+1)*W*B). So W ranks still train like one
//     process with batch W x B, and every rank knows the step's bucket (pixel size), even with
//     no sample. batches_per_epoch = sum over buckets of ceil(images / (W*B)).
//   Bad images: BadSampleError propagates from next() naming the path, unless skip_bad_samples
//     is set: then the sample is left out of its batch (a batch may be smaller; a batch with no
//     good sample is skipped with one process and delivered empty with several, so that the
//     ranks stay in step), and skipped() counts them. An epoch in which every sample this rank
//     read was bad is an error (training could never make a step).
// The loader is used from one consumer thread; its own workers are internal.
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "data/buckets.h"
#include "data/caption_dataset.h"

namespace t2i::data {

struct LoaderConfig {
    int64_t batch_size    = 16;  // --train_batch_size
    int num_workers       = 0;   // --dataloader_num_workers
    int prefetch_factor   = 2;   // batches in flight per worker (torch's default)
    uint64_t seed         = 0;   // --seed
    int rank              = 0;   // this process in the data-parallel world
    int world_size        = 1;
    bool skip_bad_samples = false;
    bool pin_memory       = false;  // batches in page-locked memory (a CUDA run): torch pin_memory
    // false: no image is decoded (cached latents): batches carry the draws (flip, caption) and
    // token ids only, from CaptionDataset::draw. `bad_samples` then names the images the cache
    // could not read (index -> reason), which are skipped as unreadable images are.
    bool decode_images = true;
    std::shared_ptr<const std::map<int64_t, std::string>> bad_samples;
    // --enable_bucket: batches of one aspect-ratio bucket each (see above); null: squares.
    std::shared_ptr<const BucketPlan> buckets;
};

// The next batch next() will return: (epoch, batch index within the epoch on this rank).
struct LoaderPosition {
    int64_t epoch = 0;
    int64_t batch = 0;
};

struct Batch {
    torch::Tensor pixel_values;          // float32 [B, 3, H, W]; undefined without decode_images
    torch::Tensor input_ids;             // int64 [B, 77]
    std::vector<int64_t> indices;        // [B] dataset indices; empty: this rank has no sample
    std::vector<uint8_t> flipped;        // [B] --random_flip mirrored sample b
    std::vector<int64_t> caption_index;  // [B] which of the record's captions
    int64_t epoch = 0;
    // Every sample's pixel size (its bucket's, also with no sample or no decoding); 0 x 0: the
    // --resolution square (no buckets).
    int64_t height = 0, width = 0;
    // This rank's part of the optimizer step's samples over all ranks (before bad samples are
    // left out): positions [global_offset, global_offset + B) of global_size.
    int64_t global_offset = 0;
    int64_t global_size   = 0;
    int64_t size() const { return static_cast<int64_t>(indices.size()); }
};

// SplitMix64-based hash of (seed, a, b, c): seeds of the per-epoch and per-sample generators.
uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0);

class DataLoader {
  public:
    DataLoader(std::shared_ptr<const CaptionDataset> dataset, LoaderConfig config);
    ~DataLoader();
    DataLoader(const DataLoader&)            = delete;
    DataLoader& operator=(const DataLoader&) = delete;

    // Batches this rank gets per epoch (len(train_dataloader) of the script on this process).
    int64_t batches_per_epoch() const { return batches_per_epoch_; }

    // The next batch of the current epoch, or nullopt when the epoch is over; the call after
    // that starts the next epoch. Rethrows a worker's error for the batch it belongs to.
    std::optional<Batch> next();

    LoaderPosition position() const { return {epoch_, batch_}; }
    // Continue with batch `batch` (0 <= batch <= batches_per_epoch()) of `epoch`: after a
    // checkpoint at position() = (e, k), seek(e, k) makes next() return exactly that batch.
    void seek(int64_t epoch, int64_t batch);

    bool bucketed() const { return config_.buckets != nullptr; }  // --enable_bucket
    int64_t skipped() const { return skipped_; }  // bad samples left out (skip_bad_samples)

    // Dataset indices of batch `batch` of `epoch` on this rank, in batch order.
    std::vector<int64_t> batch_indices(int64_t epoch, int64_t batch) const;

  private:
    struct Result {
        std::optional<Batch> batch;  // empty when every sample was skipped
        std::exception_ptr error;
        int64_t skipped = 0;
        std::string first_skip;  // why the first skipped sample was bad
    };

    Result build(int64_t linear) const;  // builds batch number epoch * per_epoch + batch
    Example draw_without_decoding(int64_t index, Rng& rng) const;
    std::shared_ptr<const std::vector<int64_t>> permutation(int64_t epoch) const;
    // --enable_bucket: the step batches of `epoch` (W x B images of one bucket each).
    std::shared_ptr<const std::vector<BucketBatch>> bucket_batches(int64_t epoch) const;
    // The indices of step batch k (all ranks' samples) and its bucket (-1 without buckets).
    std::vector<int64_t> step_indices(int64_t epoch, int64_t k, int64_t* bucket) const;
    void worker_loop();
    void stop_workers();  // stops and joins every started worker

    std::shared_ptr<const CaptionDataset> dataset_;
    LoaderConfig config_;
    int64_t batches_per_epoch_ = 0;

    // Consumer state.
    int64_t epoch_   = 0;
    int64_t batch_   = 0;
    int64_t skipped_ = 0;
    // Since the start of the current epoch (only when it was read from batch 0): good samples,
    // skipped samples and the first skip's reason, for the all-bad-epoch error.
    bool epoch_from_start_ = true;
    int64_t epoch_good_    = 0;
    int64_t epoch_skipped_ = 0;
    std::string epoch_first_skip_;

    // Worker state, guarded by mutex_.
    std::mutex mutex_;
    std::condition_variable work_cv_, done_cv_;
    int64_t next_claim_   = 0;  // linear index the next idle worker builds
    int64_t next_consume_ = 0;  // linear index the consumer waits for
    uint64_t generation_  = 0;  // bumped by seek(): results of older claims are dropped
    bool stop_            = false;
    std::map<int64_t, Result> done_;
    std::vector<std::thread> workers_;

    // Permutations of recent epochs, shared by the workers.
    mutable std::mutex perm_mutex_;
    mutable std::map<int64_t, std::shared_ptr<const std::vector<int64_t>>> perms_;
    mutable std::map<int64_t, std::shared_ptr<const std::vector<BucketBatch>>> bucket_batches_;
};

}  // namespace t2i::data
