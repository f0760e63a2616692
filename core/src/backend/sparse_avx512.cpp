// Products whose left operand is half zeros - a ReLU's output, or a gradient a ReLU gated - with
// the zero entries skipped (gemm_avx512.hpp, sparse_gemm).
//
// Each row of op(A) is first compressed to the list of its nonzero entries (value and B's row),
// in order; each output is then one FMA chain over its row's list, which is the dense product's
// chain with the terms 0 * B[k, j] left out. Those terms do not change a finite sum: x + (+-0) is
// x for any x that is not zero, and a chain that starts from +0 never holds -0 before its first
// nonzero term. So where the dense kernel sums in one chain per output (or in chain blocks
// added left to right), this gives its bits, at the cost of the terms that are not zeros.
//
// The price of skipping: B's rows are no longer shared by the rows of a register block, so
// every FMA loads its vector of B (a dense kernel loads one per 4-6 FMAs), and the kernel runs
// at about 75 % of the FMA peak on the terms it keeps. In a microbenchmark on one core, a
// 128 x 128 x 128 product at half zeros takes 0.75-0.79 of oneDNN's time (or the own kernel's),
// with all nonzeros 1.33-1.38 times it: it breaks even at about 70 % nonzeros (the callers'
// threshold is 65 %). Inside training steps it gains less (0.86 on W3's shape, measured per
// call). B's columns are taken 128 at a time and two rows of op(A) side by side: 16 sums.
#include "backend/avx512_transpose.hpp"
#include "backend/gemm_avx512.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

namespace flowlab::backend::avx512 {

namespace {

#define FLOWLAB_AVX512 __attribute__((target("avx512f")))

// Floats on 64-byte lines (a vector load across two lines costs two).
struct Buffer {
    float* p = nullptr;
    std::size_t size = 0;
    Buffer() = default;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() { std::free(p); }
    float* get(std::int64_t n) {
        const auto want = static_cast<std::size_t>(n);
        if (want > size) {
            std::free(p);
            size = (std::max(want, 2 * size) + 15) / 16 * 16;
            p = static_cast<float*>(std::aligned_alloc(64, size * sizeof(float)));
            if (!p) {
                size = 0;
                throw std::bad_alloc();
            }
        }
        return p;
    }
};

// A thread's lists: entry e is op(A)'s value val[e] at B's row offset off[e] (k * ldb); row i's
// piece q spans [start[i * pieces + q], start[i * pieces + q + 1]). Pieces split the summed
// dimension at the chain blocks' edges and every kPiece rows of B in between, and every row of
// op(A) passes through one piece's rows of B before the next: read in the order of a row's
// nonzeros, B's rows come in no order a prefetcher follows, and a whole 128 x 128 B (64 KB)
// did not stay in L1 (pieces of 16, 32, 64 and 128 rows measured: 64 best, 1.1 times faster
// than none). Also kept: op(A)'s gathered rows, partial sums between pieces, a transposed
// result before it is written.
struct Lists {
    std::vector<std::int32_t> off, start;
    std::vector<float> val;
    Buffer panel, partial, out;
};

Lists& lists() {
    thread_local Lists l;
    return l;
}

constexpr std::int64_t kPiece = 64;
constexpr int kNv = 8;  // vectors of 16 columns per column block

// The pieces of [0, k): [edge[q], edge[q + 1]), and whether piece q starts a chain block.
struct Pieces {
    std::vector<std::int64_t> edge;
    std::vector<bool> opens;
    Pieces(std::int64_t k, std::int64_t chain) {
        for (std::int64_t c0 = 0; c0 < k; c0 += chain)
            for (std::int64_t p0 = c0; p0 < std::min(k, c0 + chain); p0 += kPiece) {
                edge.push_back(p0);
                opens.push_back(p0 == c0);
            }
        edge.push_back(k);
    }
    std::int64_t count() const { return static_cast<std::int64_t>(opens.size()); }
    // Whether piece q ends a chain block.
    bool closes(std::int64_t q) const { return q + 1 == count() || opens[static_cast<std::size_t>(q + 1)]; }
};

// Row `a` (k entries, contiguous) appended to the lists, piece by piece. The compress is done
// in registers and stored whole (the lists have 16 entries of slack): a compressing store to
// memory is microcoded on some CPUs.
FLOWLAB_AVX512 std::int64_t compress_row(const float* a, const Pieces& pc, std::int64_t ldb, std::int32_t* off,
                                         float* val, std::int32_t* start, std::int64_t pos) {
    const __m512i lane = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(static_cast<std::int32_t>(ldb)));
    const __m512 zero = _mm512_setzero_ps();
    for (std::int64_t q = 0; q < pc.count(); ++q) {
        *start++ = static_cast<std::int32_t>(pos);
        const std::int64_t c1 = pc.edge[static_cast<std::size_t>(q + 1)];
        for (std::int64_t k0 = pc.edge[static_cast<std::size_t>(q)]; k0 < c1; k0 += 16) {
            const __mmask16 in = c1 - k0 >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (c1 - k0)) - 1);
            const __m512 v = _mm512_maskz_loadu_ps(in, a + k0);
            const __m512i o = _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<std::int32_t>(k0 * ldb)));
            // Not-equal or unordered: a NaN is kept, so that it reaches the output.
            const __mmask16 nz = _mm512_mask_cmp_ps_mask(in, v, zero, _CMP_NEQ_UQ);
            _mm512_storeu_ps(val + pos, _mm512_maskz_compress_ps(nz, v));
            _mm512_storeu_si512(off + pos, _mm512_maskz_compress_epi32(nz, o));
            pos += __builtin_popcount(nz);
        }
    }
    return pos;
}

// The last vector of a column block covers the columns in `tail`.
template <int NV>
FLOWLAB_AVX512 inline __m512 load_b(const float* p, int v, __mmask16 tail) {
    return v + 1 < NV ? _mm512_loadu_ps(p + 16 * v) : _mm512_maskz_loadu_ps(tail, p + 16 * v);
}

// s0 += list 0 times B, s1 += list 1 times B (B at the column block), side by side while both
// lists last.
template <int NV>
FLOWLAB_AVX512 __attribute__((always_inline)) inline void sum_pair(const float* b, const std::int32_t* o0,
                                                                   const float* v0, std::int64_t n0,
                                                                   const std::int32_t* o1, const float* v1,
                                                                   std::int64_t n1, __m512* s0, __m512* s1,
                                                                   __mmask16 tail) {
    const std::int64_t n = std::min(n0, n1);
    std::int64_t t = 0;
    for (; t < n; ++t) {
        const __m512 a0 = _mm512_set1_ps(v0[t]), a1 = _mm512_set1_ps(v1[t]);
        const float* b0 = b + o0[t];
        const float* b1 = b + o1[t];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
            s0[v] = _mm512_fmadd_ps(a0, load_b<NV>(b0, v, tail), s0[v]);
            s1[v] = _mm512_fmadd_ps(a1, load_b<NV>(b1, v, tail), s1[v]);
        }
    }
    for (std::int64_t u = t; u < n0; ++u) {
        const __m512 a0 = _mm512_set1_ps(v0[u]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) s0[v] = _mm512_fmadd_ps(a0, load_b<NV>(b + o0[u], v, tail), s0[v]);
    }
    for (std::int64_t u = t; u < n1; ++u) {
        const __m512 a1 = _mm512_set1_ps(v1[u]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) s1[v] = _mm512_fmadd_ps(a1, load_b<NV>(b + o1[u], v, tail), s1[v]);
    }
}

// What one piece does with a row's running sum s (at the column block): where it goes after
// the piece - on to the next piece (`part`, the row's slot of the thread's partial sums), into
// the total of the chain blocks (C itself until the last piece), or through the epilogue
// (+ bias, ReLU as oneDNN's max(x, 0), which gives 0 for a NaN, then the gate) into C.
struct Row {
    float* c;
    float* part;
    const float* gate;
};

template <int NV>
FLOWLAB_AVX512 __attribute__((always_inline)) inline void load_part(const Row& r, bool opens, __m512* s,
                                                                    __mmask16 tail) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
        const __mmask16 m = v + 1 < NV ? __mmask16(0xFFFF) : tail;
        s[v] = opens ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, r.part + 16 * v);
    }
}

template <int NV>
FLOWLAB_AVX512 __attribute__((always_inline)) inline void finish_piece(const Row& r, __m512* s, bool closes,
                                                                       bool first_chain, bool last, const float* bias,
                                                                       bool relu, float* colsum, __mmask16 tail) {
    const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
        const __mmask16 m = v + 1 < NV ? __mmask16(0xFFFF) : tail;
        __m512 x = s[v];
        if (!closes) {
            _mm512_mask_storeu_ps(r.part + 16 * v, m, x);
            continue;
        }
        // Chain blocks added left to right, as the dense kernel adds its blocks of the sum.
        if (!first_chain) x = _mm512_add_ps(_mm512_maskz_loadu_ps(m, r.c + 16 * v), x);
        if (last) {
            if (bias) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, bias + 16 * v));
            if (relu) x = _mm512_max_ps(x, zero);
            if (r.gate)
                x = _mm512_maskz_mov_ps(
                    _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(m, r.gate + 16 * v), zero, _CMP_GT_OQ), x);
            // The rows come in order (pairs in order, the first of a pair first).
            if (colsum)
                _mm512_mask_storeu_ps(colsum + 16 * v, m,
                                      _mm512_add_ps(_mm512_maskz_loadu_ps(m, colsum + 16 * v), x));
        }
        _mm512_mask_storeu_ps(r.c + 16 * v, m, x);
    }
}

struct Operands {
    const Lists* l;
    std::int64_t pieces;
    const float* b;
    float* c;
    std::int64_t ldc;
    const float* bias;
    bool relu;
    const float* gate;
    std::int64_t ldg;
    float* colsum;
    Row row(std::int64_t i, std::int64_t j0) const {
        // No partial sums (and no buffer for them) when k is one piece.
        return {c + i * ldc + j0, l->partial.p ? l->partial.p + i * 16 * kNv : nullptr,
                gate ? gate + i * ldg + j0 : nullptr};
    }
};

// Columns j0.. (NV vectors, the last `tail`) of every row, piece by piece.
template <int NV>
FLOWLAB_AVX512 void column_block(const Operands& o, const Pieces& pc, std::int64_t m, std::int64_t j0,
                                 __mmask16 tail) {
    const Lists& l = *o.l;
    const float* b = o.b + j0;
    const float* bias = o.bias ? o.bias + j0 : nullptr;
    float* colsum = o.colsum ? o.colsum + j0 : nullptr;
    bool first_chain = true;
    for (std::int64_t q = 0; q < pc.count(); ++q) {
        const bool opens = pc.opens[static_cast<std::size_t>(q)], closes = pc.closes(q);
        const bool last = q + 1 == pc.count();
        if (opens && q > 0) first_chain = false;
        for (std::int64_t i = 0; i < m; i += 2) {
            const std::int64_t i1 = std::min(i + 1, m - 1);
            const Row r0 = o.row(i, j0), r1 = o.row(i1, j0);
            __m512 s0[NV], s1[NV];
            load_part<NV>(r0, opens, s0, tail);
            load_part<NV>(r1, opens, s1, tail);
            const std::int32_t* st0 = l.start.data() + i * o.pieces + q;
            const std::int32_t* st1 = l.start.data() + i1 * o.pieces + q;
            const std::int64_t n1 = i1 == i ? 0 : st1[1] - st1[0];
            sum_pair<NV>(b, l.off.data() + st0[0], l.val.data() + st0[0], st0[1] - st0[0], l.off.data() + st1[0],
                         l.val.data() + st1[0], n1, s0, s1, tail);
            finish_piece<NV>(r0, s0, closes, first_chain, last, bias, o.relu, colsum, tail);
            if (i1 != i) finish_piece<NV>(r1, s1, closes, first_chain, last, bias, o.relu, colsum, tail);
        }
    }
}

// dst[j, i] = src[i, j] for i < rows, j < cols, src rows lds apart, dst rows ldd apart: 16 x 16
// blocks through registers, the edges element by element. Gathers op(A)'s rows when A is stored
// transposed, and writes a transposed result.
FLOWLAB_AVX512 void transpose_strided(const float* src, std::int64_t rows, std::int64_t cols, std::int64_t lds,
                                      float* dst, std::int64_t ldd) {
    std::int64_t i0 = 0;
    for (; i0 + 16 <= rows; i0 += 16) {
        std::int64_t j0 = 0;
        for (; j0 + 16 <= cols; j0 += 16) {
            __m512 r[16];
            for (int t = 0; t < 16; ++t) r[t] = _mm512_loadu_ps(src + (i0 + t) * lds + j0);
            transpose16(r);
            for (int t = 0; t < 16; ++t) _mm512_storeu_ps(dst + (j0 + t) * ldd + i0, r[t]);
        }
        for (; j0 < cols; ++j0)
            for (std::int64_t i = i0; i < i0 + 16; ++i) dst[j0 * ldd + i] = src[i * lds + j0];
    }
    for (; i0 < rows; ++i0)
        for (std::int64_t j = 0; j < cols; ++j) dst[j * ldd + i0] = src[i0 * lds + j];
}

}  // namespace

bool sparse_gemm(std::int64_t m, std::int64_t n, std::int64_t k, bool ta, const float* a, std::int64_t lda,
                 const float* b, std::int64_t ldb, float* c, std::int64_t ldc, std::int64_t chain, double max_density,
                 const float* bias, bool relu, const float* gate, std::int64_t ldg, float* colsum) {
    if (m <= 0 || n <= 0 || k <= 0 || chain <= 0) return false;
    // Offsets into B are 32-bit.
    if (static_cast<double>(k) * static_cast<double>(ldb) >= 2147483647.0) return false;
    Lists& l = lists();
    const float* rows = a;
    std::int64_t ld = lda;
    if (ta) {
        rows = l.panel.get(m * k);
        transpose_strided(a, k, m, lda, l.panel.p, k);
        ld = k;
    }
    const Pieces pc(k, chain);
    const std::int64_t pieces = pc.count();
    l.off.resize(static_cast<std::size_t>(m * k + 16));
    l.val.resize(static_cast<std::size_t>(m * k + 16));
    l.start.resize(static_cast<std::size_t>(m * pieces + 1));
    std::int64_t pos = 0;
    for (std::int64_t i = 0; i < m; ++i)
        pos = compress_row(rows + i * ld, pc, ldb, l.off.data(), l.val.data(), l.start.data() + i * pieces, pos);
    l.start[static_cast<std::size_t>(m * pieces)] = static_cast<std::int32_t>(pos);
    // Too many nonzeros: the dense kernel is faster (the caller runs it; the bits are the same).
    if (static_cast<double>(pos) > max_density * static_cast<double>(m) * static_cast<double>(k)) return false;
    if (pieces > 1) l.partial.get(m * 16 * kNv);
    const Operands o{&l, pieces, b, c, ldc, bias, relu, gate, ldg, gate ? colsum : nullptr};
    for (std::int64_t j0 = 0; j0 < n; j0 += 16 * kNv) {
        const std::int64_t cols = std::min<std::int64_t>(16 * kNv, n - j0);
        const int nv = static_cast<int>((cols + 15) / 16);
        const std::int64_t rem = cols - 16 * (nv - 1);
        const __mmask16 tail = rem >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << rem) - 1);
        switch (nv) {
            case 8: column_block<8>(o, pc, m, j0, tail); break;
            case 7: column_block<7>(o, pc, m, j0, tail); break;
            case 6: column_block<6>(o, pc, m, j0, tail); break;
            case 5: column_block<5>(o, pc, m, j0, tail); break;
            case 4: column_block<4>(o, pc, m, j0, tail); break;
            case 3: column_block<3>(o, pc, m, j0, tail); break;
            case 2: column_block<2>(o, pc, m, j0, tail); break;
            default: column_block<1>(o, pc, m, j0, tail); break;
        }
    }
    return true;
}

bool sparse_gemm_ct(std::int64_t m, std::int64_t n, std::int64_t k, bool ta, const float* a, std::int64_t lda,
                    const float* b, std::int64_t ldb, float* c, std::int64_t ldc, std::int64_t chain,
                    double max_density) {
    Lists& l = lists();
    float* out = l.out.get(m * n);
    if (!sparse_gemm(m, n, k, ta, a, lda, b, ldb, out, n, chain, max_density, nullptr, false, nullptr, 0, nullptr))
        return false;
    transpose_strided(out, m, n, n, c, ldc);
    return true;
}

}  // namespace flowlab::backend::avx512
