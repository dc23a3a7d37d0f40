// Tests: io/image_io: decoding every PNG/JPEG/WebP flavour the way PIL's convert("RGB") does
// (the test images are written here with libpng/libjpeg/libwebp, nothing binary is committed),
// write_png round trips, and errors that name the path for truncated, corrupt and unknown files.
#include <gtest/gtest.h>
#include <jpeglib.h>
#include <png.h>
#include <webp/encode.h>

#include <csetjmp>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>

#include "io/file_util.h"
#include "io/image_io.h"
#include "test_util.h"

namespace t2i {
namespace {

using testing::expect_error;
using testing::random_image;
using testing::TempDir;
using testing::write_bytes;
// ---- helpers: write test images with the codec libraries directly -------------------------

void png_fail(png_structp png, png_const_charp) { std::longjmp(png_jmpbuf(png), 1); }

// A PNG with any colour type / bit depth from packed rows (big-endian 16-bit samples).
void write_png_raw(const std::string& path, int w, int h, int color_type, int bit_depth,
                   const std::vector<uint8_t>& packed, const std::vector<png_color>& palette = {},
                   bool interlace = false) {
    std::FILE* f    = std::fopen(path.c_str(), "wb");
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, png_fail, nullptr);
    png_infop info  = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        std::fclose(f);
        FAIL() << "libpng write failed";
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, w, h, bit_depth, color_type,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (!palette.empty())
        png_set_PLTE(png, info, const_cast<png_color*>(palette.data()), int(palette.size()));
    png_write_info(png, info);
    const size_t row_bytes = packed.size() / h;
    std::vector<png_bytep> rows(h);
    for (int y = 0; y < h; ++y) rows[y] = const_cast<uint8_t*>(&packed[y * row_bytes]);
    png_write_image(png, rows.data());
    png_write_end(png, nullptr);
    png_destroy_write_struct(&png, &info);
    std::fclose(f);
}

// A JPEG with 1, 3 or 4 (CMYK, Adobe marker) components at quality 95.
void write_jpeg(const std::string& path, int w, int h, int components,
                const std::vector<uint8_t>& pixels) {
    jpeg_compress_struct cinfo;
    jpeg_error_mgr jerr;
    cinfo.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&cinfo);
    unsigned char* out = nullptr;
    unsigned long size = 0;
    jpeg_mem_dest(&cinfo, &out, &size);
    cinfo.image_width      = w;
    cinfo.image_height     = h;
    cinfo.input_components = components;
    cinfo.in_color_space   = components == 1 ? JCS_GRAYSCALE : components == 3 ? JCS_RGB : JCS_CMYK;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, 95, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = const_cast<uint8_t*>(&pixels[cinfo.next_scanline * w * components]);
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    write_bytes(path, std::string(reinterpret_cast<char*>(out), size));
    jpeg_destroy_compress(&cinfo);
    std::free(out);
}

std::vector<uint8_t> to_vec(const torch::Tensor& t) {
    auto c = t.contiguous();
    return std::vector<uint8_t>(c.data_ptr<uint8_t>(), c.data_ptr<uint8_t>() + c.numel());
}

int max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
    return (a.to(torch::kInt32) - b.to(torch::kInt32)).abs().max().item<int>();
}

// ---- (b) image_io -------------------------------------------------------------------------

TEST(ImageIo, PngRoundTripAndInterlace) {
    TempDir dir;
    const auto img = random_image(13, 17, 1);
    io::write_png(dir.file("a.png"), img);
    EXPECT_TRUE(torch::equal(io::decode_image(dir.file("a.png")), img));
    write_png_raw(dir.file("i.png"), 17, 13, PNG_COLOR_TYPE_RGB, 8, to_vec(img), {}, true);
    EXPECT_TRUE(torch::equal(io::decode_image(dir.file("i.png")), img));
}

TEST(ImageIo, GrayAlphaPaletteAnd16Bit) {
    TempDir dir;
    // 8-bit gray -> replicated; 2-bit gray -> v * 85 (PIL's L;2).
    write_png_raw(dir.file("g.png"), 2, 1, PNG_COLOR_TYPE_GRAY, 8, {7, 200});
    auto g = io::decode_image(dir.file("g.png"));
    EXPECT_TRUE(torch::equal(g[0][1], torch::full({3}, 200, torch::kUInt8)));
    write_png_raw(dir.file("g2.png"), 4, 1, PNG_COLOR_TYPE_GRAY, 2, {0b00011011});
    auto g2 = io::decode_image(dir.file("g2.png"));
    for (int x = 0; x < 4; ++x) EXPECT_EQ(g2[0][x][1].item<int>(), x * 85);
    // RGBA with alpha 0: PIL drops alpha, no compositing.
    write_png_raw(dir.file("rgba.png"), 1, 1, PNG_COLOR_TYPE_RGBA, 8, {10, 20, 30, 0});
    EXPECT_EQ(to_vec(io::decode_image(dir.file("rgba.png"))), (std::vector<uint8_t>{10, 20, 30}));
    write_png_raw(dir.file("la.png"), 1, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 8, {99, 0});
    EXPECT_EQ(to_vec(io::decode_image(dir.file("la.png"))), (std::vector<uint8_t>{99, 99, 99}));
    // 4-bit palette.
    write_png_raw(dir.file("p.png"), 2, 1, PNG_COLOR_TYPE_PALETTE, 4, {0x10},
                  {{1, 2, 3}, {250, 128, 0}});
    EXPECT_EQ(to_vec(io::decode_image(dir.file("p.png"))),
              (std::vector<uint8_t>{250, 128, 0, 1, 2, 3}));
    // 16-bit RGB: high byte. 16-bit gray: clipped at 255 (PIL's I;16 -> RGB). 16-bit LA: MSB.
    write_png_raw(dir.file("rgb16.png"), 1, 1, PNG_COLOR_TYPE_RGB, 16,
                  {0x12, 0xAB, 0xFF, 0x01, 0x00, 0xFF});
    EXPECT_EQ(to_vec(io::decode_image(dir.file("rgb16.png"))),
              (std::vector<uint8_t>{0x12, 0xFF, 0x00}));
    write_png_raw(dir.file("g16.png"), 2, 1, PNG_COLOR_TYPE_GRAY, 16, {0x00, 0x64, 0x01, 0x2C});
    EXPECT_EQ(to_vec(io::decode_image(dir.file("g16.png"))),
              (std::vector<uint8_t>{100, 100, 100, 255, 255, 255}));
    write_png_raw(dir.file("la16.png"), 1, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 16, {0x80, 0x01, 0, 0});
    EXPECT_EQ(to_vec(io::decode_image(dir.file("la16.png"))),
              (std::vector<uint8_t>{0x80, 0x80, 0x80}));
}

TEST(ImageIo, JpegRgbGrayCmyk) {
    TempDir dir;
    // Smooth content so quality-95 JPEG stays within a few levels.
    auto ramp = torch::arange(0, 64, torch::kInt64).mul(3).to(torch::kUInt8);
    auto img  = torch::stack({ramp.view({1, 64}).expand({32, 64}),
                              ramp.view({1, 64}).expand({32, 64}).flip({1}),
                              torch::full({32, 64}, 128, torch::kUInt8)},
                             2)
                   .contiguous();
    write_jpeg(dir.file("rgb.bin"), 64, 32, 3, to_vec(img));  // extension ignored
    auto rgb = io::decode_image(dir.file("rgb.bin"));
    ASSERT_EQ(rgb.sizes(), img.sizes());
    EXPECT_LE(max_abs_diff(rgb, img), 6);
    write_jpeg(dir.file("gray.jpg"), 64, 32, 1, to_vec(img.select(2, 0).contiguous()));
    auto gray = io::decode_image(dir.file("gray.jpg"));
    EXPECT_TRUE(torch::equal(gray.select(2, 0), gray.select(2, 2)));
    EXPECT_LE(max_abs_diff(gray.select(2, 0), img.select(2, 0)), 6);
    // Adobe CMYK stores inverted ink: stored (0, 255, 255, 255) = full cyan, no black.
    std::vector<uint8_t> cmyk;
    for (int i = 0; i < 16 * 16; ++i) cmyk.insert(cmyk.end(), {0, 255, 255, 255});
    write_jpeg(dir.file("cmyk.jpg"), 16, 16, 4, cmyk);
    auto c = io::decode_image(dir.file("cmyk.jpg"));
    EXPECT_LE(max_abs_diff(c, torch::tensor({0, 255, 255}, torch::kUInt8).expand({16, 16, 3})), 2);
}

TEST(ImageIo, WebpLosslessAndLossy) {
    TempDir dir;
    const auto img = random_image(9, 11, 2);
    uint8_t* out   = nullptr;
    size_t size    = WebPEncodeLosslessRGB(img.data_ptr<uint8_t>(), 11, 9, 33, &out);
    write_bytes(dir.file("a.webp"), std::string(reinterpret_cast<char*>(out), size));
    WebPFree(out);
    EXPECT_TRUE(torch::equal(io::decode_image(dir.file("a.webp")), img));
    // With alpha (non-zero, so the lossless encoder keeps RGB): alpha is dropped.
    auto rgba = torch::cat({img, torch::full({9, 11, 1}, 77, torch::kUInt8)}, 2).contiguous();
    size      = WebPEncodeLosslessRGBA(rgba.data_ptr<uint8_t>(), 11, 9, 44, &out);
    write_bytes(dir.file("b.webp"), std::string(reinterpret_cast<char*>(out), size));
    WebPFree(out);
    EXPECT_TRUE(torch::equal(io::decode_image(dir.file("b.webp")), img));
    auto flat = torch::full({16, 16, 3}, 90, torch::kUInt8);
    size      = WebPEncodeRGB(flat.data_ptr<uint8_t>(), 16, 16, 48, 90, &out);
    write_bytes(dir.file("c.webp"), std::string(reinterpret_cast<char*>(out), size));
    WebPFree(out);
    EXPECT_LE(max_abs_diff(io::decode_image(dir.file("c.webp")), flat), 3);
}

TEST(ImageIo, ErrorsNameThePath) {
    TempDir dir;
    io::write_png(dir.file("ok.png"), random_image(40, 40, 3));
    const std::string png = io::read_text_file(dir.file("ok.png"));
    write_bytes(dir.file("cut.png"), png.substr(0, png.size() / 2));
    expect_error([&] { io::decode_image(dir.file("cut.png")); }, {dir.file("cut.png"), "PNG"});
    std::string bad = png;
    for (size_t i = 40; i < 60; ++i) bad[i] ^= 0x5A;
    write_bytes(dir.file("bad.png"), bad);
    expect_error([&] { io::decode_image(dir.file("bad.png")); }, {dir.file("bad.png")});
    std::vector<uint8_t> px(64 * 64 * 3, 100);
    write_jpeg(dir.file("ok.jpg"), 64, 64, 3, px);
    const std::string jpg = io::read_text_file(dir.file("ok.jpg"));
    write_bytes(dir.file("cut.jpg"), jpg.substr(0, jpg.size() / 2));
    expect_error([&] { io::decode_image(dir.file("cut.jpg")); },
                 {dir.file("cut.jpg"), "truncated"});
    write_bytes(dir.file("cut.webp"), "RIFF\x10\0\0\0WEBPVP8 ");
    expect_error([&] { io::decode_image(dir.file("cut.webp")); }, {dir.file("cut.webp")});
    write_bytes(dir.file("text.png"), "hello");
    expect_error([&] { io::decode_image(dir.file("text.png")); },
                 {dir.file("text.png"), "unknown format"});
    write_bytes(dir.file("a.gif"), "GIF89a....");
    expect_error([&] { io::decode_image(dir.file("a.gif")); }, {"GIF"});
    expect_error([&] { io::decode_image(dir.file("missing.png")); }, {dir.file("missing.png")});
}

// Random byte damage must end in a decoded image or a runtime_error, never a crash: the codecs'
// longjmp error paths are exercised many times.
TEST(ImageIo, DamagedFilesNeverCrash) {
    TempDir dir;
    const auto img = random_image(24, 24, 6);
    io::write_png(dir.file("a.png"), img);
    write_jpeg(dir.file("a.jpg"), 24, 24, 3, to_vec(img));
    uint8_t* out      = nullptr;
    const size_t size = WebPEncodeRGB(img.data_ptr<uint8_t>(), 24, 24, 72, 80, &out);
    write_bytes(dir.file("a.webp"), std::string(reinterpret_cast<char*>(out), size));
    WebPFree(out);
    std::mt19937 rng(1);
    int errors = 0;
    for (const char* name : {"a.png", "a.jpg", "a.webp"}) {
        const std::string good = io::read_text_file(dir.file(name));
        for (int trial = 0; trial < 150; ++trial) {
            std::string bad = good;
            for (int k = 0; k < 1 + trial % 8; ++k)
                bad[16 + rng() % (bad.size() - 16)] = char(rng());
            if (trial % 3 == 0) bad.resize(16 + rng() % (bad.size() - 16));
            try {
                const auto decoded = io::decode_image_bytes(bad, name);
                EXPECT_EQ(decoded.size(2), 3);
            } catch (const std::runtime_error& e) {
                EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
                ++errors;
            }
        }
    }
    EXPECT_GT(errors, 100);
}

}  // namespace
}  // namespace t2i
