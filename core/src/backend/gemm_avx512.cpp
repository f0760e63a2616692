// flowlab's own f32 GEMM tile for CPUs with AVX-512 (see gemm_avx512.hpp for why).
//
// The classic register-blocked scheme: C is computed in blocks of 6 rows x 4 vectors of 16
// columns (14 rows x 2 or 1 vectors for the last columns), each block's accumulators in
// registers for a whole slice of at most kKc of the summed dimension; op(A) and B are read in
// place (a broadcast per row of A and a load per vector of B per k step). Every function that
// uses AVX-512 carries the target attribute itself, so that nothing here changes how the rest
// of the library is compiled for CPUs without it.
#include "backend/gemm_avx512.hpp"
#include "backend/avx512_transpose.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

namespace flowlab::backend::avx512 {

namespace {

#define FLOWLAB_AVX512 __attribute__((target("avx512f")))

// 14 rows x 2 vectors = 28 accumulators of the 32 registers: every k step is 2 loads of B, 14
// broadcasts of A and 28 FMAs, enough independent sums to cover the FMA latency. Where 64
// columns remain, 6 rows x 4 vectors: 24 FMAs for 6 broadcasts and 4 loads, which measured 1-6 %
// faster on one core (the more so the shorter the sum: 110 against 104 GFLOP/s at k = 18).
constexpr int kMr = 14;
constexpr int kMrWide = 6;
constexpr std::int64_t kKc = 256;

// What follows the sum over k (gemm_avx512.hpp): for a block, pointers at its first row and
// column.
struct Epilogue {
    const float* bias;
    float beta;
    bool relu;
    const float* gate;  // null: none
    std::int64_t ldg;
    float* colsum;
    Epilogue at(std::int64_t i0, std::int64_t j0) const {
        return {bias ? bias + j0 : nullptr, beta, relu, gate ? gate + i0 * ldg + j0 : nullptr, ldg,
                colsum ? colsum + j0 : nullptr};
    }
};

// C[MR rows, NV vectors] (+)= op(A)[MR rows, kc] B[kc, NV vectors], with op(A)[i, k] at
// a[k lda + i] (TA) or a[i lda + k]; B rows `ldb` apart; the last vector covers `mask`
// columns. first: start from 0 (plus beta C), else from C; last: add the bias, apply the
// ReLU, then the gate (adding the gated rows to the column sums, in row order) before the
// store.
template <int MR, int NV, bool TA>
FLOWLAB_AVX512 void block(std::int64_t kc, const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float* c,
                          std::int64_t ldc, __mmask16 mask, const Epilogue& e, bool first, bool last) {
    const float* bias = e.bias;
    const float beta = e.beta;
    const bool relu = e.relu;
    // The gate's lines are wanted after the sum: ask for them now, while k runs.
    if (last && e.gate)
        for (int i = 0; i < MR; ++i)
            for (int v = 0; v < NV; ++v) _mm_prefetch(reinterpret_cast<const char*>(e.gate + i * e.ldg + v * 16), _MM_HINT_T0);
    __m512 acc[MR][NV];
    if (first) {
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
    } else {
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v)
                acc[i][v] = v == NV - 1 ? _mm512_maskz_loadu_ps(mask, c + i * ldc + v * 16)
                                        : _mm512_loadu_ps(c + i * ldc + v * 16);
    }
    for (std::int64_t k = 0; k < kc; ++k) {
        __m512 bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            bv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(mask, b + v * 16) : _mm512_loadu_ps(b + v * 16);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const __m512 av = _mm512_set1_ps(TA ? a[i] : a[i * lda]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
        }
        a += TA ? lda : 1;
        b += ldb;
    }
    if (last && (bias || beta != 0.0f || relu)) {
        __m512 bb[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            bb[v] = !bias ? _mm512_setzero_ps()
                          : (v == NV - 1 ? _mm512_maskz_loadu_ps(mask, bias + v * 16) : _mm512_loadu_ps(bias + v * 16));
        const __m512 beta_v = _mm512_set1_ps(beta), zero = _mm512_setzero_ps();
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                __m512 r = _mm512_add_ps(acc[i][v], bb[v]);
                // beta C is added after the bias, as oneDNN's sum post-op does; only a single
                // slice (first and last) still sees the caller's C here.
                if (beta != 0.0f && first) {
                    const __m512 old = v == NV - 1 ? _mm512_maskz_loadu_ps(mask, c + i * ldc + v * 16)
                                                   : _mm512_loadu_ps(c + i * ldc + v * 16);
                    r = _mm512_fmadd_ps(beta_v, old, r);
                }
                if (relu) r = _mm512_max_ps(r, zero);
                acc[i][v] = r;
            }
    } else if (first && beta != 0.0f) {
        // Several slices: the first folds in beta C before C holds partial sums.
        const __m512 beta_v = _mm512_set1_ps(beta);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                const __m512 old = v == NV - 1 ? _mm512_maskz_loadu_ps(mask, c + i * ldc + v * 16)
                                               : _mm512_loadu_ps(c + i * ldc + v * 16);
                acc[i][v] = _mm512_fmadd_ps(beta_v, old, acc[i][v]);
            }
    }
    if (last && e.gate) {
        // r = gate > 0 ? r : 0, then colsum += r row after row (a ReLU's backward and its
        // bias gradient, without another pass over C).
        const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            const __mmask16 lanes = v == NV - 1 ? mask : static_cast<__mmask16>(0xFFFF);
            __m512 sum = _mm512_maskz_loadu_ps(lanes, e.colsum + v * 16);
#pragma GCC unroll 16
            for (int i = 0; i < MR; ++i) {
                const __m512 g = _mm512_maskz_loadu_ps(lanes, e.gate + i * e.ldg + v * 16);
                acc[i][v] = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(g, zero, _CMP_GT_OQ), acc[i][v]);
                sum = _mm512_add_ps(sum, acc[i][v]);
            }
            _mm512_mask_storeu_ps(e.colsum + v * 16, lanes, sum);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            if (v == NV - 1)
                _mm512_mask_storeu_ps(c + i * ldc + v * 16, mask, acc[i][v]);
            else
                _mm512_storeu_ps(c + i * ldc + v * 16, acc[i][v]);
        }
}

using BlockFn = void (*)(std::int64_t, const float*, std::int64_t, const float*, std::int64_t, float*, std::int64_t,
                         __mmask16, const Epilogue&, bool, bool);

template <int NV, bool TA, int... R>
constexpr BlockFn pick_rows(int mr, std::integer_sequence<int, R...>) {
    BlockFn f = nullptr;
    ((f = (mr == R + 1 ? &block<R + 1, NV, TA> : f)), ...);
    return f;
}

// The block function for mr rows (1..kMr; 1..kMrWide with 4 vectors), nv vectors (1, 2 or 4)
// and A transposed or not.
BlockFn block_fn(int mr, int nv, bool ta) {
    constexpr auto rows = std::make_integer_sequence<int, kMr>{};
    constexpr auto wide_rows = std::make_integer_sequence<int, kMrWide>{};
    if (nv == 4) return ta ? pick_rows<4, true>(mr, wide_rows) : pick_rows<4, false>(mr, wide_rows);
    if (ta) return nv == 1 ? pick_rows<1, true>(mr, rows) : pick_rows<2, true>(mr, rows);
    return nv == 1 ? pick_rows<1, false>(mr, rows) : pick_rows<2, false>(mr, rows);
}

// Columns [0, W) of C, W <= 8 - the last columns of a product whose width is not a multiple of
// 16, which the blocks above would compute as a whole vector per row (W3's 36 = 32 + 4, 18 =
// 16 + 2) - with A not transposed and one slice of k: the lanes run over 16 rows instead,
// A's 16 x 16 tiles transposed in registers and B[k, j] broadcast, W FMAs per 16 rows and k
// step instead of 16. G groups of 16 rows side by side keep G W sums in flight. Each output
// sums the same products in the same order as in a block (fma is symmetric in its factors),
// and the epilogue is the blocks' own, element by element.
template <int W>
FLOWLAB_AVX512 void narrow_tail(std::int64_t m, std::int64_t k, const float* a, std::int64_t lda, const float* b,
                                std::int64_t ldb, float* c, std::int64_t ldc, const Epilogue& e) {
    const float* bias = e.bias;
    const float beta = e.beta;
    const bool relu = e.relu;
    constexpr int G = W >= 8 ? 1 : (W >= 3 ? 2 : 4);
    constexpr int kRows = 16 * G;
    const bool post = bias || beta != 0.0f || relu;
    for (std::int64_t i0 = 0; i0 < m; i0 += kRows) {
        // Rows past m repeat the last one (their sums are not stored).
        const float* row[kRows];
        for (int r = 0; r < kRows; ++r) row[r] = a + std::min<std::int64_t>(i0 + r, m - 1) * lda;
        __m512 acc[G][W];
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
            for (int j = 0; j < W; ++j) acc[g][j] = _mm512_setzero_ps();
        for (std::int64_t k0 = 0; k0 < k; k0 += 16) {
            const int kn = static_cast<int>(std::min<std::int64_t>(16, k - k0));
            const __mmask16 km = static_cast<__mmask16>(kn == 16 ? 0xFFFF : (1u << kn) - 1u);
#pragma GCC unroll 4
            for (int g = 0; g < G; ++g) {
                __m512 t[16];
#pragma GCC unroll 16
                for (int r = 0; r < 16; ++r) t[r] = _mm512_maskz_loadu_ps(km, row[16 * g + r] + k0);
                transpose16(t);  // t[kk]: A[i0 + 16 g + lane, k0 + kk]
#pragma GCC unroll 16
                for (int kk = 0; kk < 16; ++kk)
                    if (kk < kn) {
                        const float* bk = b + (k0 + kk) * ldb;
#pragma GCC unroll 8
                        for (int j = 0; j < W; ++j) acc[g][j] = _mm512_fmadd_ps(t[kk], _mm512_set1_ps(bk[j]), acc[g][j]);
                    }
            }
        }
        alignas(64) float sums[G][W][16];
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
            for (int j = 0; j < W; ++j) _mm512_store_ps(sums[g][j], acc[g][j]);
        const std::int64_t rows = std::min<std::int64_t>(kRows, m - i0);
        for (std::int64_t r = 0; r < rows; ++r)
            for (int j = 0; j < W; ++j) {
                float v = sums[r / 16][j][r % 16];
                float* out = c + (i0 + r) * ldc + j;
                if (post) {
                    // As block(): + bias (or + 0), + beta C as an FMA, then max(v, 0).
                    v += bias ? bias[j] : 0.0f;
                    if (beta != 0.0f) v = std::fma(beta, *out, v);
                    if (relu) v = v > 0.0f ? v : 0.0f;
                }
                if (e.gate) {
                    v = e.gate[(i0 + r) * e.ldg + j] > 0.0f ? v : 0.0f;
                    e.colsum[j] += v;
                }
                *out = v;
            }
    }
}

using TailFn = void (*)(std::int64_t, std::int64_t, const float*, std::int64_t, const float*, std::int64_t, float*,
                        std::int64_t, const Epilogue&);
constexpr TailFn kNarrowTail[8] = {&narrow_tail<1>, &narrow_tail<2>, &narrow_tail<3>, &narrow_tail<4>,
                                   &narrow_tail<5>, &narrow_tail<6>, &narrow_tail<7>, &narrow_tail<8>};

}  // namespace

FLOWLAB_AVX512 void stream_copy(float* dst, const float* src, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
    for (; i < n; ++i) dst[i] = src[i];
    _mm_sfence();
}

bool available() {
    static const bool ok = __builtin_cpu_supports("avx512f");
    return ok;
}

void gemm_tile(std::int64_t m, std::int64_t n, std::int64_t k, bool ta, const float* a, std::int64_t lda,
               const float* b, std::int64_t ldb, float* c, std::int64_t ldc, const float* bias, float beta, bool relu,
               const float* gate, std::int64_t ldg, float* colsum) {
    const Epilogue epi{bias, beta, relu, gate, ldg, colsum};
    // Columns [0, wide) in blocks of 4 vectors, then blocks of 2 and 1, and a last few columns
    // (at most 8 past a multiple of 16) apart when A is not transposed and k is one slice.
    // Every output's sum runs over k in the same order whatever its block.
    const std::int64_t full = n / 16 * 16, narrow = n - full;
    const bool apart = !ta && k <= kKc && m >= 16 && narrow > 0 && narrow <= 8;
    const std::int64_t blocked = apart ? full : n;
    const std::int64_t wide = blocked / 64 * 64;
    for (std::int64_t k0 = 0; k0 < k; k0 += kKc) {
        const std::int64_t kc = std::min(kKc, k - k0);
        const bool first = k0 == 0, last = k0 + kc == k;
        const float* bs = b + k0 * ldb;
        for (std::int64_t i0 = 0; i0 < m && wide > 0; i0 += kMrWide) {
            const std::int64_t mr = std::min<std::int64_t>(kMrWide, m - i0);
            const float* ai = ta ? a + k0 * lda + i0 : a + i0 * lda + k0;
            const BlockFn fn = block_fn(static_cast<int>(mr), 4, ta);
            for (std::int64_t j0 = 0; j0 < wide; j0 += 64)
                fn(kc, ai, lda, bs + j0, ldb, c + i0 * ldc + j0, ldc, 0xFFFF, epi.at(i0, j0), first, last);
        }
        for (std::int64_t i0 = 0; i0 < m && wide < blocked; i0 += kMr) {
            const std::int64_t mr = std::min<std::int64_t>(kMr, m - i0);
            // Row i0, column k0 of op(A).
            const float* ai = ta ? a + k0 * lda + i0 : a + i0 * lda + k0;
            for (std::int64_t j0 = wide; j0 < blocked; j0 += 32) {
                const std::int64_t cols = std::min<std::int64_t>(32, blocked - j0);
                const int nv = cols > 16 ? 2 : 1;
                const int tail = static_cast<int>(cols - 16 * (nv - 1));
                const __mmask16 mask = static_cast<__mmask16>(tail >= 16 ? 0xFFFF : (1u << tail) - 1u);
                block_fn(static_cast<int>(mr), nv, ta)(kc, ai, lda, bs + j0, ldb, c + i0 * ldc + j0, ldc, mask,
                                                       epi.at(i0, j0), first, last);
            }
        }
    }
    if (apart)
        kNarrowTail[narrow - 1](m, k, a, lda, b + full, ldb, c + full, ldc, epi.at(0, full));
}

}  // namespace flowlab::backend::avx512
