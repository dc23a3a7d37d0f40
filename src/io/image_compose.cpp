// Implements: io/image_compose.h.
#include "io/image_compose.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

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

}  // namespace

torch::Tensor line_chart(const std::vector<double>& values, int64_t width, int64_t height,
                         int64_t smooth) {
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
    Canvas c(height, width);
    const int64_t m   = 16;  // margin
    const double last = double(values.size() - 1);
    auto X            = [&](double i) {
        return m + int64_t(std::lround(i / last * double(width - 2 * m - 1)));
    };
    auto Y = [&](double v) {
        return height - 1 - m -
               int64_t(std::lround((v - lo) / (hi - lo) * double(height - 2 * m - 1)));
    };
    const uint8_t grid[3] = {225, 225, 225}, frame[3] = {150, 150, 150};
    const uint8_t point[3] = {170, 190, 225}, curve[3] = {20, 60, 160};
    for (int q = 1; q < 4; ++q)
        c.line(m, Y(lo + (hi - lo) * q / 4), width - m, Y(lo + (hi - lo) * q / 4), grid);
    c.line(m, m, m, height - m, frame);
    c.line(m, height - m, width - m, height - m, frame);
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
