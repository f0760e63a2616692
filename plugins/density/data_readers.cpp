// IDX, CIFAR-10, .npy and CSV parsers (see data_readers.hpp). Sizes from a file go through checked
// arithmetic and are compared with the bytes present before any allocation or index.
#include "data_readers.hpp"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <utility>

#include <flowlab/errors.hpp>

namespace flowlab::density {
namespace {

namespace fs = std::filesystem;

// Reads up to n bytes into dst; fewer only at the end of the data. Throws IoError.
using ReadFn = std::function<std::size_t(std::uint8_t* dst, std::size_t n)>;

ReadFn span_reader(std::span<const std::uint8_t> bytes) {
    return [bytes, pos = std::size_t{0}](std::uint8_t* dst, std::size_t n) mutable {
        const std::size_t k = std::min(n, bytes.size() - pos);
        if (k) std::memcpy(dst, bytes.data() + pos, k);
        pos += k;
        return k;
    };
}

// A file `what` (e.g. "a gzip'd IDX file") must exist and not be a directory.
void check_data_file(const std::string& path, const std::string& what, const std::string& hint) {
    std::error_code ec;
    const auto st = fs::status(path, ec);
    if (!fs::exists(st)) throw IoError(path + ": no such file; " + (hint.empty() ? "check the dataset's \"path\"" : hint));
    if (fs::is_directory(st)) throw IoError(path + ": is a directory; expected " + what);
}

std::vector<std::uint8_t> read_whole_file(const std::string& path, const std::string& what) {
    check_data_file(path, what, "");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError(path + ": cannot open (" + std::strerror(errno) + ")");
    std::vector<std::uint8_t> bytes, buf(std::size_t{1} << 20);
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (!ec) bytes.reserve(static_cast<std::size_t>(size));  // exact for a regular file: no regrowth
    while (in) {
        in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
        bytes.insert(bytes.end(), buf.begin(), buf.begin() + in.gcount());
    }
    if (in.bad()) throw IoError(path + ": read error (" + std::strerror(errno) + ")");
    return bytes;
}

// A gzip file read through zlib, closed on every path out.
class GzReader {
public:
    explicit GzReader(const std::string& path) : path_(path), f_(gzopen(path.c_str(), "rb")) {
        if (!f_) throw IoError(path + ": cannot open (" + std::strerror(errno) + ")");
    }
    ~GzReader() {
        if (f_) gzclose(f_);
    }
    GzReader(const GzReader&) = delete;
    GzReader& operator=(const GzReader&) = delete;

    std::size_t read(std::uint8_t* dst, std::size_t n) {
        std::size_t got = 0;
        while (got < n) {
            const unsigned want = static_cast<unsigned>(std::min<std::size_t>(n - got, std::size_t{1} << 30));
            const int k = gzread(f_, dst + got, want);
            if (k < 0) fail();
            if (k == 0) {
                int code = Z_OK;
                gzerror(f_, &code);
                if (code != Z_OK) fail();
                break;
            }
            got += static_cast<std::size_t>(k);
        }
        return got;
    }
    // The end of the stream is verified here (a stream cut short reports Z_BUF_ERROR).
    void close() {
        const int rc = gzclose(f_);
        f_ = nullptr;
        if (rc != Z_OK)
            throw IoError(path_ + ": corrupt or truncated gzip data (" +
                          (rc == Z_BUF_ERROR ? std::string("unexpected end of file") : "zlib error " + std::to_string(rc)) +
                          ")");
    }

private:
    [[noreturn]] void fail() {
        int code = Z_OK;
        const std::string msg = gzerror(f_, &code);
        throw IoError(path_ + ": corrupt or truncated gzip data (" + msg + ")");
    }
    std::string path_;
    gzFile f_;
};

std::uint32_t be32(const std::uint8_t* p) {
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
}

// Exactly `need` bytes of body (the buffer grows as data arrives, so a header announcing more
// than the file holds costs no memory), then nothing more.
std::vector<std::uint8_t> read_idx_body(const ReadFn& read, const std::string& name, std::uint64_t need,
                                        const std::string& announced) {
    std::vector<std::uint8_t> out;
    constexpr std::size_t kChunk = std::size_t{1} << 22;
    while (out.size() < need) {
        const std::size_t old = out.size();
        const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(need - old, kChunk));
        out.resize(old + want);
        const std::size_t got = read(out.data() + old, want);
        out.resize(old + got);
        if (got < want)
            throw IoError(name + ": truncated IDX file: the header announces " + announced + " (" + std::to_string(need) +
                          " bytes), the file holds " + std::to_string(out.size()));
    }
    std::uint8_t extra = 0;
    if (read(&extra, 1) > 0)
        throw IoError(name + ": trailing data after the " + announced + " the header announces (" + std::to_string(need) +
                      " bytes); the file is corrupt or its header is wrong");
    return out;
}

IdxImages idx_images_from(const ReadFn& read, const std::string& name) {
    std::uint8_t h[16];
    const std::size_t got = read(h, sizeof h);
    if (got < sizeof h)
        throw IoError(name + ": truncated IDX file (" + std::to_string(got) + " bytes, no 16-byte header)");
    const std::uint32_t magic = be32(h);
    if (magic != 2051)
        throw IoError(name + ": header: not an IDX image file (magic " + std::to_string(magic) + ", expected 2051" +
                      (magic == 2049 ? "; this is a label file" : "") + ")");
    IdxImages r;
    r.n = be32(h + 4);
    r.rows = be32(h + 8);
    r.cols = be32(h + 12);
    const std::string announced = std::to_string(r.n) + " images of " + std::to_string(r.rows) + "x" + std::to_string(r.cols);
    if (r.n == 0 || r.rows == 0 || r.cols == 0)
        throw IoError(name + ": header: " + announced + "; an image file needs at least one image of at least 1x1");
    std::int64_t px = 0, need = 0;
    if (__builtin_mul_overflow(r.rows, r.cols, &px) || __builtin_mul_overflow(r.n, px, &need))
        throw IoError(name + ": header: " + announced + " overflow 64-bit sizes; the header is corrupt");
    r.pixels = read_idx_body(read, name, static_cast<std::uint64_t>(need), announced);
    return r;
}

std::vector<std::uint8_t> idx_labels_from(const ReadFn& read, const std::string& name, std::int64_t expect) {
    std::uint8_t h[8];
    const std::size_t got = read(h, sizeof h);
    if (got < sizeof h) throw IoError(name + ": truncated IDX file (" + std::to_string(got) + " bytes, no 8-byte header)");
    const std::uint32_t magic = be32(h);
    if (magic != 2049)
        throw IoError(name + ": header: not an IDX label file (magic " + std::to_string(magic) + ", expected 2049" +
                      (magic == 2051 ? "; this is an image file" : "") + ")");
    const std::int64_t n = be32(h + 4);
    if (expect >= 0 && n != expect)
        throw IoError(name + ": header: " + std::to_string(n) + " labels for " + std::to_string(expect) + " images");
    std::vector<std::uint8_t> labels = read_idx_body(read, name, static_cast<std::uint64_t>(n), std::to_string(n) + " labels");
    for (std::size_t i = 0; i < labels.size(); ++i)
        if (labels[i] > 9)
            throw IoError(name + ": label " + std::to_string(labels[i]) + " at index " + std::to_string(i) +
                          " is not a class 0..9");
    return labels;
}

// ------------------------------------------------------------------------------------ .npy

// The header is a Python dict literal: {'descr': '<f4', 'fortran_order': False, 'shape': (50, 3), }
struct NpyHeader {
    std::string descr;
    bool fortran = false;
    std::vector<std::int64_t> shape;
};

class NpyHeaderParser {
public:
    NpyHeaderParser(std::string_view text, const std::string& name) : s_(text), name_(name) {}

    NpyHeader parse() {
        NpyHeader h;
        bool has_descr = false, has_order = false, has_shape = false;
        ws();
        expect('{');
        for (;;) {
            ws();
            if (peek() == '}') break;
            const std::string key = string_literal("a key");
            ws();
            expect(':');
            ws();
            if (key == "descr") {
                if (peek() != '\'' && peek() != '"')
                    throw bad("'descr' is not a plain dtype string (structured arrays are not read)");
                h.descr = string_literal("'descr'");
                has_descr = true;
            } else if (key == "fortran_order") {
                h.fortran = boolean();
                has_order = true;
            } else if (key == "shape") {
                h.shape = tuple();
                has_shape = true;
            } else {
                throw bad("unknown key '" + key + "' (a .npy header holds 'descr', 'fortran_order' and 'shape')");
            }
            ws();
            if (peek() == ',') ++pos_;
            else if (peek() != '}') throw bad("expected ',' or '}' at offset " + std::to_string(pos_));
        }
        ++pos_;
        ws();
        if (pos_ != s_.size()) throw bad("unexpected text after the closing '}'");
        if (!has_descr || !has_order || !has_shape)
            throw bad(std::string("missing '") + (!has_descr ? "descr" : !has_order ? "fortran_order" : "shape") + "'");
        return h;
    }

private:
    IoError bad(const std::string& what) const { return IoError(name_ + ": header: " + what); }
    char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
    void ws() {
        while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
    }
    void expect(char c) {
        if (peek() != c) throw bad(std::string("expected '") + c + "' at offset " + std::to_string(pos_));
        ++pos_;
    }
    std::string string_literal(const char* what) {
        const char q = peek();
        if (q != '\'' && q != '"') throw bad(std::string("expected ") + what + " in quotes at offset " + std::to_string(pos_));
        const std::size_t end = s_.find(q, pos_ + 1);
        if (end == std::string_view::npos) throw bad(std::string("unterminated string for ") + what);
        std::string r(s_.substr(pos_ + 1, end - pos_ - 1));
        pos_ = end + 1;
        return r;
    }
    bool boolean() {
        for (const auto& [word, value] : {std::pair{std::string_view("True"), true}, std::pair{std::string_view("False"), false}})
            if (s_.substr(pos_, word.size()) == word) {
                pos_ += word.size();
                return value;
            }
        throw bad("'fortran_order' is neither True nor False");
    }
    std::vector<std::int64_t> tuple() {
        expect('(');
        std::vector<std::int64_t> dims;
        for (;;) {
            ws();
            if (peek() == ')') break;
            if (peek() == '-') {
                const std::size_t end = s_.find_first_of(",)", pos_);
                throw bad("negative dimension " + std::string(s_.substr(pos_, std::min<std::size_t>(end, pos_ + 24) - pos_)) +
                          " in 'shape'");
            }
            if (peek() < '0' || peek() > '9') throw bad("expected a dimension in 'shape' at offset " + std::to_string(pos_));
            std::int64_t v = 0;
            while (peek() >= '0' && peek() <= '9') {
                if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, peek() - '0', &v))
                    throw bad("a dimension in 'shape' overflows 64 bits");
                ++pos_;
            }
            if (peek() == 'L') ++pos_;  // Python 2 long
            dims.push_back(v);
            ws();
            if (peek() == ',') ++pos_;
            else if (peek() != ')') throw bad("expected ',' or ')' in 'shape' at offset " + std::to_string(pos_));
        }
        ++pos_;
        return dims;
    }

    std::string_view s_;
    const std::string& name_;
    std::size_t pos_ = 0;
};

std::string shape_text(const std::vector<std::int64_t>& dims) {
    std::string r = "(";
    for (std::size_t i = 0; i < dims.size(); ++i) r += (i ? ", " : "") + std::to_string(dims[i]);
    return r + (dims.size() == 1 ? ",)" : ")");
}

using Decode = double (*)(const std::uint8_t*);
template <class T>
double decode(const std::uint8_t* p) {
    T x;
    std::memcpy(&x, p, sizeof x);
    return static_cast<double>(x);
}

struct NpyDtype {
    const char* descr;
    std::size_t size;
    Decode decode;
};
constexpr NpyDtype kNpyDtypes[] = {
    {"<f4", 4, decode<float>},        {"<f8", 8, decode<double>},       {"<i4", 4, decode<std::int32_t>},
    {"<i8", 8, decode<std::int64_t>}, {"|i1", 1, decode<std::int8_t>},  {"|u1", 1, decode<std::uint8_t>},
    {"<i1", 1, decode<std::int8_t>},  {"<u1", 1, decode<std::uint8_t>},  // byte types with a '<' order
};
constexpr const char* kNpySupported = "<f4, <f8, <i4, <i8, |i1, |u1";

std::uint64_t le(const std::uint8_t* p, int n) {
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= std::uint64_t{p[i]} << (8 * i);
    return v;
}

// Printable form of a CSV cell for a message: control bytes escaped, long cells cut.
std::string printable(std::string_view cell) {
    std::string r;
    for (std::size_t i = 0; i < cell.size() && i < 40; ++i) {
        const auto c = static_cast<unsigned char>(cell[i]);
        if (c == 0) r += "\\0";
        else if (c < 0x20 || c == 0x7f) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            r += buf;
        } else r += static_cast<char>(c);
    }
    return cell.size() > 40 ? r + "..." : r;
}

}  // namespace

IdxImages parse_idx_images(std::span<const std::uint8_t> bytes, const std::string& name) {
    return idx_images_from(span_reader(bytes), name);
}

std::vector<std::uint8_t> parse_idx_labels(std::span<const std::uint8_t> bytes, const std::string& name,
                                           std::int64_t expect) {
    return idx_labels_from(span_reader(bytes), name, expect);
}

IdxImages read_idx_images(const std::string& path, const std::string& hint) {
    check_data_file(path, "a gzip'd IDX image file", hint);
    GzReader gz(path);
    IdxImages r = idx_images_from([&](std::uint8_t* dst, std::size_t n) { return gz.read(dst, n); }, path);
    gz.close();
    return r;
}

std::vector<std::uint8_t> read_idx_labels(const std::string& path, std::int64_t expect, const std::string& hint) {
    check_data_file(path, "a gzip'd IDX label file", hint);
    GzReader gz(path);
    std::vector<std::uint8_t> r = idx_labels_from([&](std::uint8_t* dst, std::size_t n) { return gz.read(dst, n); }, path, expect);
    gz.close();
    return r;
}

namespace {

// The size checks of a CIFAR-10 batch, shared by the parser and the stat-only count.
std::int64_t cifar_records_of(std::uint64_t size, const std::string& name) {
    if (size == 0) throw IoError(name + ": empty file; a CIFAR-10 batch holds records of 3073 bytes");
    if (size % static_cast<std::uint64_t>(kCifarRecord) != 0)
        throw IoError(name + ": " + std::to_string(size) + " bytes is not a whole number of 3073-byte records (1 label byte + "
                      "3072 pixel bytes): " + std::to_string(size / kCifarRecord) + " records and " +
                      std::to_string(size % kCifarRecord) + " bytes more; the file is truncated, or not a batch of the "
                      "binary version of CIFAR-10 (CIFAR-100's records have 2 label bytes; the python version is pickled)");
    return static_cast<std::int64_t>(size / kCifarRecord);
}

}  // namespace

CifarBatch parse_cifar_batch(std::span<const std::uint8_t> bytes, const std::string& name) {
    CifarBatch b;
    b.n = cifar_records_of(bytes.size(), name);
    b.labels.resize(static_cast<std::size_t>(b.n));
    b.pixels.resize(static_cast<std::size_t>(b.n * kCifarPixels));
    for (std::int64_t i = 0; i < b.n; ++i) {
        const std::uint8_t* rec = bytes.data() + i * kCifarRecord;
        if (rec[0] > 9)
            throw IoError(name + ": record " + std::to_string(i) + " (byte " + std::to_string(i * kCifarRecord) + "): label " +
                          std::to_string(rec[0]) + " is not a class 0..9; the file is corrupt or not a CIFAR-10 batch");
        b.labels[static_cast<std::size_t>(i)] = rec[0];
        std::memcpy(b.pixels.data() + i * kCifarPixels, rec + 1, static_cast<std::size_t>(kCifarPixels));
    }
    return b;
}

CifarBatch read_cifar_batch(const std::string& path, const std::string& hint) {
    check_data_file(path, "a CIFAR-10 binary batch file", hint);
    return parse_cifar_batch(read_whole_file(path, "a CIFAR-10 binary batch file"), path);
}

std::int64_t cifar_batch_records(const std::string& path, const std::string& hint) {
    check_data_file(path, "a CIFAR-10 binary batch file", hint);
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (ec) throw IoError(path + ": cannot read its size (" + ec.message() + ")");
    return cifar_records_of(size, path);
}

namespace {

// A .npy file's header and where its values start (shared by the table and the image reader).
struct NpyFile {
    NpyHeader h;
    const NpyDtype* dt = nullptr;
    const std::uint8_t* data = nullptr;
    std::size_t present = 0;  // bytes after the header
};

NpyFile npy_open(std::span<const std::uint8_t> bytes, const std::string& name) {
    const std::uint8_t* b = bytes.data();
    const std::size_t size = bytes.size();
    if (size < 10 || std::memcmp(b, "\x93NUMPY", 6) != 0)
        throw IoError(name + ": not a .npy file (no \\x93NUMPY magic); write it with numpy.save");
    const int major = b[6], minor = b[7];
    std::size_t off = 0;
    std::uint64_t hlen = 0;
    if (major == 1) {
        hlen = le(b + 8, 2);
        off = 10;
    } else if (major == 2 || major == 3) {
        if (size < 12) throw IoError(name + ": truncated .npy file (" + std::to_string(size) + " bytes, no header)");
        hlen = le(b + 8, 4);
        off = 12;
    } else {
        throw IoError(name + ": header: format version " + std::to_string(major) + "." + std::to_string(minor) +
                      "; supported: 1.0, 2.0, 3.0");
    }
    if (hlen > size - off)
        throw IoError(name + ": truncated .npy file: the header announces " + std::to_string(hlen) + " bytes of header, " +
                      std::to_string(size - off) + " follow");
    NpyFile f;
    f.h = NpyHeaderParser(std::string_view(reinterpret_cast<const char*>(b + off), static_cast<std::size_t>(hlen)), name)
              .parse();
    for (const auto& d : kNpyDtypes)
        if (f.h.descr == d.descr) f.dt = &d;
    if (!f.dt)
        throw IoError(name + ": header: unknown dtype '" + printable(f.h.descr) + "'; supported: " + kNpySupported +
                      (!f.h.descr.empty() && f.h.descr[0] == '>' ? "; save big-endian data as little-endian, "
                                                                   "arr.astype(arr.dtype.newbyteorder('<'))"
                                                                 : ""));
    const std::size_t data = off + static_cast<std::size_t>(hlen);
    f.data = b + data;
    f.present = size - data;
    return f;
}

// The number of values the shape announces, checked for overflow and against the bytes present
// (neither fewer nor more).
std::int64_t npy_count(const NpyFile& f, const std::string& name) {
    std::int64_t count = 1, nbytes = 0;
    for (std::int64_t dim : f.h.shape)
        if (__builtin_mul_overflow(count, dim, &count))
            throw IoError(name + ": header: shape " + shape_text(f.h.shape) + " overflows 64-bit sizes; the header is corrupt");
    if (__builtin_mul_overflow(count, static_cast<std::int64_t>(f.dt->size), &nbytes))
        throw IoError(name + ": header: shape " + shape_text(f.h.shape) + " overflows 64-bit sizes; the header is corrupt");
    if (f.present < static_cast<std::uint64_t>(nbytes))
        throw IoError(name + ": truncated .npy file: the header announces " + std::to_string(count) + " values of " +
                      std::to_string(f.dt->size) + " bytes (" + std::to_string(nbytes) + " bytes), " +
                      std::to_string(f.present) + " bytes present");
    if (f.present > static_cast<std::uint64_t>(nbytes))
        throw IoError(name + ": trailing data: " + std::to_string(f.present - static_cast<std::size_t>(nbytes)) +
                      " bytes after the " + std::to_string(count) + " values the header announces; the file is corrupt");
    return count;
}

}  // namespace

Table parse_npy(std::span<const std::uint8_t> bytes, const std::string& name) {
    const NpyFile f = npy_open(bytes, name);
    const NpyHeader& h = f.h;
    if (h.shape.empty() || h.shape.size() > 2)
        throw IoError(name + ": header: shape " + shape_text(h.shape) + " is " + std::to_string(h.shape.size()) +
                      "-D; expected a 1-D or 2-D array of rows");
    Table t;
    t.n = h.shape[0];
    t.d = h.shape.size() == 2 ? h.shape[1] : 1;
    if (t.n == 0 || t.d == 0) throw IoError(name + ": header: shape " + shape_text(h.shape) + " holds no values");
    const std::int64_t count = npy_count(f, name);
    t.v.resize(static_cast<std::size_t>(count));
    const std::uint8_t* p = f.data;
    const NpyDtype* dt = f.dt;
    const auto n = static_cast<std::size_t>(t.n), d = static_cast<std::size_t>(t.d);
    for (std::size_t i = 0; i < static_cast<std::size_t>(count); ++i)
        // Fortran order stores column by column.
        t.v[h.fortran ? (i % n) * d + i / n : i] = dt->decode(p + i * dt->size);
    return t;
}

U8Array parse_npy_u8(std::span<const std::uint8_t> bytes, const std::string& name) {
    const NpyFile f = npy_open(bytes, name);
    const NpyHeader& h = f.h;
    if (h.descr != "|u1" && h.descr != "<u1")
        throw IoError(name + ": header: dtype '" + h.descr + "'; image arrays must be uint8 (|u1) pixel levels 0..255 "
                      "(numpy: arr.astype(numpy.uint8) once the values are integers in 0..255)");
    if (h.shape.empty() || h.shape.size() > 8)
        throw IoError(name + ": header: shape " + shape_text(h.shape) + " is " + std::to_string(h.shape.size()) +
                      "-D; expected an array of images");
    for (std::int64_t dim : h.shape)
        if (dim == 0) throw IoError(name + ": header: shape " + shape_text(h.shape) + " holds no values");
    const std::int64_t count = npy_count(f, name);
    U8Array a;
    a.shape = h.shape;
    a.v.resize(static_cast<std::size_t>(count));
    if (!h.fortran || h.shape.size() == 1) {
        std::memcpy(a.v.data(), f.data, static_cast<std::size_t>(count));
        return a;
    }
    // Fortran order: the first index varies fastest. Walk the C order with a multi-index and
    // keep the Fortran offset of the same element alongside.
    const std::size_t rank = h.shape.size();
    std::vector<std::int64_t> fstride(rank, 1), idx(rank, 0);
    for (std::size_t k = 1; k < rank; ++k) fstride[k] = fstride[k - 1] * h.shape[k - 1];
    std::int64_t off = 0;
    for (std::int64_t c = 0; c < count; ++c) {
        a.v[static_cast<std::size_t>(c)] = f.data[off];
        for (std::size_t k = rank; k-- > 0;) {
            off += fstride[k];
            if (++idx[k] < h.shape[k]) break;
            off -= fstride[k] * h.shape[k];
            idx[k] = 0;
        }
    }
    return a;
}

Table read_npy(const std::string& path) { return parse_npy(read_whole_file(path, "a .npy file"), path); }

U8Array read_npy_u8(const std::string& path) { return parse_npy_u8(read_whole_file(path, "a .npy file"), path); }

Table parse_csv(std::string_view text, const std::string& name, char delim, std::string_view header) {
    // Editors on Windows start UTF-8 files with a byte-order mark; it is not part of the first cell.
    if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);
    if (text.starts_with("\xFF\xFE") || text.starts_with("\xFE\xFF"))
        throw IoError(name + ": UTF-16 text; save the CSV file as UTF-8");
    Table t;
    std::int64_t line_no = 0;
    bool first = true;
    std::vector<double> row;
    std::string cell_z;  // the cell NUL-terminated, for strtod
    while (!text.empty()) {
        const std::size_t eol = text.find('\n');
        std::string_view line = text.substr(0, eol);
        text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
        ++line_no;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
        const std::string where = name + ":" + std::to_string(line_no) + ": ";
        row.clear();
        std::int64_t bad_column = 0;
        std::string_view bad_cell;
        for (std::int64_t column = 1; !line.empty(); ++column) {
            const std::size_t cut = line.find(delim);
            const std::string_view cell = line.substr(0, cut);
            line.remove_prefix(cut == std::string_view::npos ? line.size() : cut + 1);
            // strtod stops at a NUL: "1\0junk" would read as 1.
            if (cell.find('\0') != std::string_view::npos)
                throw IoError(where + "column " + std::to_string(column) + ": an embedded NUL byte in '" + printable(cell) +
                              "'; a CSV file is text (is this a binary or UTF-16 file?)");
            cell_z.assign(cell);
            char* end = nullptr;
            const double v = std::strtod(cell_z.c_str(), &end);
            while (*end == ' ' || *end == '\t') ++end;
            if ((end == cell_z.c_str() || *end != '\0') && bad_column == 0) {
                bad_column = column;
                bad_cell = cell;
            }
            row.push_back(v);
        }
        if (first) {
            first = false;
            if (header == "yes" || (header == "auto" && bad_column != 0)) continue;
            if (bad_column)
                throw IoError(where + "column " + std::to_string(bad_column) + ": '" + printable(bad_cell) +
                              "' is not a number (set \"header\" if this is a header row)");
        }
        if (bad_column)
            throw IoError(where + "column " + std::to_string(bad_column) + ": '" + printable(bad_cell) + "' is not a number");
        if (t.d == 0) t.d = static_cast<std::int64_t>(row.size());
        if (static_cast<std::int64_t>(row.size()) != t.d)
            throw IoError(where + std::to_string(row.size()) + " columns, expected " + std::to_string(t.d) +
                          " (as in the first data row)");
        t.v.insert(t.v.end(), row.begin(), row.end());
        ++t.n;
    }
    if (t.n == 0) throw IoError(name + ": no data rows");
    return t;
}

Table read_csv(const std::string& path, char delim, std::string_view header) {
    const std::vector<std::uint8_t> bytes = read_whole_file(path, "a CSV file");
    return parse_csv(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), path, delim, header);
}

}  // namespace flowlab::density
