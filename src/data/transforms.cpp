// Implements: transforms.h. The resampler is a line-for-line port of Pillow's
// src/libImaging/Resample.c (precompute_coeffs, normalize_coeffs_8bpc,
// ImagingResample{Horizontal,Vertical}_8bpc, ImagingResampleInner) and of the nearest-neighbour
// scale path (_imaging.c `_resize` -> Geometry.c ImagingScaleAffine), on interleaved RGB.
#include "data/transforms.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "io/image_io.h"

namespace t2i::data {
namespace {

// ---- Pillow's filters (Resample.c), same constants and float literals ---------------------

double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bilinear_filter(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

double hamming_filter(double x) {
    if (x < 0.0) x = -x;
    if (x == 0.0) return 1.0;
    if (x >= 1.0) return 0.0;
    x = x * M_PI;
    return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));
}

double bicubic_filter(double x) {
    constexpr double a = -0.5;  // Keys' cubic convolution with a = -0.5
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

double sinc_filter(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return std::sin(x) / x;
}

double lanczos_filter(double x) {
    return (-3.0 <= x && x < 3.0) ? sinc_filter(x) * sinc_filter(x / 3) : 0.0;
}

struct Filter {
    double (*fn)(double);
    double support;
};

Filter filter_for(InterpolationMode mode) {
    switch (mode) {
        case InterpolationMode::kBox:
            return {box_filter, 0.5};
        case InterpolationMode::kBilinear:
            return {bilinear_filter, 1.0};
        case InterpolationMode::kHamming:
            return {hamming_filter, 1.0};
        case InterpolationMode::kBicubic:
            return {bicubic_filter, 2.0};
        case InterpolationMode::kLanczos:
            return {lanczos_filter, 3.0};
        default:
            throw std::logic_error("nearest has no convolution filter");
    }
}

// 8 bits for the result, 2 for overflow of negative lobes and sums above 1 (Resample.c).
constexpr int kPrecisionBits = 32 - 8 - 2;

// Per output pixel: the first input index, the number of taps, and `ksize` fixed-point weights.
struct Coeffs {
    int ksize = 0;
    std::vector<int> bounds;  // [out_size * 2]: xmin, count
    std::vector<int32_t> kk;  // [out_size * ksize]
};

Coeffs precompute_coeffs(int in_size, float in0, float in1, int out_size, const Filter& filter) {
    // Downscaling widens the filter by the scale factor: this is PIL's antialiasing.
    const double scale       = static_cast<double>(in1 - in0) / out_size;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support     = filter.support * filterscale;
    Coeffs c;
    c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.bounds.resize(size_t(out_size) * 2);
    c.kk.assign(size_t(out_size) * c.ksize, 0);
    std::vector<double> k(c.ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        const double center = in0 + (xx + 0.5) * scale;
        const double ss     = 1.0 / filterscale;
        int xmin            = static_cast<int>(center - support + 0.5);  // truncation, as PIL
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) {
            k[x] = filter.fn((x + xmin - center + 0.5) * ss);
            ww += k[x];
        }
        for (int x = 0; x < xmax; ++x) {
            const double w = ww != 0.0 ? k[x] / ww : k[x];
            // normalize_coeffs_8bpc: round half away from zero to 22-bit fixed point.
            c.kk[size_t(xx) * c.ksize + x] = static_cast<int32_t>(
                w < 0 ? -0.5 + w * (1 << kPrecisionBits) : 0.5 + w * (1 << kPrecisionBits));
        }
        c.bounds[2 * xx]     = xmin;
        c.bounds[2 * xx + 1] = xmax;
    }
    return c;
}

inline uint8_t clip8(int32_t v) {
    const int32_t s = v >> kPrecisionBits;  // arithmetic shift, as PIL's lookup index
    return static_cast<uint8_t>(s < 0 ? 0 : s > 255 ? 255 : s);
}

// The part of a resized image that is computed: rows [top, top + height) and columns
// [left, left + width) of the output (a crop computes only what it keeps).
struct Window {
    int top, left, height, width;
};

// ImagingResampleHorizontal_8bpc on rows [row0, row0 + rows) of `in` ([H, in_w, 3]), output
// columns [x0, x0 + out_w) only.
void resample_horizontal(const uint8_t* in, int in_w, int row0, int rows, uint8_t* out, int x0,
                         int out_w, const Coeffs& c) {
    for (int yy = 0; yy < rows; ++yy) {
        const uint8_t* src = in + size_t(yy + row0) * in_w * 3;
        uint8_t* dst       = out + size_t(yy) * out_w * 3;
        for (int xx = x0; xx < x0 + out_w; ++xx) {
            const int xmin   = c.bounds[2 * xx];
            const int xmax   = c.bounds[2 * xx + 1];
            const int32_t* k = &c.kk[size_t(xx) * c.ksize];
            int32_t ss0 = 1 << (kPrecisionBits - 1), ss1 = ss0, ss2 = ss0;
            for (int x = 0; x < xmax; ++x) {
                const uint8_t* p = src + (x + xmin) * 3;
                ss0 += p[0] * k[x];
                ss1 += p[1] * k[x];
                ss2 += p[2] * k[x];
            }
            uint8_t* px = dst + 3 * (xx - x0);
            px[0]       = clip8(ss0);
            px[1]       = clip8(ss1);
            px[2]       = clip8(ss2);
        }
    }
}

// ImagingResampleVertical_8bpc for output rows [y0, y0 + out_h): `in` is [*, w, 3] and starts at
// input row `row0`, `out` is [out_h, w, 3].
void resample_vertical(const uint8_t* in, int w, int row0, uint8_t* out, int y0, int out_h,
                       const Coeffs& c) {
    const size_t stride = size_t(w) * 3;
    for (int yy = y0; yy < y0 + out_h; ++yy) {
        const int ymin   = c.bounds[2 * yy] - row0;
        const int ymax   = c.bounds[2 * yy + 1];
        const int32_t* k = &c.kk[size_t(yy) * c.ksize];
        uint8_t* dst     = out + (yy - y0) * stride;
        for (size_t i = 0; i < stride; ++i) {
            int32_t ss = 1 << (kPrecisionBits - 1);
            for (int y = 0; y < ymax; ++y) ss += in[(y + ymin) * stride + i] * k[y];
            dst[i] = clip8(ss);
        }
    }
}

// ImagingResampleInner, for the window `win` of the [out_h, out_w] result: vertical coefficients
// first (they bound the input rows the horizontal pass needs), then the horizontal pass into a
// temporary, then the vertical pass. A pass whose size does not change is skipped. Every output
// pixel depends only on its own coefficients, so a window equals the same part of the whole.
torch::Tensor resample(const torch::Tensor& image, int out_h, int out_w, const Filter& filter,
                       const Window& win) {
    const int in_h = static_cast<int>(image.size(0)), in_w = static_cast<int>(image.size(1));
    const bool need_horizontal = out_w != in_w;
    const bool need_vertical   = out_h != in_h;
    const Coeffs vert = precompute_coeffs(in_h, 0.f, static_cast<float>(in_h), out_h, filter);
    const int last    = win.top + win.height - 1;
    // The input rows the window's output rows read (bounds grow with the output row).
    const int row_first = need_vertical ? vert.bounds[2 * win.top] : win.top;
    const int row_end =
        need_vertical ? vert.bounds[2 * last] + vert.bounds[2 * last + 1] : last + 1;

    torch::Tensor current;  // input rows [row_first, row_end) x the window's columns
    if (need_horizontal) {
        const Coeffs horiz = precompute_coeffs(in_w, 0.f, static_cast<float>(in_w), out_w, filter);
        current            = torch::empty({row_end - row_first, win.width, 3}, torch::kUInt8);
        resample_horizontal(image.data_ptr<uint8_t>(), in_w, row_first, row_end - row_first,
                            current.data_ptr<uint8_t>(), win.left, win.width, horiz);
    } else {
        current = image.slice(0, row_first, row_end)
                      .slice(1, win.left, win.left + win.width)
                      .contiguous();
    }
    if (!need_vertical) return current;  // already the window's rows
    auto out = torch::empty({win.height, win.width, 3}, torch::kUInt8);
    resample_vertical(current.data_ptr<uint8_t>(), win.width, row_first, out.data_ptr<uint8_t>(),
                      win.top, win.height, vert);
    return out;
}

// Geometry.c ImagingScaleAffine with a = (in_w / out_w, 0, 0, 0, in_h / out_h, 0): source
// coordinates accumulate in double from half a step, truncated (COORD); outside -> 0 (fill).
torch::Tensor resize_nearest(const torch::Tensor& image, int out_h, int out_w, const Window& win) {
    const int in_h = static_cast<int>(image.size(0)), in_w = static_cast<int>(image.size(1));
    const double a0 = static_cast<double>(static_cast<float>(in_w)) / out_w;
    const double a4 = static_cast<double>(static_cast<float>(in_h)) / out_h;
    auto coord      = [](double v) { return v < 0.0 ? -1 : static_cast<int>(v); };
    std::vector<int> xintab(out_w, -1);
    double xo = a0 * 0.5;
    for (int x = 0; x < out_w; ++x, xo += a0) {
        const int xin = coord(xo);
        if (xin >= 0 && xin < in_w) xintab[x] = xin;
    }
    auto out           = torch::zeros({win.height, win.width, 3}, torch::kUInt8);
    const uint8_t* src = image.data_ptr<uint8_t>();
    uint8_t* dst       = out.data_ptr<uint8_t>();
    double yo          = a4 * 0.5;  // accumulated from row 0, as PIL, for the same rounding
    for (int y = 0; y < win.top + win.height; ++y, yo += a4) {
        const int yi = coord(yo);
        if (y < win.top || yi < 0 || yi >= in_h) continue;
        for (int x = win.left; x < win.left + win.width; ++x)
            if (xintab[x] >= 0)
                std::memcpy(dst + (size_t(y - win.top) * win.width + (x - win.left)) * 3,
                            src + (size_t(yi) * in_w + xintab[x]) * 3, 3);
    }
    return out;
}

void check_image(const torch::Tensor& image, const char* what) {
    TORCH_CHECK(image.scalar_type() == torch::kUInt8 && image.dim() == 3 && image.size(2) == 3 &&
                    image.is_contiguous() && image.device().is_cpu(),
                what, ": expected a contiguous CPU uint8 [H, W, 3] image, got ",
                image.scalar_type(), " ", image.sizes());
}

}  // namespace

InterpolationMode parse_interpolation_mode(const std::string& name) {
    static const std::pair<const char*, InterpolationMode> kModes[] = {
        {"nearest", InterpolationMode::kNearest},
        {"nearest_exact", InterpolationMode::kNearestExact},
        {"bilinear", InterpolationMode::kBilinear},
        {"bicubic", InterpolationMode::kBicubic},
        {"box", InterpolationMode::kBox},
        {"hamming", InterpolationMode::kHamming},
        {"lanczos", InterpolationMode::kLanczos}};
    for (const auto& [n, mode] : kModes)
        if (name == n) return mode;
    throw std::runtime_error("--image_interpolation_mode: unknown value '" + name +
                             "'; expected one of: nearest, nearest_exact, bilinear, bicubic, box, "
                             "hamming, lanczos");
}

uint64_t rng_uniform_index(Rng& rng, uint64_t n) {
    TORCH_CHECK(n > 0, "rng_uniform_index: empty range");
    const uint64_t threshold = (0 - n) % n;  // 2^64 mod n: reject the biased low values
    for (;;) {
        const uint64_t r = rng();
        if (r >= threshold) return r % n;
    }
}

double rng_uniform01(Rng& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

std::vector<int64_t> random_permutation(int64_t n, Rng& rng) {
    std::vector<int64_t> perm(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) perm[i] = i;
    for (int64_t i = n - 1; i > 0; --i)
        std::swap(perm[i], perm[rng_uniform_index(rng, uint64_t(i + 1))]);
    return perm;
}

std::pair<int64_t, int64_t> resized_output_size(int64_t h, int64_t w, int64_t size) {
    TORCH_CHECK(h > 0 && w > 0 && size > 0, "resize: bad sizes ", h, "x", w, " -> ", size);
    const int64_t shorter = std::min(h, w), longer = std::max(h, w);
    // Python: int(requested_new_short * long / short), true division then truncation.
    const auto new_long = static_cast<int64_t>(static_cast<double>(size * longer) / shorter);
    return w <= h ? std::make_pair(new_long, size) : std::make_pair(size, new_long);
}

torch::Tensor resize(const torch::Tensor& image, int64_t out_h, int64_t out_w,
                     InterpolationMode mode) {
    return resize_crop(image, out_h, out_w, 0, 0, out_h, out_w, mode);
}

torch::Tensor resize_crop(const torch::Tensor& image, int64_t out_h, int64_t out_w, int64_t top,
                          int64_t left, int64_t height, int64_t width, InterpolationMode mode) {
    check_image(image, "resize");
    TORCH_CHECK(out_h > 0 && out_w > 0, "resize: bad output size ", out_h, "x", out_w);
    TORCH_CHECK(top >= 0 && left >= 0 && height > 0 && width > 0 && top + height <= out_h &&
                    left + width <= out_w,
                "resize_crop: window ", height, "x", width, " at (", top, ", ", left, ") outside ",
                out_h, "x", out_w);
    if (out_h == image.size(0) && out_w == image.size(1))  // PIL copies
        return image.slice(0, top, top + height)
            .slice(1, left, left + width)
            .clone(at::MemoryFormat::Contiguous);
    const Window win{int(top), int(left), int(height), int(width)};
    if (mode == InterpolationMode::kNearest || mode == InterpolationMode::kNearestExact)
        return resize_nearest(image, static_cast<int>(out_h), static_cast<int>(out_w), win);
    return resample(image, static_cast<int>(out_h), static_cast<int>(out_w), filter_for(mode), win);
}

namespace {

// Resize(size)'s output size, refused (naming the sizes) beyond the pixel budget.
std::pair<int64_t, int64_t> checked_resized_size(const torch::Tensor& image, int64_t size) {
    const auto [h, w] = resized_output_size(image.size(0), image.size(1), size);
    // An extreme aspect ratio would make the resized image enormous (a 1,000,000 x 1 image at
    // 512 is 512,000,000 x 512); refuse it before allocating, as PIL refuses decompression bombs.
    if (static_cast<uint64_t>(h) * static_cast<uint64_t>(w) > io::kMaxImagePixels)
        throw std::runtime_error(
            "the image is " + std::to_string(image.size(1)) + " x " +
            std::to_string(image.size(0)) + " pixels (w x h); resizing its shorter side to " +
            std::to_string(size) + " would make it " + std::to_string(w) + " x " +
            std::to_string(h) + ", more than the " + std::to_string(io::kMaxImagePixels) +
            "-pixel budget; crop it or leave it out");
    return {h, w};
}

// RandomCrop.get_params: top, then left, uniform over the positions that fit.
std::pair<int64_t, int64_t> random_crop_offsets(int64_t h, int64_t w, int64_t crop_h,
                                                int64_t crop_w, Rng& rng) {
    const auto top  = static_cast<int64_t>(rng_uniform_index(rng, uint64_t(h - crop_h + 1)));
    const auto left = static_cast<int64_t>(rng_uniform_index(rng, uint64_t(w - crop_w + 1)));
    return {top, left};
}

// CenterCrop's offset: int(round(d / 2.0)) with Python's round (half to even).
int64_t center_offset(int64_t d) {
    const int64_t k = d / 2;
    return (d % 2 == 1 && k % 2 == 1) ? k + 1 : k;
}

// ToTensor() + Normalize([0.5], [0.5]) of a uint8 [H, W, 3] image with any row stride, mirrored
// left-right when `flip`: one pass into the float32 [3, H, W] result.
torch::Tensor normalize_into_chw(const torch::Tensor& image, bool flip) {
    const int64_t h = image.size(0), w = image.size(1), hw = h * w;
    TORCH_CHECK(image.stride(1) == 3 && image.stride(2) == 1, "normalize: rows must be packed");
    auto out           = torch::empty({3, h, w}, torch::kFloat32);
    const uint8_t* src = image.data_ptr<uint8_t>();
    float* dst         = out.data_ptr<float>();
    // (u8 / 255 - 0.5) / 0.5 for the 256 byte values, computed as torch does in float32.
    float table[256];
    for (int v = 0; v < 256; ++v) table[v] = (static_cast<float>(v) / 255.0f - 0.5f) / 0.5f;
    for (int64_t y = 0; y < h; ++y) {
        const uint8_t* row = src + y * image.stride(0);
        float* r           = dst + y * w;
        float* g           = r + hw;
        float* b           = g + hw;
        if (flip) {
            for (int64_t x = 0; x < w; ++x) {
                const uint8_t* p = row + 3 * (w - 1 - x);
                r[x] = table[p[0]], g[x] = table[p[1]], b[x] = table[p[2]];
            }
        } else {
            for (int64_t x = 0; x < w; ++x) {
                const uint8_t* p = row + 3 * x;
                r[x] = table[p[0]], g[x] = table[p[1]], b[x] = table[p[2]];
            }
        }
    }
    return out;
}

}  // namespace

torch::Tensor resize_shorter_side(const torch::Tensor& image, int64_t size,
                                  InterpolationMode mode) {
    check_image(image, "resize_shorter_side");
    const auto [h, w] = checked_resized_size(image, size);
    if (h == image.size(0) && w == image.size(1)) return image;  // torchvision returns it as is
    return resize(image, h, w, mode);
}

torch::Tensor center_crop(const torch::Tensor& image, int64_t size) {
    const int64_t h = image.size(0), w = image.size(1);
    TORCH_CHECK(h >= size && w >= size, "center_crop: image ", h, "x", w, " smaller than ", size);
    const int64_t top = center_offset(h - size), left = center_offset(w - size);
    return image.slice(0, top, top + size).slice(1, left, left + size).contiguous();
}

torch::Tensor random_crop(const torch::Tensor& image, int64_t size, Rng& rng) {
    const int64_t h = image.size(0), w = image.size(1);
    TORCH_CHECK(h >= size && w >= size, "random_crop: image ", h, "x", w, " smaller than ", size);
    if (h == size && w == size) return image;  // RandomCrop.get_params draws nothing
    const auto [top, left] = random_crop_offsets(h, w, size, size, rng);
    return image.slice(0, top, top + size).slice(1, left, left + size).contiguous();
}

torch::Tensor hflip(const torch::Tensor& image) { return image.flip({1}).contiguous(); }

torch::Tensor random_hflip(const torch::Tensor& image, Rng& rng) {
    return rng_uniform01(rng) < 0.5 ? hflip(image) : image;
}

torch::Tensor to_normalized_tensor(const torch::Tensor& image) {
    check_image(image, "to_normalized_tensor");
    return normalize_into_chw(image, /*flip=*/false);
}

bool draw_flip(const TransformConfig& config, Rng& rng) {
    return config.random_flip && rng_uniform01(rng) < 0.5;
}

namespace {

// The crop window's offsets (crop_h x crop_w) in the resized image (h x w), drawing as
// RandomCrop.get_params (top, then left; nothing when the crop has no choice) unless
// center_crop. `rng` null: no random crop allowed where it would have a choice (cached latents).
std::pair<int64_t, int64_t> crop_offsets(int64_t h, int64_t w, int64_t crop_h, int64_t crop_w,
                                         const TransformConfig& config, Rng* rng) {
    TORCH_CHECK(h >= crop_h && w >= crop_w, "crop: image ", h, "x", w, " smaller than ", crop_h,
                "x", crop_w);
    if (config.center_crop) return {center_offset(h - crop_h), center_offset(w - crop_w)};
    if (h == crop_h && w == crop_w) return {0, 0};
    if (!rng)
        throw CropChoiceError(
            "is " + std::to_string(w) + "x" + std::to_string(h) + " after resizing for a " +
            std::to_string(crop_w) + "x" + std::to_string(crop_h) +
            " crop, so a random crop (the default without --center_crop) picks a different part "
            "each epoch, which cached latents cannot hold; add --center_crop, or crop the images "
            "to the training size");
    return random_crop_offsets(h, w, crop_h, crop_w, *rng);
}

// Resize to h x w -> crop crop_h x crop_w -> flip -> normalize in one pass over what the crop
// keeps: only the kept pixels are resampled (resize_crop), and flip and normalize write the
// float result directly.
torch::Tensor transform(const torch::Tensor& image, const TransformConfig& config, int64_t h,
                        int64_t w, int64_t crop_h, int64_t crop_w, Rng* rng, const bool* fixed_flip,
                        bool* flipped) {
    const auto [top, left] = crop_offsets(h, w, crop_h, crop_w, config, rng);
    const bool flip = fixed_flip ? *fixed_flip : draw_flip(config, *rng);  // RandomHorizontalFlip
    if (flipped) *flipped = flip;
    const auto crop =
        h == image.size(0) && w == image.size(1)  // Resize returns it as is
            ? image.slice(0, top, top + crop_h).slice(1, left, left + crop_w)
            : resize_crop(image, h, w, top, left, crop_h, crop_w, config.interpolation);
    return normalize_into_chw(crop, flip);
}

// The square path: the shorter side to --resolution, a resolution x resolution crop.
torch::Tensor square_transform(const torch::Tensor& image, const TransformConfig& config, Rng* rng,
                               const bool* fixed_flip, bool* flipped) {
    check_image(image, "train_transform");
    const int64_t r   = config.resolution;
    const auto [h, w] = checked_resized_size(image, r);
    return transform(image, config, h, w, r, r, rng, fixed_flip, flipped);
}

}  // namespace

torch::Tensor train_transform(const torch::Tensor& image, const TransformConfig& config, Rng& rng,
                              bool* flipped) {
    return square_transform(image, config, &rng, nullptr, flipped);
}

torch::Tensor fixed_transform(const torch::Tensor& image, const TransformConfig& config,
                              bool flip) {
    return square_transform(image, config, nullptr, &flip, nullptr);
}

torch::Tensor sized_transform(const torch::Tensor& image, const TransformConfig& config,
                              const TargetSize& target, Rng* rng, const bool* fixed_flip,
                              bool* flipped) {
    check_image(image, "sized_transform");
    TORCH_CHECK(target.resized_w >= target.width && target.resized_h >= target.height &&
                    target.width > 0 && target.height > 0,
                "sized_transform: a ", target.width, "x", target.height, " crop of a ",
                target.resized_w, "x", target.resized_h, " resize");
    if (uint64_t(target.resized_w) * uint64_t(target.resized_h) > io::kMaxImagePixels)
        throw std::runtime_error("resizing it to " + std::to_string(target.resized_w) + " x " +
                                 std::to_string(target.resized_h) + " exceeds the " +
                                 std::to_string(io::kMaxImagePixels) + "-pixel budget");
    return transform(image, config, target.resized_h, target.resized_w, target.height, target.width,
                     rng, fixed_flip, flipped);
}

}  // namespace t2i::data
