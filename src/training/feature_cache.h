// Implements: --cache_latents and --cache_text_encoder_outputs (kohya's flag names): the frozen
// VAE and text encoder run once per image and caption before training instead of once per step.
//   Latents: every image is decoded and transformed once per flip (both with --random_flip;
//     data/transforms.h fixed_transform: no random crop with a choice) and encoded; the
//     posterior's mean and std are kept, so each step still samples latents = (mean + std * eps)
//     * scaling_factor with its own eps, exactly as the uncached step does (the same draws give
//     the same latents). The loader then decodes nothing (data/loader.h decode_images).
//   Text: every caption (each alternative of a list) is tokenized; each distinct token sequence
//     is encoded once (last_hidden_state).
// Both are computed as the step computes them: in the weight dtype, under the same autocast.
// On disk (--cache_*_to_disk): output_dir/cache/latents.safetensors (`mean`, `std`, rows
// i * flips + flip) and output_dir/cache/text_encoder_outputs.safetensors (`input_ids`,
// `hidden_states`), each with a JSON record of what it was made from in the metadata key
// "t2i_cache": the encoder's weights (a hash of names, shapes and bytes), the dtype, the
// transform flags and, per image, path, size and modification time. A later run (or a resume)
// reuses every row whose inputs are unchanged and encodes the rest; files are replaced
// atomically. Several processes: rank 0 builds (and writes), the others wait and receive it.
// --enable_bucket: each image is encoded at its bucket's size (data/buckets.h), so latents differ
// in shape between buckets: one [members * flips, Z, h, w] pair per bucket, image i at row
// bucket_row[i] * flips + flip of its bucket (members in dataset order); on disk `mean.WxH` /
// `std.WxH` per bucket with each image's [bucket, row] in the record, and the bucket flags in
// what it was made from.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "data/caption_dataset.h"
#include "data/loader.h"
#include "io/output_folder.h"
#include "training/data_parallel.h"
#include "training/loss.h"
#include "training/train_config.h"

namespace t2i::training {

struct FeatureCache {
    // VAE posterior rows [N * flips, Z, h, w] in the VAE's output dtype; row i * flips + flip.
    torch::Tensor latent_mean, latent_std;
    int64_t flips = 1;
    // last_hidden_state rows [U, S, D], one per distinct token sequence; the row of caption c of
    // sample i is text_row[i][c].
    torch::Tensor hidden_states;
    std::vector<std::vector<int64_t>> text_row;
    // Images the VAE pass could not read (--skip_bad_samples): index -> reason.
    std::shared_ptr<std::map<int64_t, std::string>> bad_samples;
    // What the last build did (for tests and the log): rows reused from disk and rows encoded.
    int64_t latents_reused = 0, latents_encoded = 0, texts_reused = 0, texts_encoded = 0;

    // --enable_bucket: per bucket (data::BucketPlan::buckets() order) [members * flips, Z, h, w]
    // (an empty tensor for a bucket of unreadable images); image i's row in its bucket.
    std::vector<torch::Tensor> bucket_mean, bucket_std;
    std::vector<int64_t> bucket_of, bucket_row;  // per image; -1: in no bucket

    bool has_latents() const { return latent_mean.defined() || !bucket_mean.empty(); }
    bool has_text() const { return hidden_states.defined(); }
    // The cached inputs of `batch` on `device` (what is not cached stays undefined in `in`).
    void fill(const data::Batch& batch, torch::Device device, StepInputs* in) const;
};

// Builds the caches the flags ask for (none: an empty FeatureCache). `out` is rank 0's output
// folder (null on other ranks). Throws naming the image for a random crop with a choice, and
// for an unreadable image unless --skip_bad_samples. `buckets` (--enable_bucket): encode each
// image at its bucket's size.
FeatureCache build_feature_cache(const TrainConfig& c, DataParallel& dp,
                                 const data::CaptionDataset& dataset, StepModels& models,
                                 torch::ScalarType weight_dtype, io::OutputFolder* out,
                                 torch::Device device, const data::BucketPlan* buckets = nullptr);

// After the cache is built: the weights of an encoder the run no longer uses are released (the
// VAE with cached latents, the text encoder with cached outputs, unless --validation_prompts
// needs them); the modules keep their configs. Returns the MB released.
double release_cached_encoders(const TrainConfig& c, const FeatureCache& cache, StepModels& m);

// A 64-bit hash of a module's parameter names, shapes, dtypes and bytes: what a cache was made
// with, so that other weights rebuild it.
std::string weights_fingerprint(const torch::nn::Module& module);

}  // namespace t2i::training
