#include "backend/onednn.hpp"

#include "backend/gemm_avx512.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>

#include "flowlab/errors.hpp"
#include "flowlab/parallel.hpp"

namespace flowlab::backend {

Context::Context() : engine_(dnnl::engine::kind::cpu, 0) {}

void* Context::scratchpad(std::size_t bytes) {
    // oneDNN's own scratchpad is one global buffer (this build does not allow concurrent
    // execution), so primitives that run on several threads at once get a per-thread one.
    struct Buffer {
        void* p = nullptr;
        std::size_t size = 0;
        ~Buffer() { std::free(p); }
    };
    thread_local Buffer buf;
    if (bytes > buf.size) {
        const std::size_t size = (std::max<std::size_t>(bytes, 2 * buf.size) + 63) / 64 * 64;
        std::free(buf.p);
        buf.p = std::aligned_alloc(64, size);
        buf.size = buf.p ? size : 0;
        if (!buf.p) throw std::bad_alloc();
    }
    return buf.p;
}

dnnl::stream& Context::stream() {
    // oneDNN streams are not meant to be shared by threads that execute at once; a CPU stream
    // is a handle, so each thread keeps its own. A thread's first stream also sets its OpenMP
    // thread count to one (parallel.cpp: the parallelism is TBB's): a thread that neither the
    // main thread nor TBB started - a replica's, an embedding program's - would otherwise run
    // each primitive on all cores' OpenMP threads, beside the other threads' work.
    thread_local dnnl::stream s = [] {
        omp_set_num_threads(1);
        return dnnl::stream(get().engine());
    }();
    return s;
}

Context& Context::get() {
    static Context* c = new Context();
    return *c;
}

namespace {

struct GemmPrimitive {
    dnnl::matmul prim;
    dnnl::memory::desc a, b, c, bias, scratch;
    // How the implementation oneDNN chose sums over k, as sparse_gemm's chain blocks (0: not
    // known, no sparse path). Found by comparing its results with FMA chains of every block
    // length (tests/core/backend/test_sparse_gemm.cpp keeps checking them): brgemm sums each
    // output in one chain up to k = 512; the JIT sgemm (its products with A transposed) in one
    // chain up to k = 384, in two equal halves (the first the larger) up to 768.
    std::int64_t chain = 0;
};

std::int64_t chain_of(const Gemm& g, const std::string& impl) {
    if (g.alpha != 1.0f || g.beta != 0.0f) return 0;
    if (impl == "brg:avx512_core" && g.k <= 512) return g.k;
    if (impl == "gemm:jit" && g.trans_a && g.k <= 768) return g.k <= 384 ? g.k : (g.k + 1) / 2;
    return 0;
}

// One tile: C[m, n] with leading dimensions lda, ldb, ldc of the whole matrices.
GemmPrimitive make_gemm(const Gemm& g, std::int64_t lda, std::int64_t ldb, std::int64_t ldc,
                        const dnnl::engine& engine) {
    using dt = dnnl::memory::data_type;
    using dims = dnnl::memory::dims;
    GemmPrimitive p;
    p.a = dnnl::memory::desc({g.m, g.k}, dt::f32, g.trans_a ? dims{1, lda} : dims{lda, 1});
    p.b = dnnl::memory::desc({g.k, g.n}, dt::f32, g.trans_b ? dims{1, ldb} : dims{ldb, 1});
    p.c = dnnl::memory::desc({g.m, g.n}, dt::f32, dims{ldc, 1});
    if (g.bias) p.bias = dnnl::memory::desc({1, g.n}, dt::f32, dims{g.n, 1});
    dnnl::primitive_attr attr;
    if (g.alpha != 1.0f) attr.set_output_scales(0, {g.alpha});
    dnnl::post_ops po;
    if (g.beta != 0.0f) po.append_sum(g.beta);
    if (g.relu) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    attr.set_post_ops(po);
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    try {
        dnnl::matmul::desc d = g.bias ? dnnl::matmul::desc(p.a, p.b, p.bias, p.c) : dnnl::matmul::desc(p.a, p.b, p.c);
        const dnnl::matmul::primitive_desc pd(d, attr, engine);
        p.scratch = pd.scratchpad_desc();
        p.prim = dnnl::matmul(pd);
        p.chain = chain_of(g, pd.impl_info_str());
    } catch (const dnnl::error& e) {
        throw Error("oneDNN cannot build a " + std::to_string(g.m) + "x" + std::to_string(g.k) + "x" +
                    std::to_string(g.n) + " GEMM: " + e.what());
    }
    return p;
}

}  // namespace

namespace {

// The own AVX-512 kernel for sgemm_small unless the CPU lacks it or FLOWLAB_GEMM=onednn asks
// for oneDNN's.
std::atomic<bool>& own_gemm_flag() {
    static std::atomic<bool> on = [] {
        const char* env = std::getenv("FLOWLAB_GEMM");
        return avx512::available() && !(env && std::string_view(env) == "onednn");
    }();
    return on;
}

}  // namespace

bool own_gemm() { return own_gemm_flag().load(std::memory_order_relaxed); }

bool use_own_gemm(bool on) {
    const bool was = own_gemm();
    own_gemm_flag().store(on && avx512::available(), std::memory_order_relaxed);
    return was;
}

namespace {

// A thread's memory objects for one GEMM primitive, re-pointed at each call's operands: making
// them (and the argument map) at every call, with the cache's lock and lookup, cost about a
// microsecond a call - 5 % of a 128 x 128 x 128 tile, and W1 runs about a hundred tiles a step.
struct TileCall {
    const GemmPrimitive* p = nullptr;
    dnnl::memory a, b, c, bias, scratch;
    std::unordered_map<int, dnnl::memory> args;
};

TileCall& tile_call(const CacheKey& key, const Gemm& g, std::int64_t lda, std::int64_t ldb, std::int64_t ldc) {
    // The thread's own map, so no lock; its primitives come from (and live in) the context's
    // cache.
    thread_local std::unordered_map<std::string, TileCall, KeyHash, std::equal_to<>> calls;
    auto it = calls.find(key.bytes());
    if (it != calls.end()) return it->second;
    Context& ctx = Context::get();
    const GemmPrimitive& p = ctx.cached<GemmPrimitive>(key, [&] { return make_gemm(g, lda, ldb, ldc, ctx.engine()); });
    const dnnl::engine& e = ctx.engine();
    TileCall t;
    t.p = &p;
    t.a = dnnl::memory(p.a, e, nullptr);
    t.b = dnnl::memory(p.b, e, nullptr);
    t.c = dnnl::memory(p.c, e, nullptr);
    t.scratch = dnnl::memory(p.scratch, e, nullptr);
    t.args = {{DNNL_ARG_SRC, t.a}, {DNNL_ARG_WEIGHTS, t.b}, {DNNL_ARG_DST, t.c}, {DNNL_ARG_SCRATCHPAD, t.scratch}};
    if (g.bias) {
        t.bias = dnnl::memory(p.bias, e, nullptr);
        t.args.emplace(DNNL_ARG_BIAS, t.bias);
    }
    return calls.emplace(std::string(key.bytes()), std::move(t)).first->second;
}

}  // namespace

namespace {

TileCall& tile_call(const Gemm& g, std::int64_t lda, std::int64_t ldb, std::int64_t ldc) {
    CacheKey key("gemm");
    key.add(g.m).add(g.n).add(g.k).add(g.trans_a).add(g.trans_b).add(g.bias).add(g.relu).add(g.alpha).add(g.beta);
    key.add(lda).add(ldb).add(ldc);
    return tile_call(key, g, lda, ldb, ldc);
}

}  // namespace

std::int64_t sgemm_chain(const Gemm& g, std::int64_t lda, std::int64_t ldb, std::int64_t ldc) {
    if (g.trans_b || g.m == 0 || g.n == 0 || !own_gemm()) return 0;
    return tile_call(g, lda, ldb, ldc).p->chain;
}

bool sgemm_sparse(const Gemm& g, std::int64_t lda, std::int64_t ldb, std::int64_t ldc, const float* a, const float* b,
                  float* c, const float* bias, const float* gate, std::int64_t ldg) {
    const std::int64_t chain = sgemm_chain(g, lda, ldb, ldc);
    return chain > 0 && avx512::sparse_gemm(g.m, g.n, g.k, g.trans_a, a, lda, b, ldb, c, ldc, chain,
                                            kSparseMaxDensity, g.bias ? bias : nullptr, g.relu, gate, ldg);
}

void sgemm_sparse_columns(const Gemm& g, std::int64_t chain, const float* a, std::int64_t lda, const float* b,
                          std::int64_t ldb, float* c, std::int64_t ldc, std::int64_t j0, std::int64_t j1) {
    // C[:, j0..j1] = A^T B[:, j0..j1], as its transpose B[:, j0..j1]^T A: B's columns are the
    // rows the kernel compresses, A the operand it reads whole.
    avx512::sparse_gemm_ct(j1 - j0, g.m, g.k, true, b + j0, ldb, a, lda, c + j0, ldc, chain, 1.0);
}

void sgemm_tile(const Gemm& g, std::int64_t lda, std::int64_t ldb, std::int64_t ldc, const float* a, const float* b,
                float* c, const float* bias) {
    if (g.sparse_a && sgemm_sparse(g, lda, ldb, ldc, a, b, c, bias)) return;
    TileCall& t = tile_call(g, lda, ldb, ldc);
    t.a.set_data_handle(const_cast<float*>(a));
    t.b.set_data_handle(const_cast<float*>(b));
    t.c.set_data_handle(c);
    t.scratch.set_data_handle(Context::scratchpad(t.p->scratch.get_size()));
    if (g.bias) t.bias.set_data_handle(const_cast<float*>(bias));
    dnnl::stream& s = Context::stream();
    t.p->prim.execute(s, t.args);
    s.wait();
}

void sgemm_small(const Gemm& g, std::int64_t lda, std::int64_t ldb, std::int64_t ldc, const float* a, const float* b,
                 float* c, const float* bias, const float* gate, std::int64_t ldg, float* colsum) {
    if (g.alpha == 1.0f && !g.trans_b && g.k > 0 && own_gemm() && avx512::suits(lda)) {
        // The own kernel sums each output in one FMA chain over k from 0 (its slices of k
        // continue from C): skipping op(A)'s zeros gives its bits.
        if (g.sparse_a && g.beta == 0.0f &&
            avx512::sparse_gemm(g.m, g.n, g.k, g.trans_a, a, lda, b, ldb, c, ldc, g.k, kSparseMaxDensity,
                                g.bias ? bias : nullptr, g.relu, gate, ldg, colsum))
            return;
        avx512::gemm_tile(g.m, g.n, g.k, g.trans_a, a, lda, b, ldb, c, ldc, g.bias ? bias : nullptr, g.beta, g.relu,
                          gate, ldg, colsum);
        return;
    }
    sgemm_tile(g, lda, ldb, ldc, a, b, c, bias);
    if (!gate) return;
    for (std::int64_t i = 0; i < g.m; ++i)
        for (std::int64_t j = 0; j < g.n; ++j) {
            float& v = c[i * ldc + j];
            v = gate[i * ldg + j] > 0.0f ? v : 0.0f;
            colsum[j] += v;
        }
}

void stream_copy(float* dst, const float* src, std::int64_t n) {
    if (avx512::available() && reinterpret_cast<std::uintptr_t>(dst) % 64 == 0)
        avx512::stream_copy(dst, src, n);
    else
        std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
}

GemmTiling gemm_tiling(std::int64_t m, std::int64_t n, std::int64_t k) {
    // Tiles depend on the shape only, never on the thread count, so that a result is the same
    // bits with 1 thread or 8. Each tile carries at least kTileFlops (a TBB hand-off costs about
    // a microsecond, a tile tens of them) and is a multiple of 16 rows (32 when B streams from
    // memory, below) or 128 columns (W2's 100-row GEMMs ran 15% faster in 128-column tiles than
    // in 64-column ones). Measured and not
    // kept: splitting deep products (weight gradients) along the summed dimension, no change
    // on W3.
    constexpr double kTileFlops = 4e6;
    constexpr std::int64_t kRowUnit = 16, kDeepRowUnit = 32, kColUnit = 128;
    constexpr double kL2Bytes = 512.0 * 1024.0;
    const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
    const auto want = static_cast<std::int64_t>(flops / kTileFlops);
    GemmTiling t;
    if (want < 2) return t;
    const bool by_rows = m >= n;
    // Every row tile reads all of B. When B is larger than a core's L2 (the weight gradients of
    // convolutions: k = pixels of the batch), 16-row tiles read it from memory 8 times for 128
    // rows: 6.1 ms on one core for W3's 128 x 128 x 12,544 product, 4.3-4.8 ms in 32-row tiles.
    const bool b_streams = by_rows && 4.0 * static_cast<double>(k) * static_cast<double>(n) > kL2Bytes;
    const std::int64_t extent = by_rows ? m : n, unit = by_rows ? (b_streams ? kDeepRowUnit : kRowUnit) : kColUnit;
    const std::int64_t units = (extent + unit - 1) / unit;
    const std::int64_t tiles = std::min<std::int64_t>({want, units, 64});
    if (tiles < 2) return t;
    t.mode = by_rows ? GemmTiling::rows : GemmTiling::columns;
    t.step = ((units + tiles - 1) / tiles) * unit;
    t.count = (extent + t.step - 1) / t.step;
    return t;
}

void sgemm_tile_of(const Gemm& g, const GemmTiling& t, std::int64_t i, const float* a, const float* b, float* c,
                   const float* bias) {
    const std::int64_t lda = g.trans_a ? g.m : g.k, ldb = g.trans_b ? g.k : g.n, ldc = g.n;
    if (t.count <= 1) {
        sgemm_tile(g, lda, ldb, ldc, a, b, c, bias);
        return;
    }
    Gemm sub = g;
    const std::int64_t lo = i * t.step;
    if (t.mode == GemmTiling::rows) {
        sub.m = std::min(t.step, g.m - lo);
        // Row lo of op(A): row lo of A, or column lo when A is used transposed.
        sgemm_tile(sub, lda, ldb, ldc, a + (g.trans_a ? lo : lo * lda), b, c + lo * ldc, bias);
    } else {
        sub.n = std::min(t.step, g.n - lo);
        sgemm_tile(sub, lda, ldb, ldc, a, b + (g.trans_b ? lo * ldb : lo), c + lo, bias ? bias + lo : nullptr);
    }
}

std::int64_t sgemm_tiles_chain(const Gemm& g, const GemmTiling& t) {
    const std::int64_t lda = g.trans_a ? g.m : g.k, ldb = g.trans_b ? g.k : g.n, ldc = g.n;
    if (t.count <= 1) return sgemm_chain(g, lda, ldb, ldc);
    // The first tile and the last (the only one that may be smaller) stand for all.
    Gemm first = g, last = g;
    const std::int64_t extent = t.mode == GemmTiling::rows ? g.m : g.n, rest = extent - (t.count - 1) * t.step;
    (t.mode == GemmTiling::rows ? first.m : first.n) = t.step;
    (t.mode == GemmTiling::rows ? last.m : last.n) = rest;
    const std::int64_t chain = sgemm_chain(first, lda, ldb, ldc);
    return chain == sgemm_chain(last, lda, ldb, ldc) ? chain : 0;
}

void sgemm(const Gemm& g, const float* a, const float* b, float* c, const float* bias) {
    // Work stealing: when another process holds one core, the threads left take every tile
    // instead of waiting at a barrier for a thread that is not running.
    const GemmTiling t = gemm_tiling(g.m, g.n, g.k);
    parallel_tasks(t.count, [&](std::int64_t i) { sgemm_tile_of(g, t, i, a, b, c, bias); });
}

}  // namespace flowlab::backend
