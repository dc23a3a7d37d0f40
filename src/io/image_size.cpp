// Implements: image_io.h read_image_size: an image's width and height from its header, for the
// aspect-ratio buckets (data/buckets.h), which need every image's size before training starts
// but not its pixels. Mirrors what kohya-ss sd-scripts does with PIL's Image.open(path).size
// (PIL reads only the header too). The format is found from the magic bytes, as decode_image
// finds it, so the two agree on which files are images.
#include <jpeglib.h>
// jpeglib.h must come first: jerror.h uses its types.
#include <jerror.h>
#include <webp/decode.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

#include "io/file_util.h"
#include "io/image_io.h"

namespace t2i::io {
namespace {

[[noreturn]] void fail(const std::string& name, const std::string& what) {
    throw std::runtime_error("cannot read the size of image '" + name + "': " + what);
}

bool starts_with(std::string_view bytes, const char* magic, size_t n, size_t at = 0) {
    return bytes.size() >= at + n && std::memcmp(bytes.data() + at, magic, n) == 0;
}

uint32_t big_endian32(const char* p) {
    const auto* u = reinterpret_cast<const unsigned char*>(p);
    return (uint32_t(u[0]) << 24) | (uint32_t(u[1]) << 16) | (uint32_t(u[2]) << 8) | u[3];
}

// PNG: the signature, then the IHDR chunk (length 13) whose first 8 bytes are the width and
// height, big-endian (PNG spec 11.2.2).
ImageSize png_size(std::string_view bytes, const std::string& name) {
    if (bytes.size() < 24 || big_endian32(bytes.data() + 8) != 13 ||
        !starts_with(bytes, "IHDR", 4, 12))
        fail(name, "PNG: no IHDR chunk after the signature (corrupt or truncated file)");
    return {int64_t(big_endian32(bytes.data() + 16)), int64_t(big_endian32(bytes.data() + 20))};
}

struct JpegSizeError {
    jpeg_error_mgr mgr;  // first member: libjpeg hands back a pointer to it
    std::jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

void jpeg_size_error_exit(j_common_ptr cinfo) {
    auto* e = reinterpret_cast<JpegSizeError*>(cinfo->err);
    (*cinfo->err->format_message)(cinfo, e->message);
    std::longjmp(e->jump, 1);
}

// JPEG: libjpeg reads the markers up to the start of scan; the frame's size is the decoded size
// (no scaling is asked for). False on error, with the message in err.
bool jpeg_size(std::string_view bytes, ImageSize* size, JpegSizeError* err) {
    jpeg_decompress_struct cinfo;
    cinfo.err             = jpeg_std_error(&err->mgr);
    err->mgr.error_exit   = jpeg_size_error_exit;
    err->mgr.emit_message = [](j_common_ptr, int) {};  // warnings: the decoder judges the data
    if (setjmp(err->jump)) {
        jpeg_destroy_decompress(&cinfo);
        return false;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, reinterpret_cast<const unsigned char*>(bytes.data()),
                 static_cast<unsigned long>(bytes.size()));
    jpeg_read_header(&cinfo, TRUE);
    size->width  = cinfo.image_width;
    size->height = cinfo.image_height;
    jpeg_destroy_decompress(&cinfo);
    return true;
}

}  // namespace

ImageSize read_image_size_bytes(std::string_view bytes, const std::string& name) {
    ImageSize size;
    if (starts_with(bytes, "\x89PNG\r\n\x1a\n", 8)) {
        size = png_size(bytes, name);
    } else if (starts_with(bytes, "\xFF\xD8\xFF", 3)) {
        JpegSizeError err;
        if (!jpeg_size(bytes, &size, &err)) fail(name, std::string("JPEG: ") + err.message);
    } else if (starts_with(bytes, "RIFF", 4) && starts_with(bytes, "WEBP", 4, 8)) {
        int w = 0, h = 0;  // the canvas, which WebPAnimDecoder decodes (image_io.cpp)
        if (!WebPGetInfo(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), &w, &h))
            fail(name, "WebP: corrupt or truncated header");
        size = {w, h};
    } else {
        // The decoder names the format (GIF, BMP, ...) or says it is unknown.
        decode_image_bytes(bytes.substr(0, std::min<size_t>(bytes.size(), 16)), name);
        fail(name, "unknown format");
    }
    if (size.width <= 0 || size.height <= 0)
        fail(name, "the header declares an empty image (" + std::to_string(size.width) + " x " +
                       std::to_string(size.height) + ")");
    if (uint64_t(size.width) * uint64_t(size.height) > kMaxImagePixels)
        fail(name, "image is larger than 178,956,970 pixels (Pillow's decompression-bomb limit)");
    return size;
}

ImageSize read_image_size(const std::string& path) {
    const MappedFile file(path);  // only the header's pages are read
    return read_image_size_bytes(file.bytes(), path);
}

}  // namespace t2i::io
