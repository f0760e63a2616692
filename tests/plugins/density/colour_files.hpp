// Small image data files written by the tests themselves (nothing is downloaded): CIFAR-10
// binary batches, PNG files of any colour type and bit depth (written byte by byte with zlib,
// so a test can make the palette, alpha and 16-bit files flowlab's own writer never produces),
// and uint8 .npy arrays. Header-only; for the colour data tests and the end-to-end colour run.
#pragma once

#include <catch2/catch.hpp>

#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace flowlab::test::colour {

inline void write_bytes(const std::string& path, const std::vector<std::uint8_t>& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(f.good());
}

// CIFAR-10 record (file f, record r): label (f + r) mod 10, pixel (c, y, x) = cifar_pixel(...).
inline std::uint8_t cifar_pixel(int f, int r, int c, int y, int x) {
    return static_cast<std::uint8_t>((f * 41 + r * 13 + c * 80 + y * 5 + x) % 256);
}
inline std::uint8_t cifar_label(int f, int r) { return static_cast<std::uint8_t>((f + r) % 10); }

// One batch file: records 0..n-1 of file f (f = 1..5 for data_batch_f.bin, 6 for test_batch.bin).
inline std::vector<std::uint8_t> cifar_batch(int f, int n) {
    std::vector<std::uint8_t> v;
    for (int r = 0; r < n; ++r) {
        v.push_back(cifar_label(f, r));
        for (int c = 0; c < 3; ++c)
            for (int y = 0; y < 32; ++y)
                for (int x = 0; x < 32; ++x) v.push_back(cifar_pixel(f, r, c, y, x));
    }
    return v;
}

inline std::string cifar_file(int f) { return f == 6 ? "test_batch.bin" : "data_batch_" + std::to_string(f) + ".bin"; }

// A complete CIFAR-10 folder: `train_each` records in each of the five training batches and
// `test` in the test batch.
inline void write_cifar_folder(const std::filesystem::path& dir, int train_each, int test) {
    std::filesystem::create_directories(dir);
    for (int f = 1; f <= 6; ++f) write_bytes((dir / cifar_file(f)).string(), cifar_batch(f, f == 6 ? test : train_each));
}

// ------------------------------------------------------------------------------------ PNG

inline void put_be32(std::vector<std::uint8_t>& v, std::uint32_t x) {
    for (int s = 24; s >= 0; s -= 8) v.push_back(static_cast<std::uint8_t>(x >> s));
}

inline void png_chunk(std::vector<std::uint8_t>& out, const char* type, const std::vector<std::uint8_t>& data) {
    put_be32(out, static_cast<std::uint32_t>(data.size()));
    std::vector<std::uint8_t> body(type, type + 4);
    body.insert(body.end(), data.begin(), data.end());
    out.insert(out.end(), body.begin(), body.end());
    put_be32(out, static_cast<std::uint32_t>(crc32(0, body.data(), static_cast<uInt>(body.size()))));
}

// PNG colour types.
enum : std::uint8_t { kGrey = 0, kRgb = 2, kPalette = 3, kGreyAlpha = 4, kRgba = 6 };

struct PngSpec {
    std::uint32_t width = 0, height = 0;
    std::uint8_t depth = 8, color = kGrey;
    std::vector<std::uint8_t> rows;     // height rows of packed samples, without filter bytes
    std::vector<std::uint8_t> palette;  // PLTE: r, g, b per entry
    std::vector<std::uint8_t> trns;     // tRNS, when non-empty
};

inline void write_png(const std::string& path, const PngSpec& s) {
    std::vector<std::uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    std::vector<std::uint8_t> ihdr;
    put_be32(ihdr, s.width);
    put_be32(ihdr, s.height);
    ihdr.insert(ihdr.end(), {s.depth, s.color, 0, 0, 0});
    png_chunk(out, "IHDR", ihdr);
    if (!s.palette.empty()) png_chunk(out, "PLTE", s.palette);
    if (!s.trns.empty()) png_chunk(out, "tRNS", s.trns);
    const std::size_t row_bytes = s.rows.size() / s.height;
    std::vector<std::uint8_t> raw;
    for (std::uint32_t y = 0; y < s.height; ++y) {
        raw.push_back(0);  // filter: none
        raw.insert(raw.end(), s.rows.begin() + static_cast<std::ptrdiff_t>(y * row_bytes),
                   s.rows.begin() + static_cast<std::ptrdiff_t>((y + 1) * row_bytes));
    }
    uLongf len = compressBound(static_cast<uLong>(raw.size()));
    std::vector<std::uint8_t> z(len);
    REQUIRE(compress2(z.data(), &len, raw.data(), static_cast<uLong>(raw.size()), 6) == Z_OK);
    z.resize(len);
    png_chunk(out, "IDAT", z);
    png_chunk(out, "IEND", {});
    write_bytes(path, out);
}

// A PNG whose header announces width x height 8-bit RGB pixels and whose data hold one row of
// zeros: what a hostile or broken file looks like to a reader that trusts its header.
inline void write_png_claiming(const std::string& path, std::uint32_t width, std::uint32_t height) {
    std::vector<std::uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    std::vector<std::uint8_t> ihdr;
    put_be32(ihdr, width);
    put_be32(ihdr, height);
    ihdr.insert(ihdr.end(), {8, kRgb, 0, 0, 0});
    png_chunk(out, "IHDR", ihdr);
    std::vector<std::uint8_t> raw(1 + 3 * static_cast<std::size_t>(width), 0);
    uLongf len = compressBound(static_cast<uLong>(raw.size()));
    std::vector<std::uint8_t> z(len);
    REQUIRE(compress2(z.data(), &len, raw.data(), static_cast<uLong>(raw.size()), 6) == Z_OK);
    z.resize(len);
    png_chunk(out, "IDAT", z);
    png_chunk(out, "IEND", {});
    write_bytes(path, out);
}

// An 8-bit grey (c = 1) or RGB (c = 3) PNG from levels [C, H, W].
inline void write_png_levels(const std::string& path, int c, int h, int w, const std::vector<std::uint8_t>& chw) {
    PngSpec s;
    s.width = static_cast<std::uint32_t>(w);
    s.height = static_cast<std::uint32_t>(h);
    s.color = c == 1 ? kGrey : kRgb;
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            for (int ch = 0; ch < c; ++ch) s.rows.push_back(chw[static_cast<std::size_t>((ch * h + y) * w + x)]);
    write_png(path, s);
}

// ------------------------------------------------------------------------------------ .npy

inline void write_npy_u8(const std::string& path, const std::vector<std::int64_t>& shape, const std::vector<std::uint8_t>& v,
                         bool fortran = false, const std::string& descr = "|u1") {
    std::string dims;
    for (std::size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
    if (shape.size() == 1) dims += ",";
    std::string header = "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") + ", 'shape': (" +
                         dims + "), }";
    while ((10 + header.size() + 1) % 64 != 0) header += ' ';
    header += '\n';
    std::vector<std::uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    out.push_back(static_cast<std::uint8_t>(header.size() & 0xff));
    out.push_back(static_cast<std::uint8_t>(header.size() >> 8));
    out.insert(out.end(), header.begin(), header.end());
    out.insert(out.end(), v.begin(), v.end());
    write_bytes(path, out);
}

}  // namespace flowlab::test::colour
