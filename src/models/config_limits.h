// Implements: the bounds every model config is checked against in its from_json, before any
// weight is allocated. diffusers trusts config.json; t2i reads configs that users download, so
// a value that would divide by zero, build a model that cannot run (GroupNorm over channels its
// group count does not divide, heads that do not divide the width), or allocate more than the
// machine has is an error naming the file and the key. The upper bounds lie far beyond any
// published Stable Diffusion-family model (SD 1.5: 4 blocks of <= 1280 channels, 2 layers).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/json_config.h"

namespace t2i::models {

constexpr int64_t kMaxBlocks      = 8;      // down / up blocks (SD: 4)
constexpr int64_t kMaxChannels    = 16384;  // any channel or hidden width (SD: <= 1280)
constexpr int64_t kMaxLayers      = 64;     // layers per block or encoder layers (SD: <= 24)
constexpr int64_t kMaxHeads       = 1024;   // attention heads (SD: <= 20)
constexpr int64_t kMaxKernel      = 15;     // convolution kernel sizes (SD: 3)
constexpr int64_t kMaxSampleSize  = 16384;  // sample_size (SD: 64 latent, 512 pixels)
constexpr int64_t kMaxVocabulary  = 1 << 24;
constexpr int64_t kMaxTokenLength = 1 << 16;

// Throws when a model of about `parameters` fp32 parameters cannot fit in this machine's memory
// (physical RAM), naming the config file; called with an estimate from the config's shapes.
void check_parameter_budget(const io::JsonConfig& config, double parameters);

// Checks `key`'s value (or each entry of a per-block list) as JsonConfig::check_range does.
void check_each(const io::JsonConfig& config, const std::string& key,
                const std::vector<int64_t>& values, double lo, double hi,
                const std::string& why = "");

}  // namespace t2i::models
