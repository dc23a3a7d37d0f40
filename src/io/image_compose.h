// Implements: pictures made of other pictures and numbers, for people to look at (t2i
// image-grid, t2i plot-loss, scripts/demo.sh): a grid of images, and a line chart of a series
// (e.g. the training loss per step) with its smoothed curve. Images are uint8 [H, W, 3].
#pragma once

#include <torch/torch.h>

#include <vector>

namespace t2i::io {

// The images in rows of `columns`, `gap` white pixels between and around them; images of
// different sizes are centered in cells of the largest size. Throws for no images or a tensor
// that is not uint8 [H, W, 3].
torch::Tensor image_grid(const std::vector<torch::Tensor>& images, int64_t columns,
                         int64_t gap = 4);

// A width x height chart of `values` over their index: light grey points for every value, a dark
// blue line for their moving average over `smooth` values, a grey frame, and horizontal grid
// lines at the quarters of the value range (the range from 0 to the largest value when every
// value is >= 0), each quarter labelled with its value on the left; the x axis is labelled
// `first_x` and `last_x` at its ends (both 0: 1 and values.size()). Non-finite values are
// skipped. Throws for fewer than 2 finite values.
torch::Tensor line_chart(const std::vector<double>& values, int64_t width = 640,
                         int64_t height = 360, int64_t smooth = 10, double first_x = 0,
                         double last_x = 0);

}  // namespace t2i::io
