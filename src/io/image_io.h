// Implements: image files <-> uint8 RGB tensors [H, W, 3]. Decoding reproduces what
// `PIL.Image.open(path).convert("RGB")` gives (the script's first transform), through libpng,
// libjpeg(-turbo) and libwebp; the format is found from the magic bytes, never the extension.
// Conversions follow Pillow's libImaging/Convert.c and the plugins' raw modes:
//   L (and 1/2/4-bit gray)    -> replicated to R, G, B (low bit depths scaled as PIL's L;2 / L;4)
//   LA, RGBA                  -> alpha dropped, not composited (PIL's convert does not blend)
//   P (palette)               -> palette lookup; tRNS transparency ignored
//   16-bit RGB(A), 16-bit LA  -> high byte (PIL's RGB;16B / RGBA;16B / LA;16B unpackers)
//   16-bit gray               -> clipped to 255, not shifted (PIL's I;16 -> RGB, I16_RGB)
//   CMYK / YCCK JPEG          -> inverted (PIL's "CMYK;I", Adobe convention), then cmyk2rgb
//   WebP                      -> first frame through WebPAnimDecoder in RGBA, alpha dropped
// EXIF orientation is not applied: neither PIL's convert nor torchvision/diffusers apply it.
#pragma once

#include <torch/torch.h>

#include <string>
#include <string_view>

namespace t2i::io {

// The most pixels a decoded image, or an image resized for training, may have: Pillow's
// decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS), beyond which PIL refuses to open it.
constexpr uint64_t kMaxImagePixels = 2ull * 89478485ull;

// uint8 [H, W, 3] RGB. Throws std::runtime_error naming `path` and the problem for unreadable,
// unknown, truncated or corrupt files, and for images above kMaxImagePixels. The file is mapped,
// not read: only what the decoder needs is touched.
torch::Tensor decode_image(const std::string& path);

// Same, from bytes in memory; `name` is used in error messages.
torch::Tensor decode_image_bytes(std::string_view bytes, const std::string& name);

// An image's size as decode_image would give it, read from the file's header alone (PNG IHDR,
// JPEG start of frame through libjpeg's jpeg_read_header, WebP canvas through WebPGetInfo):
// a header of a few hundred bytes, not the pixels. Throws as decode_image does for unknown
// formats, bad headers and images above kMaxImagePixels; a file whose pixel data is corrupt
// past a good header passes here and fails in decode_image. (image_size.cpp)
struct ImageSize {
    int64_t width  = 0;
    int64_t height = 0;
};
ImageSize read_image_size(const std::string& path);
ImageSize read_image_size_bytes(std::string_view bytes, const std::string& name);

// 8-bit RGB PNG of a uint8 [H, W, 3] tensor, written atomically (temp name, fsync, rename).
void write_png(const std::string& path, const torch::Tensor& rgb_u8_hwc);

// PNG bytes (8-bit RGB, zlib default level as PIL) of a uint8 [H, W, 3] tensor; write_png and the
// TensorBoard writer both use it.
std::string encode_png(const torch::Tensor& rgb_u8_hwc);

}  // namespace t2i::io
