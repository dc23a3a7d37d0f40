// Implements: the script's train_transforms (train_text_to_image.py, `train_transforms`) on
// uint8 RGB images [H, W, 3], with torchvision's semantics for PIL images:
//   Resize(resolution, interpolation) -> CenterCrop / RandomCrop(resolution)
//   -> RandomHorizontalFlip() -> ToTensor() -> Normalize([0.5], [0.5]).
// Resizing reproduces Pillow's Image.resize bit for bit: libImaging/Resample.c (separable,
// antialiased convolution in 22-bit fixed point, horizontal pass first) and, for nearest,
// the affine scale path of libImaging/Geometry.c. Randomness comes from a caller-owned Rng so a
// sample's augmentation is a function of (seed, epoch, position); torch's RNG is not used, so
// the random crops and flips differ from the Python script's (same distribution).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace t2i::data {

// B: batch, C = 3 channels, H x W: image height and width.

// torchvision.transforms.InterpolationMode, as the script's --image_interpolation_mode names it.
enum class InterpolationMode {
    kNearest,
    kNearestExact,
    kBilinear,
    kBicubic,
    kBox,
    kHamming,
    kLanczos
};

// "nearest", "nearest_exact", "bilinear", "bicubic", "box", "hamming", "lanczos" (lower case, as
// the script's argparse choices); anything else throws listing them.
InterpolationMode parse_interpolation_mode(const std::string& name);

using Rng = std::mt19937_64;

// Uniform integer in [0, n) by rejection (the same on every standard library, unlike
// std::uniform_int_distribution). n > 0.
uint64_t rng_uniform_index(Rng& rng, uint64_t n);
// Uniform double in [0, 1) with 53 random bits.
double rng_uniform01(Rng& rng);
// A permutation of 0..n-1 by Fisher-Yates with rng_uniform_index (not torch.randperm's or
// numpy's sequence: t2i's shuffles are reproducible within t2i, not across to Python).
std::vector<int64_t> random_permutation(int64_t n, Rng& rng);

// torchvision's _compute_resized_output_size for an int size: the shorter side becomes `size`,
// the longer one int(size * long / short) (truncated). Returns {new_h, new_w}.
std::pair<int64_t, int64_t> resized_output_size(int64_t h, int64_t w, int64_t size);

// PIL Image.resize((w, h), filter) of a uint8 [H, W, 3] image; nearest and nearest_exact both
// map to PIL.Image.NEAREST (torchvision's pil_modes_mapping).
torch::Tensor resize(const torch::Tensor& image, int64_t out_h, int64_t out_w,
                     InterpolationMode mode);
// resize(image, out_h, out_w, mode)[top : top + height, left : left + width], bit for bit,
// computing only those pixels (each output pixel of PIL's resampling depends only on its own
// coefficients).
torch::Tensor resize_crop(const torch::Tensor& image, int64_t out_h, int64_t out_w, int64_t top,
                          int64_t left, int64_t height, int64_t width, InterpolationMode mode);

// torchvision Resize(size, interpolation) on a PIL image: the shorter side -> size.
torch::Tensor resize_shorter_side(const torch::Tensor& image, int64_t size, InterpolationMode mode);

// torchvision CenterCrop(size): offsets int(round((h - size) / 2.0)) with Python's round (half
// to even). The image must be at least size x size (Resize guarantees it).
torch::Tensor center_crop(const torch::Tensor& image, int64_t size);
// torchvision RandomCrop(size): top and left uniform in [0, h - size] and [0, w - size]
// (top drawn first, as RandomCrop.get_params).
torch::Tensor random_crop(const torch::Tensor& image, int64_t size, Rng& rng);
// Mirror left-right.
torch::Tensor hflip(const torch::Tensor& image);
// RandomHorizontalFlip(p=0.5): flips when a uniform draw is < 0.5.
torch::Tensor random_hflip(const torch::Tensor& image, Rng& rng);

// ToTensor() then Normalize([0.5], [0.5]): uint8 [H, W, 3] -> float32 [3, H, W] in [-1, 1],
// computed as torch does it in float32: (u8 / 255 - 0.5) / 0.5.
torch::Tensor to_normalized_tensor(const torch::Tensor& image);

// The whole per-sample pipeline of the script.
struct TransformConfig {
    int64_t resolution              = 512;
    bool center_crop                = false;
    bool random_flip                = false;
    InterpolationMode interpolation = InterpolationMode::kLanczos;
};
// uint8 [H, W, 3] -> float32 [3, resolution, resolution]. Draws from `rng` only for the random
// crop (top, then left) and then the flip, in that order. `flipped`: whether it flipped. The same
// values as the composition resize_shorter_side -> center_crop / random_crop -> random_hflip ->
// to_normalized_tensor (tested), in one pass that resamples only what the crop keeps.
torch::Tensor train_transform(const torch::Tensor& image, const TransformConfig& config, Rng& rng,
                              bool* flipped = nullptr);

// The flip draw of train_transform: RandomHorizontalFlip's uniform draw < 0.5 (no draw without
// --random_flip).
bool draw_flip(const TransformConfig& config, Rng& rng);

// fixed_transform's refusal of a random crop that has a choice.
struct CropChoiceError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// train_transform with a given flip and no random crop: for cached latents, which hold every
// sample's pixels once per flip. A random crop (no --center_crop) is only allowed where it has
// no choice (the resized image is resolution x resolution); otherwise throws CropChoiceError
// naming the size.
torch::Tensor fixed_transform(const torch::Tensor& image, const TransformConfig& config, bool flip);

// An aspect-ratio bucket's transform (data/buckets.h): resize the whole image to
// resized_w x resized_h (its aspect kept, covering the bucket), then crop width x height.
struct TargetSize {
    int64_t resized_w = 0, resized_h = 0;
    int64_t width = 0, height = 0;
};
// train_transform (rng set, fixed_flip null) or fixed_transform (rng null, fixed_flip set) to
// `target` instead of the --resolution square: the same crop (center or random: top, then
// left), flip and normalization. uint8 [H, W, 3] -> float32 [3, target.height, target.width].
torch::Tensor sized_transform(const torch::Tensor& image, const TransformConfig& config,
                              const TargetSize& target, Rng* rng, const bool* fixed_flip,
                              bool* flipped = nullptr);

}  // namespace t2i::data
