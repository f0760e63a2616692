// The process's one oneDNN context: the engine, each thread's stream and scratchpad, and the
// primitive cache that every op family (GEMM, convolution, reorders) shares. Creating a primitive
// costs about 0.2 ms against a few microseconds to run a small one, so each is built once per key
// and kept.
//
// Internal to the core: this is the one header that includes dnnl.hpp, and only the op sources
// that call oneDNN include it.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>

#include <oneapi/dnnl/dnnl.hpp>

namespace flowlab::backend {

// A cache key: the op family's name, then the raw bytes of each field, so that one map serves
// every kind of primitive without a hash per key type. Built on the stack: a lookup on the
// training path allocates nothing.
class CacheKey {
public:
    explicit CacheKey(const char* family) { append(family, std::strlen(family) + 1); }
    template <class T>
    CacheKey& add(const T& v) {
        static_assert(std::is_trivially_copyable_v<T>, "cache key fields are plain values");
        append(reinterpret_cast<const char*>(&v), sizeof v);
        return *this;
    }
    std::string_view bytes() const { return {buf_, size_}; }

private:
    void append(const char* p, std::size_t n) {
        if (n > sizeof buf_ - size_) throw std::length_error("backend::CacheKey: key longer than 128 bytes");
        std::memcpy(buf_ + size_, p, n);
        size_ += n;
    }
    char buf_[128];
    std::size_t size_ = 0;
};

// Transparent hash for maps keyed by a CacheKey's bytes: find() takes them as a string_view.
struct KeyHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view v) const { return std::hash<std::string_view>{}(v); }
};

class Context {
public:
    // Never destroyed: the OpenMP runtime oneDNN runs on may already be gone at static destruction.
    static Context& get();

    const dnnl::engine& engine() const { return engine_; }
    // The calling thread's stream.
    static dnnl::stream& stream();
    // The calling thread's scratchpad, at least `bytes` long (for primitives built with
    // scratchpad_mode::user, which may then run on several threads at once).
    static void* scratchpad(std::size_t bytes);
    // Held while a cached entry is changed after it was made (e.g. a convolution's backward
    // primitives, built on first use).
    std::mutex& mutex() { return mutex_; }

    // The entry under `key`, made by `make()` (which returns a Value) the first time. The
    // reference stays valid for the life of the process.
    template <class Value, class Make>
    Value& cached(const CacheKey& key, Make&& make) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = cache_.find(key.bytes());
        if (it == cache_.end())
            it = cache_.emplace(std::string(key.bytes()), std::shared_ptr<void>(std::make_shared<Value>(make()))).first;
        return *static_cast<Value*>(it->second.get());
    }

private:
    Context();
    dnnl::engine engine_;
    std::mutex mutex_;
    std::unordered_map<std::string, std::shared_ptr<void>, KeyHash, std::equal_to<>> cache_;
};

// C[m, n] = alpha op(A) op(B) (+ bias[n]) (+ beta C) (then ReLU), row-major f32, op = transpose
// when trans_a / trans_b (strided views, no copies), through a cached matmul primitive.
struct Gemm {
    std::int64_t m = 0, n = 0, k = 0;
    bool trans_a = false, trans_b = false;
    bool bias = false, relu = false;
    float alpha = 1.0f, beta = 0.0f;
    // op(A) probably has many zeros (a ReLU's output, a gradient one gated): sgemm_tile may
    // skip them (sgemm_sparse), with the same bits.
    bool sparse_a = false;
};
void sgemm(const Gemm& g, const float* a, const float* b, float* c, const float* bias = nullptr);

// One GEMM on the calling thread (a primitive built for one thread), on operands inside larger
// row-major matrices with leading dimensions lda, ldb, ldc: sgemm's tiles, and callers that
// schedule their own blocks (block_sparse_linear). With g.sparse_a, first sgemm_sparse.
void sgemm_tile(const Gemm& g, std::int64_t lda, std::int64_t ldb, std::int64_t ldc, const float* a, const float* b,
                float* c, const float* bias);

// Above this share of nonzeros in the operand a product would skip the zeros of, the dense
// kernel is faster (backend/sparse_avx512.cpp puts the break-even at about 70 %).
inline constexpr double kSparseMaxDensity = 0.65;

// sgemm_tile's product with op(A)'s zero entries skipped, where that is faster and gives
// sgemm_tile's exact bits (oneDNN's order of sums for the shape known, f32 with AVX-512, B not
// transposed, op(A) at most 65 % nonzeros); then (the gate as sgemm_small's, without the
// column sums) returns true, else false having written nothing. Inf or NaN in B where op(A)
// has a zero is left out (the dense product would make it NaN there); a NaN in op(A) is kept.
bool sgemm_sparse(const Gemm& g, std::int64_t lda, std::int64_t ldb, std::int64_t ldc, const float* a, const float* b,
                  float* c, const float* bias, const float* gate = nullptr, std::int64_t ldg = 0);

// The chain blocks in which oneDNN's primitive for the tile g sums (backend/sparse_avx512's
// terms), or 0 when the sparse kernels cannot reproduce it (or the CPU lacks AVX-512).
std::int64_t sgemm_chain(const Gemm& g, std::int64_t lda, std::int64_t ldb, std::int64_t ldc);
// Columns j0..j1 of C = A^T B (g: A transposed, B not; alpha 1, beta 0, no epilogue), skipping
// B's zeros, summed in `chain` blocks (sgemm_chain of the tile the dense path would run): a
// weight gradient whose output gradient, gated by a ReLU, is the sparser operand. Always runs.
void sgemm_sparse_columns(const Gemm& g, std::int64_t chain, const float* a, std::int64_t lda, const float* b,
                          std::int64_t ldb, float* c, std::int64_t ldc, std::int64_t j0, std::int64_t j1);

// sgemm_tile for callers that run many small products on operands in cache (conv_stack: a
// few hundred rows at a time): flowlab's own AVX-512 kernel (gemm_avx512.hpp) where the CPU
// has it and the operands suit it - no per-call setup, and 3-4 % faster on W3's shapes - else
// sgemm_tile. B is never transposed here. The general GEMMs (sgemm, sgemm_tile) stay oneDNN's:
// another kernel sums in another order, and the results of existing runs move with it (their
// sparse path, like this one's with `sparse_a`, keeps the order it replaces). With a gate [m, n] (leading dimension ldg), C then becomes gate > 0 ? C : 0 and colsum[j]
// takes C's rows in order (colsum[j] += C[i, j], i = 0, 1, ...): a ReLU's backward and its
// bias gradient, done in the kernel's epilogue instead of another pass over C.
void sgemm_small(const Gemm& g, std::int64_t lda, std::int64_t ldb, std::int64_t ldc, const float* a, const float* b,
                 float* c, const float* bias, const float* gate = nullptr, std::int64_t ldg = 0,
                 float* colsum = nullptr);
// dst[0, n) = src[0, n) with non-temporal stores where the CPU has AVX-512 (memcpy otherwise;
// dst 64-byte aligned): for results kept for later, written from a cache-resident copy.
void stream_copy(float* dst, const float* src, std::int64_t n);

// Whether sgemm_small runs the own kernel and sgemm_sparse may skip zeros: where the CPU has
// AVX-512, unless FLOWLAB_GEMM=onednn is in the environment. use_own_gemm sets it (tests compare the two; it stays off without
// AVX-512) and returns the previous setting.
bool own_gemm();
bool use_own_gemm(bool on);

// How sgemm splits C into tiles run as TBB tasks: `count` tiles of `step` rows or columns;
// count <= 1 runs as one call. Fixed by the shape alone.
struct GemmTiling {
    enum Mode { rows, columns } mode = rows;
    std::int64_t step = 0, count = 1;
};
GemmTiling gemm_tiling(std::int64_t m, std::int64_t n, std::int64_t k);
// Tile i of sgemm(g, ...) split as t says (the whole product when t.count <= 1), on the calling
// thread: for callers that run a product's tiles beside other work in one parallel section.
void sgemm_tile_of(const Gemm& g, const GemmTiling& t, std::int64_t i, const float* a, const float* b, float* c,
                   const float* bias = nullptr);
// sgemm_chain shared by every tile of sgemm(g, ...) split as t says, or 0.
std::int64_t sgemm_tiles_chain(const Gemm& g, const GemmTiling& t);

}  // namespace flowlab::backend
