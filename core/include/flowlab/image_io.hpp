// PNG output for image models: sample grids written into a run directory; readers for tests and
// tools (values in [0, 1]) and for datasets (the stored 8-bit levels, exactly).
//
//   Tensor x = exp.flow->sample(64, rng);            // [64, 1, 28, 28], pixel values in [0, 1]
//   write_png_grid(run_dir + "/samples.png", x, 8);  // an 8 x 8 grid, 2-pixel black borders
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flowlab/tensor.hpp"

namespace flowlab {

// Writes images [N, C, H, W] (C = 1 grey or 3 RGB; values in [0, 1], clamped, NaN as 0) as one
// 8-bit PNG, `nrow` images per row with `padding` black pixels between and around them.
// Throws ShapeError on a bad shape and IoError naming the path when the file cannot be written.
void write_png_grid(const std::string& path, const Tensor& images, std::int64_t nrow = 8,
                    std::int64_t padding = 2);

// Reads an 8-bit grey, grey+alpha, RGB or RGBA PNG (alpha dropped; palettes and 16-bit depths
// are converted) as f32 [C, H, W] with C = 1 or 3 and values v/255. Throws IoError.
Tensor read_png(const std::string& path);

// A PNG's pixel levels as stored: [C, H, W] bytes, C = 1 (grey) or 3 (RGB).
struct PngLevels {
    std::int64_t channels = 0, height = 0, width = 0;
    std::vector<std::uint8_t> levels;
};

// Reads a PNG for a dataset of 8-bit images, changing no level: grey and RGB at 8 bits as
// stored, grey at 1, 2 or 4 bits scaled to 0..255 (as libpng expands them), a palette expanded
// to RGB, an alpha channel (or tRNS transparency) dropped only when every pixel is opaque. A
// 16-bit image, a transparent pixel, or an image larger than the available memory is an IoError
// naming the file and saying how to convert it.
PngLevels read_png_levels(const std::string& path);

}  // namespace flowlab
