// Implements: io/image_compose.h.
#include "io/image_compose.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>

namespace t2i::io {

torch::Tensor image_grid(const std::vector<torch::Tensor>& images, int64_t columns, int64_t gap) {
    if (images.empty()) throw std::invalid_argument("image_grid: no images");
    if (columns < 1) throw std::invalid_argument("image_grid: columns must be >= 1");
    int64_t cell_h = 0, cell_w = 0;
    for (const auto& im : images) {
        if (im.scalar_type() != torch::kUInt8 || im.dim() != 3 || im.size(2) != 3)
            throw std::invalid_argument("image_grid: every image must be uint8 [H, W, 3]");
        cell_h = std::max(cell_h, im.size(0));
        cell_w = std::max(cell_w, im.size(1));
    }
    const int64_t n = int64_t(images.size()), cols = std::min(columns, n);
    const int64_t rows = (n + cols - 1) / cols;
    auto out = torch::full({rows * cell_h + (rows + 1) * gap, cols * cell_w + (cols + 1) * gap, 3},
                           255, torch::kUInt8);
    for (int64_t i = 0; i < n; ++i) {
        const auto& im  = images[size_t(i)];
        const int64_t y = gap + (i / cols) * (cell_h + gap) + (cell_h - im.size(0)) / 2;
        const int64_t x = gap + (i % cols) * (cell_w + gap) + (cell_w - im.size(1)) / 2;
        out.slice(0, y, y + im.size(0)).slice(1, x, x + im.size(1)).copy_(im);
    }
    return out;
}

namespace {

struct Canvas {
    torch::Tensor pixels;  // [H, W, 3] uint8
    uint8_t* data;
    int64_t h, w;
    explicit Canvas(int64_t height, int64_t width)
        : pixels(torch::full({height, width, 3}, 255, torch::kUInt8)),
          data(pixels.data_ptr<uint8_t>()),
          h(height),
          w(width) {}
    void set(int64_t x, int64_t y, const uint8_t rgb[3]) {
        if (x < 0 || y < 0 || x >= w || y >= h) return;
        std::copy(rgb, rgb + 3, data + (y * w + x) * 3);
    }
    // Bresenham, two pixels thick.
    void line(int64_t x0, int64_t y0, int64_t x1, int64_t y1, const uint8_t rgb[3]) {
        const int64_t dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
        const int64_t sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
        int64_t err = dx + dy;
        while (true) {
            set(x0, y0, rgb), set(x0, y0 + 1, rgb);
            if (x0 == x1 && y0 == y1) break;
            const int64_t e2 = 2 * err;
            if (e2 >= dy) err += dy, x0 += sx;
            if (e2 <= dx) err += dx, y0 += sy;
        }
    }
};

// 5 x 7 glyphs of the characters a number is printed with (%g), one row of 5 bits per line.
const std::map<char, std::array<uint8_t, 7>>& glyphs() {
    static const std::map<char, std::array<uint8_t, 7>> g{
        {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}},
        {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
        {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}},
        {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
        {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}},
        {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
        {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}},
        {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
        {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}},
        {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
        {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}},
        {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}},
        {'+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}},
        {'e', {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E}}};
    return g;
}

std::string number_text(double v) {
    char buf[32];
    if (v == std::floor(v) && std::abs(v) < 1e9)  // a step: every digit
        std::snprintf(buf, sizeof buf, "%.0f", v);
    else
        std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

// Width in pixels of `text` at `scale` (6 x scale per character: 5 drawn, 1 apart).
int64_t text_width(const std::string& text, int64_t scale) {
    return int64_t(text.size()) * 6 * scale - scale;
}

// `text` with its top-left corner at (x, y); characters without a glyph stay blank.
void draw_text(Canvas& c, const std::string& text, int64_t x, int64_t y, int64_t scale,
               const uint8_t rgb[3]) {
    for (size_t k = 0; k < text.size(); ++k) {
        const auto it = glyphs().find(text[k]);
        if (it == glyphs().end()) continue;
        const int64_t x0 = x + int64_t(k) * 6 * scale;
        for (int64_t row = 0; row < 7; ++row)
            for (int64_t col = 0; col < 5; ++col)
                if (it->second[size_t(row)] & (0x10 >> col))
                    for (int64_t dy = 0; dy < scale; ++dy)
                        for (int64_t dx = 0; dx < scale; ++dx)
                            c.set(x0 + col * scale + dx, y + row * scale + dy, rgb);
    }
}

}  // namespace

torch::Tensor line_chart(const std::vector<double>& values, int64_t width, int64_t height,
                         int64_t smooth, double first_x, double last_x) {
    std::vector<std::pair<size_t, double>> pts;
    for (size_t i = 0; i < values.size(); ++i)
        if (std::isfinite(values[i])) pts.emplace_back(i, values[i]);
    if (pts.size() < 2) throw std::invalid_argument("line_chart: fewer than 2 finite values");
    if (width < 64 || height < 64 || width > 8192 || height > 8192)
        throw std::invalid_argument("line_chart: width and height must be in [64, 8192]");
    double lo = pts[0].second, hi = lo;
    for (const auto& p : pts) lo = std::min(lo, p.second), hi = std::max(hi, p.second);
    if (lo >= 0) lo = 0;
    if (hi <= lo) hi = lo + 1;
    if (first_x == 0 && last_x == 0) first_x = 1, last_x = double(values.size());
    Canvas c(height, width);
    // Labels: the value at the frame's bottom, the three grid lines and the top, on the left;
    // the first and last x under the frame's ends.
    const int64_t s = height >= 240 ? 2 : 1;  // glyph scale
    std::vector<std::string> y_labels;
    int64_t label_w = 0;
    for (int q = 0; q <= 4; ++q) {
        y_labels.push_back(number_text(lo + (hi - lo) * q / 4));
        label_w = std::max(label_w, text_width(y_labels.back(), s));
    }
    const int64_t left = label_w + 12, right = 16, top = 16, bottom = 7 * s + 14;
    const double last = double(values.size() - 1);
    auto X            = [&](double i) {
        return left + int64_t(std::lround(i / last * double(width - left - right - 1)));
    };
    auto Y = [&](double v) {
        return height - 1 - bottom -
               int64_t(std::lround((v - lo) / (hi - lo) * double(height - top - bottom - 1)));
    };
    const uint8_t grid[3] = {225, 225, 225}, frame[3] = {150, 150, 150};
    const uint8_t point[3] = {170, 190, 225}, curve[3] = {20, 60, 160}, ink[3] = {60, 60, 60};
    for (int q = 1; q < 4; ++q)
        c.line(left, Y(lo + (hi - lo) * q / 4), width - right, Y(lo + (hi - lo) * q / 4), grid);
    c.line(left, top, left, height - bottom, frame);
    c.line(left, height - bottom, width - right, height - bottom, frame);
    for (int q = 0; q <= 4; ++q) {
        const auto& t = y_labels[size_t(q)];
        draw_text(c, t, left - 6 - text_width(t, s), Y(lo + (hi - lo) * q / 4) - 7 * s / 2, s, ink);
    }
    const std::string x0 = number_text(first_x), x1 = number_text(last_x);
    draw_text(c, x0, left, height - bottom + 6, s, ink);
    draw_text(c, x1, width - right - text_width(x1, s), height - bottom + 6, s, ink);
    for (const auto& p : pts) c.set(X(double(p.first)), Y(p.second), point);
    const size_t k = size_t(std::max<int64_t>(1, smooth));
    int64_t px = -1, py = -1;
    double sum = 0;
    for (size_t i = 0; i < pts.size(); ++i) {
        sum += pts[i].second;
        if (i >= k) sum -= pts[i - k].second;
        const double avg = sum / double(std::min(i + 1, k));
        const int64_t x = X(double(pts[i].first)), y = Y(avg);
        if (px >= 0) c.line(px, py, x, y, curve);
        px = x, py = y;
    }
    return c.pixels;
}

}  // namespace t2i::io
