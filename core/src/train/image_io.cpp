// PNG grids through libpng. libpng reports errors by longjmp; every libpng call sits in one
// function with its setjmp, and only plain data crosses it, so no C++ object is skipped.
#include "flowlab/image_io.hpp"

#include <png.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "flowlab/errors.hpp"
#include "flowlab/tensor.hpp"

namespace flowlab {

namespace {

struct PngMessage {
    char text[256] = "";
};

void on_png_error(png_structp png, png_const_charp msg) {
    auto* m = static_cast<PngMessage*>(png_get_error_ptr(png));
    if (m) std::snprintf(m->text, sizeof m->text, "%s", msg);
    png_longjmp(png, 1);
}

void on_png_warning(png_structp, png_const_charp) {}

// Returns false with m->text set on a libpng error.
bool png_write_rows(std::FILE* f, std::uint32_t width, std::uint32_t height, int color, png_bytep* rows,
                    PngMessage* m) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, m, on_png_error, on_png_warning);
    if (!png) return false;
    png_infop info = png_create_info_struct(png);
    if (!info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, info ? &info : nullptr);
        return false;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, width, height, 8, color, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    png_write_image(png, rows);
    png_write_end(png, nullptr);
    png_destroy_write_struct(&png, &info);
    return true;
}

struct PngImage {
    bool exact = false;  // in: read_png_levels' mode (no depth reduction, alpha kept for a check)
    int source_depth = 0, source_color = 0;
    bool too_large = false;  // the decoded image would not fit in memory: nothing was read
    std::uint64_t need = 0;  // its bytes
    std::uint32_t width = 0, height = 0;
    int channels = 0;  // after the transforms: 1 or 3 (2 or 4 in exact mode, with alpha)
    std::vector<unsigned char> pixels;
    std::vector<png_bytep> rows;  // lives outside png_read_all's frame, which longjmp leaves
};

bool png_read_all(std::FILE* f, PngImage* img, PngMessage* m) {
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, m, on_png_error, on_png_warning);
    if (!png) return false;
    png_infop info = png_create_info_struct(png);
    if (!info || setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
        return false;
    }
    png_init_io(png, f);
    png_read_info(png, info);
    const int color = png_get_color_type(png, info);
    img->source_color = color;
    img->source_depth = png_get_bit_depth(png, info);
    if (img->exact && img->source_depth == 16) {  // refused by the caller, so not decoded
        png_destroy_read_struct(&png, &info, nullptr);
        return true;
    }
    if (png_get_bit_depth(png, info) == 16) png_set_strip_16(png);
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && png_get_bit_depth(png, info) < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (img->exact) {
        // Transparency becomes an alpha channel, which the caller checks is opaque everywhere.
        if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    } else if (color & PNG_COLOR_MASK_ALPHA) {
        png_set_strip_alpha(png);
    }
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    img->width = png_get_image_width(png, info);
    img->height = png_get_image_height(png, info);
    img->channels = png_get_channels(png, info);
    const std::size_t stride = png_get_rowbytes(png, info);
    // The header's size is the file's claim: a small file may announce gigapixels.
    img->need = static_cast<std::uint64_t>(stride) * img->height;
    const std::uint64_t avail = available_memory_bytes();
    if (avail != 0 && img->need > avail / 2) {
        img->too_large = true;
        png_destroy_read_struct(&png, &info, nullptr);
        return true;
    }
    img->pixels.resize(stride * img->height);
    img->rows.resize(img->height);
    for (std::uint32_t y = 0; y < img->height; ++y) img->rows[y] = img->pixels.data() + y * stride;
    png_read_image(png, img->rows.data());
    png_read_end(png, nullptr);
    png_destroy_read_struct(&png, &info, nullptr);
    return true;
}

// Opens `path`, checks the signature and decodes it; IoError naming the path on any failure.
void read_png_file(const std::string& path, PngImage* img) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw IoError(path + ": cannot open: " + std::strerror(errno));
    unsigned char sig[8] = {};
    const bool is_png = std::fread(sig, 1, 8, f) == 8 && png_sig_cmp(sig, 0, 8) == 0;
    if (!is_png) {
        std::fclose(f);
        throw IoError(path + ": not a PNG file");
    }
    std::rewind(f);
    PngMessage msg;
    const bool ok = png_read_all(f, img, &msg);
    std::fclose(f);
    if (!ok) throw IoError(path + ": corrupt PNG: " + (msg.text[0] ? msg.text : "libpng failed"));
    if (img->too_large)
        throw IoError(path + ": a " + std::to_string(img->width) + " x " + std::to_string(img->height) + " image needs " +
                      std::to_string(img->need >> 20) + " MB decoded, more than half the available memory (" +
                      std::to_string(available_memory_bytes() >> 20) + " MB)");
}

}  // namespace

void write_png_grid(const std::string& path, const Tensor& images, std::int64_t nrow, std::int64_t padding) {
    if (!images.defined() || images.dim() != 4 || (images.size(1) != 1 && images.size(1) != 3) ||
        images.size(0) < 1)
        throw ShapeError("write_png_grid: images " + (images.defined() ? shape_str(images.shape()) : "undefined") +
                         " are not [N, C, H, W] with N >= 1 and C = 1 or 3");
    if (nrow < 1 || padding < 0)
        throw ShapeError("write_png_grid: nrow must be >= 1 and padding >= 0, got " + std::to_string(nrow) + " and " +
                         std::to_string(padding));
    const std::int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
    const std::int64_t cols = std::min(nrow, n), grid_rows = (n + nrow - 1) / nrow;
    const std::int64_t width = cols * (w + padding) + padding, height = grid_rows * (h + padding) + padding;
    if (width > (1 << 20) || height > (1 << 20))
        throw ShapeError("write_png_grid: a " + std::to_string(width) + " x " + std::to_string(height) +
                         " grid is too large");
    std::vector<unsigned char> pix(static_cast<std::size_t>(width * height * c), 0);
    const std::vector<double> v = images.to_vector();
    for (std::int64_t k = 0; k < n; ++k) {
        const std::int64_t y0 = padding + (k / nrow) * (h + padding), x0 = padding + (k % nrow) * (w + padding);
        for (std::int64_t ch = 0; ch < c; ++ch)
            for (std::int64_t y = 0; y < h; ++y)
                for (std::int64_t x = 0; x < w; ++x) {
                    double p = v[static_cast<std::size_t>(((k * c + ch) * h + y) * w + x)];
                    p = std::isnan(p) ? 0.0 : std::clamp(p, 0.0, 1.0);
                    pix[static_cast<std::size_t>(((y0 + y) * width + (x0 + x)) * c + ch)] =
                        static_cast<unsigned char>(std::lround(p * 255.0));
                }
    }
    std::vector<png_bytep> rows(static_cast<std::size_t>(height));
    for (std::int64_t y = 0; y < height; ++y) rows[static_cast<std::size_t>(y)] = pix.data() + y * width * c;
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) throw IoError(path + ": cannot open for writing: " + std::strerror(errno));
    PngMessage msg;
    const bool ok = png_write_rows(f, static_cast<std::uint32_t>(width), static_cast<std::uint32_t>(height),
                                   c == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, rows.data(), &msg);
    const bool closed = std::fclose(f) == 0;
    if (!ok) throw IoError(path + ": cannot write the PNG: " + (msg.text[0] ? msg.text : "libpng failed"));
    if (!closed) throw IoError(path + ": cannot write the PNG: " + std::strerror(errno));
}

Tensor read_png(const std::string& path) {
    PngImage img;
    read_png_file(path, &img);
    if (img.channels == 2) img.channels = 1;  // grey+alpha whose alpha survived: keep grey
    const std::int64_t c = img.channels, h = img.height, w = img.width;
    const std::int64_t stride = h ? static_cast<std::int64_t>(img.pixels.size()) / h : 0;
    const std::int64_t step = stride && w ? stride / w : c;  // bytes per pixel in the buffer
    Tensor t = Tensor::empty({c, h, w}, DType::f32);
    float* p = t.f32();
    for (std::int64_t ch = 0; ch < c; ++ch)
        for (std::int64_t y = 0; y < h; ++y)
            for (std::int64_t x = 0; x < w; ++x)
                p[(ch * h + y) * w + x] = static_cast<float>(img.pixels[static_cast<std::size_t>(y * stride + x * step + ch)]) / 255.0f;
    return t;
}

PngLevels read_png_levels(const std::string& path) {
    PngImage img;
    img.exact = true;
    read_png_file(path, &img);
    if (img.source_depth == 16)
        throw IoError(path + ": a 16-bit PNG; an image dataset holds 8-bit levels: save it with 8 bits per channel "
                      "(the conversion is a choice of rounding that flowlab does not make for you)");
    const std::int64_t stored = img.channels, h = img.height, w = img.width;
    if (stored < 1 || stored > 4) throw IoError(path + ": " + std::to_string(stored) + " channels after decoding; expected 1 to 4");
    const bool alpha = stored == 2 || stored == 4;
    const std::int64_t c = alpha ? stored - 1 : stored;
    const std::size_t stride = h ? img.pixels.size() / static_cast<std::size_t>(h) : 0;
    PngLevels out;
    out.channels = c;
    out.height = h;
    out.width = w;
    out.levels.resize(static_cast<std::size_t>(c * h * w));
    for (std::int64_t y = 0; y < h; ++y) {
        const unsigned char* row = img.pixels.data() + static_cast<std::size_t>(y) * stride;
        for (std::int64_t x = 0; x < w; ++x) {
            const unsigned char* px = row + x * stored;
            if (alpha && px[stored - 1] != 255)
                throw IoError(path + ": pixel (" + std::to_string(x) + ", " + std::to_string(y) + ") is transparent (alpha " +
                              std::to_string(px[stored - 1]) + "); an image dataset takes opaque grey or RGB images: "
                              "composite them onto a background, or drop the alpha channel, first");
            for (std::int64_t ch = 0; ch < c; ++ch) out.levels[static_cast<std::size_t>((ch * h + y) * w + x)] = px[ch];
        }
    }
    return out;
}

}  // namespace flowlab
