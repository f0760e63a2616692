// Skinny products on AVX-512 (gemm_avx512.hpp): the same sums in the same order as
// linalg.cpp's portable loops, with the epilogue (bias, ReLU, gate) applied while a row is in
// registers instead of in further passes over C, and enough independent sums side by side to
// keep the FMA units busy (the portable loops wait on one chain at a time).
#include "backend/gemm_avx512.hpp"
#include "backend/avx512_transpose.hpp"

#include <immintrin.h>

#include <algorithm>

namespace flowlab::backend::avx512 {

namespace {

#define FLOWLAB_AVX512 __attribute__((target("avx512f")))

// MR rows of C (1 or 2, `c_step` apart), columns [0, 16 NV) from c (the last vector `mask`
// wide): beta C (0: none; 1: C), then + A[i, kk] B[kk, :] for kk = 0, 1, ... each as an FMA,
// then the epilogue: + bias, r < 0 ? 0 : r (NaN and -0 kept), gate > 0 ? r : 0. Two rows share
// every load of B, the bias and the call: a batch of 2-d rows (1 -> 128 layers) is a few FMAs a
// row, and a product summed over a long k (a weight gradient's 2 rows over 512 samples)
// streams B once instead of twice. Each output's operations and their order are those of one
// row alone.
template <int NV, int MR>
FLOWLAB_AVX512 void axpy_row(std::int64_t k, const float* a, std::int64_t a_step, std::int64_t a_row, const float* b,
                             std::int64_t ldb, float* c, std::int64_t c_step, __mmask16 mask, float beta,
                             const float* bias, bool relu, const float* gate) {
    auto load = [mask](const float* p, int v) {
        return v == NV - 1 ? _mm512_maskz_loadu_ps(mask, p + 16 * v) : _mm512_loadu_ps(p + 16 * v);
    };
    const __m512 zero = _mm512_setzero_ps();
    __m512 acc[MR][NV];
#pragma GCC unroll 2
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
            acc[r][v] = beta == 0.0f ? zero : load(c + r * c_step, v);
            if (beta != 0.0f && beta != 1.0f) acc[r][v] = _mm512_mul_ps(acc[r][v], _mm512_set1_ps(beta));
        }
    for (std::int64_t kk = 0; kk < k; ++kk) {
        __m512 bv[NV];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) bv[v] = load(b + kk * ldb, v);
#pragma GCC unroll 2
        for (int r = 0; r < MR; ++r) {
            const __m512 av = _mm512_set1_ps(a[r * a_row + kk * a_step]);
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
        }
    }
    __m512 bb[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bb[v] = bias ? load(bias, v) : zero;
#pragma GCC unroll 2
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
            __m512 x = acc[r][v];
            if (bias) x = _mm512_add_ps(x, bb[v]);
            if (relu) x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero, _CMP_LT_OQ), x, zero);
            if (gate) x = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(load(gate + r * c_step, v), zero, _CMP_GT_OQ), x);
            float* out = c + r * c_step + 16 * v;
            if (v == NV - 1)
                _mm512_mask_storeu_ps(out, mask, x);
            else
                _mm512_storeu_ps(out, x);
        }
}

using AxpyRowFn = void (*)(std::int64_t, const float*, std::int64_t, std::int64_t, const float*, std::int64_t, float*,
                           std::int64_t, __mmask16, float, const float*, bool, const float*);
template <int MR>
constexpr AxpyRowFn kAxpyRow[8] = {&axpy_row<1, MR>, &axpy_row<2, MR>, &axpy_row<3, MR>, &axpy_row<4, MR>,
                                   &axpy_row<5, MR>, &axpy_row<6, MR>, &axpy_row<7, MR>, &axpy_row<8, MR>};

// 16 / N rows of dots with N columns of Bt side by side: 16 independent FMA chains (15 for
// N = 3); rows < 16 / N for the last block.
template <int N>
FLOWLAB_AVX512 void dot_block(std::int64_t rows, std::int64_t k, const float* a, const float* bt, float* c,
                              const float* bias, bool relu) {
    constexpr int kRows = 16 / N, kDots = kRows * N;
    const std::int64_t full = k / 16 * 16;
    const __mmask16 tail = static_cast<__mmask16>((1u << (k - full)) - 1u);
    __m512 acc[kDots];
#pragma GCC unroll 16
    for (int d = 0; d < kDots; ++d) acc[d] = _mm512_setzero_ps();
    // Rows past `rows` repeat the last one (their sums are not stored).
    const float* x[kRows];
    for (int r = 0; r < kRows; ++r) x[r] = a + std::min<std::int64_t>(r, rows - 1) * k;
    for (std::int64_t kk = 0; kk < full; kk += 16) {
        __m512 y[N];
#pragma GCC unroll 4
        for (int j = 0; j < N; ++j) y[j] = _mm512_loadu_ps(bt + j * k + kk);
#pragma GCC unroll 16
        for (int r = 0; r < kRows; ++r) {
            const __m512 xv = _mm512_loadu_ps(x[r] + kk);
#pragma GCC unroll 4
            for (int j = 0; j < N; ++j) acc[r * N + j] = _mm512_fmadd_ps(xv, y[j], acc[r * N + j]);
        }
    }
    if (tail) {
#pragma GCC unroll 16
        for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
            for (int j = 0; j < N; ++j)
                acc[r * N + j] = _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(tail, x[r] + full),
                                                       _mm512_maskz_loadu_ps(tail, bt + j * k + full), acc[r * N + j],
                                                       tail);
    }
    // The lanes added in order to 0, the dots side by side: transposed, lane l of every dot is
    // one vector, and 16 vector adds give all the sums.
    __m512 col[16];
#pragma GCC unroll 16
    for (int d = 0; d < 16; ++d) col[d] = d < kDots ? acc[d] : _mm512_setzero_ps();
    transpose16(col);
    __m512 total = _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int l = 0; l < 16; ++l) total = _mm512_add_ps(total, col[l]);
    alignas(64) float sum[16];
    _mm512_store_ps(sum, total);
    for (std::int64_t r = 0; r < rows; ++r)
        for (int j = 0; j < N; ++j) {
            float s = sum[r * N + j];
            if (bias) s += bias[j];
            if (relu) s = s < 0.0f ? 0.0f : s;
            c[r * N + j] = s;
        }
}

using DotBlockFn = void (*)(std::int64_t, std::int64_t, const float*, const float*, float*, const float*, bool);
constexpr DotBlockFn kDotBlock[4] = {&dot_block<1>, &dot_block<2>, &dot_block<3>, &dot_block<4>};

}  // namespace

void axpy_rows(std::int64_t m, std::int64_t n, std::int64_t k, const float* a, bool ta, const float* b, float* c,
               float beta, const float* bias, bool relu, const float* gate) {
    // A[i, kk] at a[i k + kk], or a[kk m + i] when transposed.
    const std::int64_t row_step = ta ? 1 : k, k_step = ta ? m : 1;
    for (std::int64_t j0 = 0; j0 < n; j0 += 128) {
        const std::int64_t cols = std::min<std::int64_t>(128, n - j0), nv = (cols + 15) / 16;
        const std::int64_t last = cols - 16 * (nv - 1);
        const auto mask = static_cast<__mmask16>(last == 16 ? 0xFFFF : (1u << last) - 1u);
        for (std::int64_t i = 0; i < m; i += 2) {
            const AxpyRowFn fn = i + 1 < m ? kAxpyRow<2>[nv - 1] : kAxpyRow<1>[nv - 1];
            fn(k, a + i * row_step, k_step, row_step, b + j0, n, c + i * n + j0, n, mask, beta,
               bias ? bias + j0 : nullptr, relu, gate ? gate + i * n + j0 : nullptr);
        }
    }
}

FLOWLAB_AVX512 void transpose(const float* src, std::int64_t m, std::int64_t n, float* dst) {
    const std::int64_t m16 = m / 16 * 16, n16 = n / 16 * 16;
    for (std::int64_t i0 = 0; i0 < m16; i0 += 16)
        for (std::int64_t j0 = 0; j0 < n16; j0 += 16) {
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + (i0 + i) * n + j0);
            transpose16(r);
#pragma GCC unroll 16
            for (int j = 0; j < 16; ++j) _mm512_storeu_ps(dst + (j0 + j) * m + i0, r[j]);
        }
    // The edges, where a side is not a multiple of 16.
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t j = i < m16 ? n16 : 0; j < n; ++j) dst[j * m + i] = src[i * n + j];
}

void dot_rows(std::int64_t m, std::int64_t n, std::int64_t k, const float* a, const float* bt, float* c,
              const float* bias, bool relu) {
    const std::int64_t rows = 16 / n;
    for (std::int64_t i0 = 0; i0 < m; i0 += rows)
        kDotBlock[n - 1](std::min(rows, m - i0), k, a + i0 * k, bt, c + i0 * n, bias, relu);
}

}  // namespace flowlab::backend::avx512
