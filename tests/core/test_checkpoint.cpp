// Checkpoint files: a round trip, and one distinct error for each kind of malformed file.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "flowlab/checkpoint.hpp"
#include "flowlab/errors.hpp"

using namespace flowlab;
namespace fs = std::filesystem;

namespace {

std::string tmp_path(const std::string& name) {
    return (fs::temp_directory_path() / ("flowlab-ckpt-" + std::to_string(::getpid()) + "-" + name)).string();
}

std::string bytes_of(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void put(const std::string& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << bytes;
}

// A file with header text `h` and `data` bytes after it.
std::string file_with_header(const std::string& h, const std::string& data) {
    std::string out(8, '\0');
    std::uint64_t n = h.size();
    for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(n >> (8 * i));
    return out + h + data;
}

std::string error_of(const std::string& path) {
    try {
        read_checkpoint(path);
    } catch (const IoError& e) {
        return e.what();
    }
    return "no error";
}

}  // namespace

TEST_CASE("a checkpoint round-trips tensors and metadata bit for bit", "[checkpoint]") {
    Checkpoint ck;
    ck.tensors.push_back({"param/w", Tensor::from_vector({2, 3}, {1, -2, 3.5, 4, 5, 1e-30})});
    ck.tensors.push_back({"param/d", Tensor::from_vector({2}, {0.1, 0.2}, DType::f64)});
    ck.tensors.push_back({"empty", Tensor::zeros({0})});
    ck.metadata["step"] = "42";
    std::string p = tmp_path("roundtrip.safetensors");
    write_checkpoint(p, ck);
    Checkpoint back = read_checkpoint(p);
    REQUIRE(back.tensors.size() == 3);
    CHECK(back.metadata.at("step") == "42");
    const Tensor* w = back.find("param/w");
    REQUIRE(w);
    CHECK(w->shape() == Shape{2, 3});
    CHECK(std::memcmp(w->raw(), ck.tensors[0].tensor.raw(), w->nbytes()) == 0);
    CHECK(back.find("param/d")->dtype() == DType::f64);
    // The header length is little-endian and the data starts 8-byte aligned.
    std::string raw = bytes_of(p);
    std::uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(static_cast<unsigned char>(raw[static_cast<std::size_t>(i)])) << (8 * i);
    CHECK(n % 8 == 0);
    CHECK(raw.substr(8, n).find("\"__metadata__\"") != std::string::npos);
    fs::remove(p);
}

TEST_CASE("the checkpoint loader rejects each kind of malformed file with its own message", "[checkpoint]") {
    std::string p = tmp_path("bad.safetensors");
    const std::string f32x2 = std::string(8, '\1');  // 2 floats
    struct Case {
        const char* what;
        std::string bytes;
        const char* message;
    } cases[] = {
        {"too short for a header length", "abc", "truncated checkpoint"},
        {"header length over the limit", std::string("\xff\xff\xff\xff\xff\xff\x00\x00", 8) + "{}", "exceeds the 100 MB limit"},
        {"header length past the end", std::string("\x40\x00\x00\x00\x00\x00\x00\x00", 8) + "{}", "runs past the end of the file"},
        {"header not JSON", file_with_header("{not json", ""), "not valid JSON"},
        {"header not an object", file_with_header("[1,2]", ""), "not a JSON object"},
        {"unsupported dtype", file_with_header(R"({"a":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}})", "xx"),
         "unsupported dtype 'I8'"},
        {"negative shape", file_with_header(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", f32x2),
         "non-negative integers"},
        {"shape times dtype overflows",
         file_with_header(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", f32x2),
         "overflows"},
        {"offsets out of bounds", file_with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", f32x2),
         "out of bounds"},
        {"offsets disagree with shape", file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", f32x2),
         "needs 4"},
        {"a gap between tensors",
         file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", f32x2), "contiguous"},
        {"trailing bytes", file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", f32x2),
         "trailing bytes"},
        {"duplicate names",
         file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                          f32x2),
         "duplicate tensor name 'a'"},
        {"metadata not strings", file_with_header(R"({"__metadata__":{"step":3}})", ""), "is not a string"},
        {"entry missing fields", file_with_header(R"({"a":{"dtype":"F32"}})", ""), "needs dtype, shape and data_offsets"},
    };
    for (const auto& c : cases) {
        put(p, c.bytes);
        std::string msg = error_of(p);
        INFO(c.what << ": " << msg);
        CHECK(msg.find(c.message) != std::string::npos);
        CHECK(msg.find(p) != std::string::npos);  // the message names the file
    }
    fs::remove(p);
    CHECK(error_of(tmp_path("missing.safetensors")).find("cannot open checkpoint") != std::string::npos);
}

TEST_CASE("writing a checkpoint replaces the old file only once the new one is complete", "[checkpoint]") {
    std::string p = tmp_path("atomic.safetensors");
    Checkpoint a;
    a.tensors.push_back({"x", Tensor::full({4}, 1.0)});
    write_checkpoint(p, a);
    Checkpoint b;
    b.tensors.push_back({"x", Tensor::full({4}, 2.0)});
    write_checkpoint(p, b);
    CHECK(read_checkpoint(p).find("x")->item(0) == 2.0);
    // No temporary files are left next to it.
    int others = 0;
    for (const auto& e : fs::directory_iterator(fs::path(p).parent_path()))
        if (e.path().filename().string().find("atomic.safetensors.tmp") != std::string::npos) ++others;
    CHECK(others == 0);
    fs::remove(p);
}
