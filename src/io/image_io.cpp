// Implements: image_io.h. Each codec runs in one C-style function that owns a setjmp point: the
// libraries' error callbacks longjmp back to it across C frames only, and every C++ object that
// outlives the jump is declared before setjmp, so no destructor is ever skipped. The raw decoded
// samples are then converted to RGB exactly as Pillow's convert("RGB") does (see the header).
#include "io/image_io.h"

#include <jpeglib.h>
// jpeglib.h must come first: jerror.h uses its types.
#include <jerror.h>
#include <png.h>
#include <webp/decode.h>
#include <webp/demux.h>

#include <array>
#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "io/file_util.h"

namespace t2i::io {
namespace {

// PIL refuses images above 2 x Image.MAX_IMAGE_PIXELS (DecompressionBombError).
constexpr const char* kTooLarge =
    "image is larger than 178,956,970 pixels (Pillow's decompression-bomb limit)";

struct CodecError {
    std::jmp_buf jump;
    char message[JMSG_LENGTH_MAX > 256 ? JMSG_LENGTH_MAX : 256];
};

[[noreturn]] void fail(const std::string& name, const std::string& what) {
    throw std::runtime_error("cannot decode image '" + name + "': " + what);
}

// ---- PNG ----------------------------------------------------------------------------------

struct PngSource {
    const uint8_t* data;
    size_t size;
    size_t pos;
};

struct PngRaw {
    uint32_t width = 0, height = 0;
    int bit_depth = 0, color_type = 0;
    size_t row_bytes = 0;
    // Not value-initialized: pages are committed only as rows are decoded, so a truncated file
    // that declares a huge image fails before it costs its declared size in memory.
    std::unique_ptr<uint8_t[]> pixels;
    std::array<uint8_t, 768> palette{};  // PIL's palette starts as a gray ramp
    const uint8_t* row(size_t y) const { return pixels.get() + y * row_bytes; }
};

// deflate never expands more than 1032:1, so PNG data of `compressed` bytes cannot hold more
// than about 1032 x compressed raw bytes: a header that declares more is corrupt or a bomb.
constexpr uint64_t kMaxDeflateRatio = 1040;

void png_read_callback(png_structp png, png_bytep out, png_size_t n) {
    auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
    if (src->size - src->pos < n) png_error(png, "file is truncated");
    std::memcpy(out, src->data + src->pos, n);
    src->pos += n;
}

void png_error_callback(png_structp png, png_const_charp msg) {
    auto* err = static_cast<CodecError*>(png_get_error_ptr(png));
    std::snprintf(err->message, sizeof err->message, "%s", msg);
    std::longjmp(err->jump, 1);
}

void png_warning_callback(png_structp, png_const_charp) {}

// Reads the samples without libpng colour transforms, except unpacking sub-byte samples (and
// scaling sub-byte gray to 8 bits, as PIL's L;2 / L;4 / 1 unpackers do). False on error.
bool png_decode_raw(std::string_view bytes, PngRaw* raw, CodecError* err) {
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, err, png_error_callback,
                                             png_warning_callback);
    png_infop info  = png ? png_create_info_struct(png) : nullptr;
    if (!info) {
        png_destroy_read_struct(png ? &png : nullptr, nullptr, nullptr);
        std::snprintf(err->message, sizeof err->message, "out of memory");
        return false;
    }
    PngSource src{reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 0};
    if (setjmp(err->jump)) {
        png_destroy_read_struct(&png, &info, nullptr);
        return false;
    }
    png_set_read_fn(png, &src, png_read_callback);
    png_read_info(png, info);
    raw->width      = png_get_image_width(png, info);
    raw->height     = png_get_image_height(png, info);
    raw->bit_depth  = png_get_bit_depth(png, info);
    raw->color_type = png_get_color_type(png, info);
    if (uint64_t(raw->width) * raw->height > kMaxImagePixels) png_error(png, kTooLarge);
    // The stored rows (each with its filter byte) against what deflate can expand the file to.
    if ((uint64_t(png_get_rowbytes(png, info)) + 1) * raw->height >
        kMaxDeflateRatio * bytes.size() + 65536)
        png_error(png,
                  "the header declares more pixels than the file can hold (truncated, corrupt "
                  "or a decompression bomb)");
    if (raw->color_type == PNG_COLOR_TYPE_PALETTE) {
        png_colorp entries = nullptr;
        int count          = 0;
        for (int i = 0; i < 256; ++i)
            raw->palette[3 * i] = raw->palette[3 * i + 1] = raw->palette[3 * i + 2] =
                static_cast<uint8_t>(i);
        if (png_get_PLTE(png, info, &entries, &count) & PNG_INFO_PLTE)
            for (int i = 0; i < count && i < 256; ++i) {
                raw->palette[3 * i]     = entries[i].red;
                raw->palette[3 * i + 1] = entries[i].green;
                raw->palette[3 * i + 2] = entries[i].blue;
            }
    }
    if (raw->bit_depth < 8) png_set_packing(png);
    if (raw->color_type == PNG_COLOR_TYPE_GRAY && raw->bit_depth < 8)
        png_set_expand_gray_1_2_4_to_8(png);
    const int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);
    raw->row_bytes = png_get_rowbytes(png, info);
    raw->pixels.reset(new uint8_t[raw->row_bytes * raw->height]);
    // png_read_image without its array of row pointers (8 bytes per row, touched up front):
    // each interlace pass combines its pixels into the rows, as png_read_image does.
    for (int pass = 0; pass < passes; ++pass)
        for (uint32_t y = 0; y < raw->height; ++y)
            png_read_row(png, raw->pixels.get() + y * raw->row_bytes, nullptr);
    // PIL stops after the image data, so a missing IEND is not an error; skip png_read_end.
    png_destroy_read_struct(&png, &info, nullptr);
    return true;
}

torch::Tensor png_to_rgb(const PngRaw& raw) {
    const int64_t h = raw.height, w = raw.width;
    auto out      = torch::empty({h, w, 3}, torch::kUInt8);
    uint8_t* dst  = out.data_ptr<uint8_t>();
    const int bps = raw.bit_depth == 16 ? 2 : 1;  // bytes per sample (MSB first)
    for (int64_t y = 0; y < h; ++y) {
        const uint8_t* row = raw.row(static_cast<size_t>(y));
        for (int64_t x = 0; x < w; ++x, dst += 3) {
            switch (raw.color_type) {
                case PNG_COLOR_TYPE_GRAY: {
                    uint8_t v = row[x * bps];
                    if (bps == 2) v = row[2 * x] ? 255 : row[2 * x + 1];  // I16_RGB clips
                    dst[0] = dst[1] = dst[2] = v;
                    break;
                }
                case PNG_COLOR_TYPE_GRAY_ALPHA:
                    dst[0] = dst[1] = dst[2] = row[x * 2 * bps];
                    break;
                case PNG_COLOR_TYPE_PALETTE:
                    std::memcpy(dst, &raw.palette[3 * row[x]], 3);
                    break;
                default: {  // RGB or RGBA: the high byte of each sample
                    const int channels = raw.color_type == PNG_COLOR_TYPE_RGB ? 3 : 4;
                    const uint8_t* px  = row + x * channels * bps;
                    for (int c = 0; c < 3; ++c) dst[c] = px[c * bps];
                }
            }
        }
    }
    return out;
}

// ---- JPEG ---------------------------------------------------------------------------------

struct JpegError {
    jpeg_error_mgr mgr;  // first member: libjpeg hands back a pointer to it
    CodecError* err;
};

void jpeg_error_exit(j_common_ptr cinfo) {
    auto* e = reinterpret_cast<JpegError*>(cinfo->err);
    (*cinfo->err->format_message)(cinfo, e->err->message);
    std::longjmp(e->err->jump, 1);
}

// libjpeg only warns about a premature end of data and pads with gray; PIL reports the file
// as truncated, so that warning is an error here. Other warnings are ignored like PIL does.
void jpeg_emit_message(j_common_ptr cinfo, int level) {
    if (level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        auto* e = reinterpret_cast<JpegError*>(cinfo->err);
        std::snprintf(e->err->message, sizeof e->err->message, "file is truncated");
        std::longjmp(e->err->jump, 1);
    }
}

// Decodes to 1 (gray), 3 (RGB) or 4 (CMYK as stored) components per pixel. False on error.
bool jpeg_decode_raw(std::string_view bytes, std::unique_ptr<uint8_t[]>* pixels, int* width,
                     int* height, int* components, CodecError* err) {
    jpeg_decompress_struct cinfo;
    JpegError jerr;
    jerr.err              = err;
    cinfo.err             = jpeg_std_error(&jerr.mgr);
    jerr.mgr.error_exit   = jpeg_error_exit;
    jerr.mgr.emit_message = jpeg_emit_message;
    if (setjmp(err->jump)) {
        jpeg_destroy_decompress(&cinfo);
        return false;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, reinterpret_cast<const unsigned char*>(bytes.data()),
                 static_cast<unsigned long>(bytes.size()));
    jpeg_read_header(&cinfo, TRUE);
    // PIL picks the mode from the component count: L, RGB or CMYK (JpegImagePlugin SOF).
    switch (cinfo.num_components) {
        case 1:
            cinfo.out_color_space = JCS_GRAYSCALE;
            break;
        case 3:
            cinfo.out_color_space = JCS_RGB;
            break;
        case 4:
            cinfo.out_color_space = JCS_CMYK;
            break;
        default:
            ERREXIT(&cinfo, JERR_BAD_J_COLORSPACE);
    }
    if (uint64_t(cinfo.image_width) * cinfo.image_height > kMaxImagePixels) {
        std::snprintf(err->message, sizeof err->message, "%s", kTooLarge);
        std::longjmp(err->jump, 1);
    }
    jpeg_start_decompress(&cinfo);
    *width              = static_cast<int>(cinfo.output_width);
    *height             = static_cast<int>(cinfo.output_height);
    *components         = cinfo.output_components;
    const size_t stride = size_t(*width) * *components;
    pixels->reset(new uint8_t[stride * *height]);  // committed as scanlines arrive
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = pixels->get() + stride * cinfo.output_scanline;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return true;
}

// Pillow's Convert.c cmyk2rgb on the inverted ("CMYK;I") samples.
inline uint8_t cmyk_channel(int c, int nk) {
    const int tmp = c * nk + 128;  // MULDIV255(c, nk)
    const int v   = nk - (((tmp >> 8) + tmp) >> 8);
    return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

torch::Tensor jpeg_to_rgb(const uint8_t* px, int w, int h, int components) {
    auto out       = torch::empty({h, w, 3}, torch::kUInt8);
    uint8_t* dst   = out.data_ptr<uint8_t>();
    const size_t n = size_t(w) * h;
    if (components == 3) {
        std::memcpy(dst, px, n * 3);
    } else if (components == 1) {
        for (size_t i = 0; i < n; ++i) dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = px[i];
    } else {
        for (size_t i = 0; i < n; ++i) {
            const uint8_t* s = &px[4 * i];
            const int nk     = s[3];  // 255 - K with K = 255 - stored (inverted) value
            for (int c = 0; c < 3; ++c) dst[3 * i + c] = cmyk_channel(255 - s[c], nk);
        }
    }
    return out;
}

// ---- WebP ---------------------------------------------------------------------------------

// Pillow decodes every WebP through WebPAnimDecoder in RGBA and keeps the first frame.
torch::Tensor webp_to_rgb(std::string_view bytes, const std::string& name) {
    WebPData data{reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()};
    WebPAnimDecoderOptions options;
    if (!WebPAnimDecoderOptionsInit(&options)) fail(name, "libwebp version mismatch");
    options.color_mode       = MODE_RGBA;
    options.use_threads      = 0;
    WebPAnimDecoder* decoder = WebPAnimDecoderNew(&data, &options);
    if (!decoder) fail(name, "corrupt or truncated WebP file");
    WebPAnimInfo info;
    uint8_t* rgba = nullptr;
    int timestamp = 0;
    if (!WebPAnimDecoderGetInfo(decoder, &info) ||
        uint64_t(info.canvas_width) * info.canvas_height > kMaxImagePixels ||
        !WebPAnimDecoderGetNext(decoder, &rgba, &timestamp)) {
        WebPAnimDecoderDelete(decoder);
        fail(name, "corrupt, truncated or too large WebP file");
    }
    const int64_t w = info.canvas_width, h = info.canvas_height;
    auto out     = torch::empty({h, w, 3}, torch::kUInt8);
    uint8_t* dst = out.data_ptr<uint8_t>();
    for (int64_t i = 0; i < w * h; ++i) std::memcpy(dst + 3 * i, rgba + 4 * i, 3);
    WebPAnimDecoderDelete(decoder);
    return out;
}

// ---- format detection ---------------------------------------------------------------------

bool starts_with(std::string_view bytes, const char* magic, size_t n, size_t at = 0) {
    return bytes.size() >= at + n && std::memcmp(bytes.data() + at, magic, n) == 0;
}

// Formats PIL can open but t2i does not decode; named so the message says what the file is.
const char* other_format_name(std::string_view bytes) {
    if (starts_with(bytes, "GIF8", 4)) return "GIF";
    if (starts_with(bytes, "BM", 2)) return "BMP";
    if (starts_with(bytes, "II*\0", 4) || starts_with(bytes, "MM\0*", 4)) return "TIFF";
    if (starts_with(bytes, "ftyp", 4, 4)) return "HEIF/AVIF";
    return nullptr;
}

struct PngSink {
    std::jmp_buf jump;
    char message[256];
    std::string bytes;
};

void png_sink_write(png_structp png, png_bytep data, png_size_t n) {
    static_cast<PngSink*>(png_get_io_ptr(png))->bytes.append(reinterpret_cast<char*>(data), n);
}

void png_sink_flush(png_structp) {}

void png_sink_error(png_structp png, png_const_charp msg) {
    auto* sink = static_cast<PngSink*>(png_get_error_ptr(png));
    std::snprintf(sink->message, sizeof sink->message, "%s", msg);
    std::longjmp(sink->jump, 1);
}

void png_sink_warning(png_structp, png_const_charp) {}

// Returns false with sink->message set on a libpng error. No C++ objects live between setjmp
// and the libpng frames that may longjmp.
bool png_encode_rgb(PngSink* sink, const uint8_t* data, int w, int h) {
    png_structp png =
        png_create_write_struct(PNG_LIBPNG_VER_STRING, sink, png_sink_error, png_sink_warning);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!info) {
        png_destroy_write_struct(png ? &png : nullptr, nullptr);
        std::snprintf(sink->message, sizeof sink->message, "out of memory");
        return false;
    }
    if (setjmp(sink->jump)) {
        png_destroy_write_struct(&png, &info);
        return false;
    }
    png_set_write_fn(png, sink, png_sink_write, png_sink_flush);
    png_set_IHDR(png, info, w, h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; ++y) png_write_row(png, const_cast<uint8_t*>(data + size_t(y) * w * 3));
    png_write_end(png, nullptr);
    png_destroy_write_struct(&png, &info);
    return true;
}

}  // namespace

torch::Tensor decode_image_bytes(std::string_view bytes, const std::string& name) {
    CodecError err;
    if (starts_with(bytes, "\x89PNG\r\n\x1a\n", 8)) {
        PngRaw raw;
        if (!png_decode_raw(bytes, &raw, &err)) fail(name, std::string("PNG: ") + err.message);
        return png_to_rgb(raw);
    }
    if (starts_with(bytes, "\xFF\xD8\xFF", 3)) {
        std::unique_ptr<uint8_t[]> pixels;
        int w = 0, h = 0, components = 0;
        if (!jpeg_decode_raw(bytes, &pixels, &w, &h, &components, &err))
            fail(name, std::string("JPEG: ") + err.message);
        return jpeg_to_rgb(pixels.get(), w, h, components);
    }
    if (starts_with(bytes, "RIFF", 4) && starts_with(bytes, "WEBP", 4, 8))
        return webp_to_rgb(bytes, name);
    if (bytes.empty()) fail(name, "the file is empty");
    if (const char* other = other_format_name(bytes))
        fail(name, std::string(other) +
                       " is not supported (t2i decodes PNG, JPEG and WebP); convert the file, "
                       "e.g. `convert in out.png`");
    fail(name,
         "unknown format: not a PNG, JPEG or WebP file (formats are detected from the "
         "content, not the extension)");
}

torch::Tensor decode_image(const std::string& path) {
    // Mapped, not read: the magic bytes and the header are checked before the rest of the file
    // is touched, so a huge or mislabelled file costs nothing (PIL also decodes lazily).
    const MappedFile file(path);
    return decode_image_bytes(file.bytes(), path);
}

std::string encode_png(const torch::Tensor& rgb_u8_hwc) {
    TORCH_CHECK(rgb_u8_hwc.scalar_type() == torch::kUInt8 && rgb_u8_hwc.dim() == 3 &&
                    rgb_u8_hwc.size(2) == 3 && rgb_u8_hwc.numel() > 0,
                "encode_png: expected a non-empty uint8 [H, W, 3] tensor, got ",
                rgb_u8_hwc.scalar_type(), " ", rgb_u8_hwc.sizes());
    const auto image = rgb_u8_hwc.to(torch::kCPU).contiguous();
    PngSink sink;
    if (!png_encode_rgb(&sink, image.data_ptr<uint8_t>(), static_cast<int>(image.size(1)),
                        static_cast<int>(image.size(0))))
        throw std::runtime_error(std::string("encode_png: libpng: ") + sink.message);
    return std::move(sink.bytes);
}

void write_png(const std::string& path, const torch::Tensor& rgb_u8_hwc) {
    TORCH_CHECK(rgb_u8_hwc.scalar_type() == torch::kUInt8 && rgb_u8_hwc.dim() == 3 &&
                    rgb_u8_hwc.size(2) == 3,
                "write_png('", path, "'): expected a uint8 [H, W, 3] tensor, got ",
                rgb_u8_hwc.scalar_type(), " ", rgb_u8_hwc.sizes());
    TORCH_CHECK(rgb_u8_hwc.numel() > 0, "write_png('", path, "'): empty image");
    write_text_atomic(path, encode_png(rgb_u8_hwc));
}

}  // namespace t2i::io
