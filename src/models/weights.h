// Implements: the name-for-name copy between safetensors files and module parameters
// (nanoGPT's from_pretrained pattern). This is the ONLY place that knows about legacy key names
// and keys that are tolerated but ignored; each exception is listed with the reason in weights.cpp.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "io/safetensors.h"

namespace t2i::models {

// Parameters and persistent buffers by their dotted name (== the diffusers / transformers key).
io::TensorMap state_dict(const torch::nn::Module& module);

// Maps a key from a file to the name we use, applying the legacy renames (VAE attention
// `query/key/value/proj_attn` -> `to_q/to_k/to_v/to_out.0`). Returns the key unchanged otherwise.
std::string canonical_key(const std::string& key);

// True for keys that files may carry but the module intentionally lacks.
bool is_ignored_key(const std::string& key);

// Copies every tensor of `files` into `module`, converting dtypes to the parameter's dtype.
// Strict: any missing or unexpected key, or a shape mismatch, throws an error that names the
// component, the files and the first keys of each kind. `component` is used in messages ("unet").
void load_weights(torch::nn::Module& module, const std::vector<std::string>& files,
                  const std::string& component);

// Writes the module's state dict (optionally converted to `dtype`) as one safetensors file.
void save_weights(const torch::nn::Module& module, const std::string& path,
                  c10::optional<torch::ScalarType> dtype = c10::nullopt);

// Throws naming `what` and the first tensor with a NaN or infinite value ("... nothing was
// written"): called before any weights are saved, so a NaN never reaches a file.
void check_finite(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                  const std::string& what);
void check_finite(const io::TensorMap& tensors, const std::string& what);
void check_finite(const torch::OrderedDict<std::string, torch::Tensor>& tensors,
                  const std::string& what);

// Number of parameter elements (what diffusers' `num_parameters()` counts).
int64_t count_parameters(const torch::nn::Module& module);

// Convolution weights (the 4-D parameters) in channels-last memory: oneDNN's faster CPU kernels
// for convolutions at image resolution. The values are unchanged; a convolution's output follows
// the weight's memory format.
void to_channels_last(torch::nn::Module& module);

}  // namespace t2i::models
