// The file parsers behind the density plugin's datasets: gzip'd IDX (fashion_mnist, mnist),
// CIFAR-10 binary batches (cifar10), NumPy .npy tables and uint8 image arrays, and CSV tables. Each reads a path, or parses bytes already in memory (what a fuzz
// target feeds it); `name` is the file name messages start with.
//
// Every size a file announces is checked (overflow-checked arithmetic) against the bytes that
// are really there before anything is allocated or indexed, and every fault is a
// flowlab::IoError "NAME: where: what; hint". Any other exception escaping them is a bug (only
// std::bad_alloc, for a valid file larger than memory, is left to the caller).
//
// Self-contained: data_readers.cpp needs only flowlab/errors.hpp and zlib, so a fuzz target can
// compile it in directly.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace flowlab::density {

// An IDX image file (magic 2051): n images of rows x cols pixel bytes.
struct IdxImages {
    std::int64_t n = 0, rows = 0, cols = 0;
    std::vector<std::uint8_t> pixels;  // n * rows * cols, image after image
};

// Decompressed IDX bytes. Rejects a header whose sizes overflow, a short body and trailing data.
IdxImages parse_idx_images(std::span<const std::uint8_t> bytes, const std::string& name);
// An IDX label file (magic 2049): classes 0..9; exactly `expect` of them unless expect < 0.
std::vector<std::uint8_t> parse_idx_labels(std::span<const std::uint8_t> bytes, const std::string& name,
                                           std::int64_t expect = -1);

// gzip'd IDX files (an uncompressed one reads too). Inflates only as much as the header
// announces (plus one byte to detect trailing data), so a small file cannot expand into
// gigabytes. `hint` follows "no such file" (how to get the file).
IdxImages read_idx_images(const std::string& path, const std::string& hint = "");
std::vector<std::uint8_t> read_idx_labels(const std::string& path, std::int64_t expect = -1,
                                          const std::string& hint = "");

// A CIFAR-10 binary batch (data_batch_1.bin ... test_batch.bin): records of 1 label byte (a
// class 0..9) and 3072 pixel bytes, the R, G and B planes of a 32x32 image, each row-major.
inline constexpr std::int64_t kCifarPixels = 3 * 32 * 32;
inline constexpr std::int64_t kCifarRecord = 1 + kCifarPixels;
struct CifarBatch {
    std::int64_t n = 0;
    std::vector<std::uint8_t> labels;  // n
    std::vector<std::uint8_t> pixels;  // n * 3072: [n, 3, 32, 32], as stored
};

// Rejects an empty file, a size that is not a whole number of records and a label above 9.
CifarBatch parse_cifar_batch(std::span<const std::uint8_t> bytes, const std::string& name);
CifarBatch read_cifar_batch(const std::string& path, const std::string& hint = "");
// The number of records of a batch file from its size alone (no read): the same size checks as
// the parser, so a dataset can size its tensors before reading any file.
std::int64_t cifar_batch_records(const std::string& path, const std::string& hint = "");

// A table of n rows and d columns, row-major.
struct Table {
    std::int64_t n = 0, d = 0;
    std::vector<double> v;
};

// A 1-D (one column) or 2-D NumPy array: <f4, <f8, <i4, <i8, |i1 or |u1, C or Fortran order.
Table parse_npy(std::span<const std::uint8_t> bytes, const std::string& name);
Table read_npy(const std::string& path);

// A uint8 .npy array (|u1 or <u1) of any rank from 1 to 8 with at least one value, in C order
// (a Fortran-order file is transposed on reading): the images of `npy_images`.
struct U8Array {
    std::vector<std::int64_t> shape;
    std::vector<std::uint8_t> v;
};
U8Array parse_npy_u8(std::span<const std::uint8_t> bytes, const std::string& name);
U8Array read_npy_u8(const std::string& path);

// Numeric CSV: one row a line, `delim` between cells; blank lines are skipped, a UTF-8
// byte-order mark is skipped. header: "yes" (the first row is a header), "no", or "auto" (a
// header if not numeric).
Table parse_csv(std::string_view text, const std::string& name, char delim = ',', std::string_view header = "auto");
Table read_csv(const std::string& path, char delim = ',', std::string_view header = "auto");

}  // namespace flowlab::density
