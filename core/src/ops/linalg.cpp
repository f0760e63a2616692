// GEMM-based ops: kern::gemm (f32 through oneDNN's matmul primitive or, for skinny shapes,
// vector loops; f64 on a plain loop) and matmul with its backward rule. linear.cpp builds the
// linear layers on gemm_impl.
#include "flowlab/ops/linalg.hpp"

#include <cstring>

#include "backend/gemm_avx512.hpp"
#include "backend/onednn.hpp"
#include "ops/ops_internal.hpp"

namespace flowlab {

namespace {

// f32 through the shared oneDNN context's cached matmul primitives.
void gemm_f32(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, std::int64_t m, std::int64_t n,
              std::int64_t k, float alpha, float beta, const Tensor* bias, bool relu) {
    const backend::Gemm g{.m = m, .n = n, .k = k, .trans_a = ta, .trans_b = tb, .bias = bias != nullptr,
                          .relu = relu, .alpha = alpha, .beta = beta};
    backend::sgemm(g, a.data<float>(), b.data<float>(), c.data<float>(), bias ? bias->data<float>() : nullptr);
}

// f64 reference GEMM (numerical checks only): i-k-j order over row-major copies of op(A), op(B).
void gemm_f64(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, std::int64_t m, std::int64_t n,
              std::int64_t k, double alpha, double beta, const Tensor* bias) {
    auto rowmajor = [](const Tensor& t, bool trans) {
        if (!trans) return t;
        const std::int64_t r = t.size(0), q = t.size(1);
        Tensor o = Tensor::empty({q, r}, DType::f64);
        const double* s = t.data<double>();
        double* d = o.data<double>();
        for (std::int64_t i = 0; i < r; ++i)
            for (std::int64_t j = 0; j < q; ++j) d[j * r + i] = s[i * q + j];
        return o;
    };
    const Tensor A = rowmajor(a, ta), B = rowmajor(b, tb);
    const double* pa = A.data<double>();
    const double* pb = B.data<double>();
    const double* pbias = bias ? bias->data<double>() : nullptr;
    double* pc = c.data<double>();
    std::vector<double> acc(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < m; ++i) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (std::int64_t kk = 0; kk < k; ++kk) {
            const double x = pa[i * k + kk];
            const double* row = pb + kk * n;
            for (std::int64_t j = 0; j < n; ++j) acc[j] += x * row[j];
        }
        double* out = pc + i * n;
        for (std::int64_t j = 0; j < n; ++j) {
            const double v = alpha * (acc[j] + (pbias ? pbias[j] : 0.0));
            out[j] = beta == 0.0 ? v : v + beta * out[j];
        }
    }
}

// ------------------------------------------------------------------------------ skinny GEMMs
// Products with a dimension of at most kSkinny (the 1 -> 128 and 128 -> 2 layers of a 2-d
// coupling, and their gradients) run 3-6x faster as plain vector loops than through oneDNN's
// blocked kernels, which are built for big tiles. Both forms below keep the long dimension
// contiguous; an operand that would be strided is copied first (it is small by construction).
constexpr std::int64_t kSkinny = 4;

bool is_skinny(std::int64_t m, std::int64_t n, std::int64_t k) {
    return m <= kSkinny || n <= kSkinny || k <= kSkinny;
}

// Row-major copy of op(X), [rows, cols] after the optional transpose, into `out`.
template <class T>
void materialize(const T* x, bool trans, std::int64_t rows, std::int64_t cols, std::vector<T>& out) {
    out.resize(static_cast<std::size_t>(rows * cols));
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) out[r * cols + c] = trans ? x[c * rows + r] : x[r * cols + c];
}

template <class T>
std::vector<T> materialize(const T* x, bool trans, std::int64_t rows, std::int64_t cols) {
    std::vector<T> out;
    materialize(x, trans, rows, cols, out);
    return out;
}

// out[j] = alpha * acc[j] + beta * out[j], where beta == 0 ignores out (it may hold NaN).
template <class T>
inline void store_row(T* out, const T* acc, std::int64_t n, T alpha, T beta) {
    if (beta == T(0)) {
        for (std::int64_t j = 0; j < n; ++j) out[j] = alpha * acc[j];
    } else {
        for (std::int64_t j = 0; j < n; ++j) out[j] = alpha * acc[j] + beta * out[j];
    }
}

// C[i, :] = alpha * sum_k op(A)(i, k) * B'[k, :] + beta * C[i, :] with B' row-major [K, N]
// (contiguous rows), accumulated straight into C's contiguous rows.
template <class T>
void gemm_axpy(const T* a, bool ta, const T* b, T* c, std::int64_t m, std::int64_t n, std::int64_t k,
               T alpha, T beta) {
    for (std::int64_t i = 0; i < m; ++i) {
        T* out = c + i * n;
        if (beta == T(0)) {
#pragma omp simd
            for (std::int64_t j = 0; j < n; ++j) out[j] = T(0);
        } else if (beta != T(1)) {
#pragma omp simd
            for (std::int64_t j = 0; j < n; ++j) out[j] *= beta;
        }
        for (std::int64_t kk = 0; kk < k; ++kk) {
            const T x = alpha * (ta ? a[kk * m + i] : a[i * k + kk]);
            const T* row = b + kk * n;
#pragma omp simd
            for (std::int64_t j = 0; j < n; ++j) out[j] += x * row[j];
        }
    }
}

// C[i, j] = alpha * <A row i, B^T row j> + beta * C[i, j] for n <= kSkinny, with each dot summed
// the way a vectorised reduction of kLanes lanes sums it (lane l takes elements l, l + kLanes,
// ... in order, then the lanes are added in order into 0): the bits an `omp simd` reduction per
// dot gave on AVX-512 when k is a multiple of 16 (a 128-wide hidden layer), which keeps
// trained models where they were. The lane sums are sequential chains; a block of rows runs
// them side by side, where one dot after another waited on each add (perf: this loop's share
// of a W1 step 4.4 -> 3.5 %).
template <class T>
void dot_rows(const T* a, const T* bt, T* c, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, T beta) {
    constexpr std::int64_t kLanes = 16, kBlock = 8;  // dots per block: kBlock rows x n columns
    T part[kBlock * kSkinny][kLanes];
    T acc[kBlock * kSkinny];
    for (std::int64_t i0 = 0; i0 < m; i0 += kBlock) {
        const std::int64_t rows = std::min(kBlock, m - i0), dots = rows * n;
        for (std::int64_t d = 0; d < dots; ++d) {
            const T* x = a + (i0 + d / n) * k;
            const T* y = bt + (d % n) * k;
            T* p = part[d];
            for (std::int64_t l = 0; l < kLanes; ++l) p[l] = T(0);
            std::int64_t kk = 0;
            for (; kk + kLanes <= k; kk += kLanes)
#pragma omp simd
                for (std::int64_t l = 0; l < kLanes; ++l) p[l] += x[kk + l] * y[kk + l];
            for (std::int64_t l = 0; kk + l < k; ++l) p[l] += x[kk + l] * y[kk + l];
        }
        for (std::int64_t d = 0; d < dots; ++d) acc[d] = T(0);
        for (std::int64_t l = 0; l < kLanes; ++l)
            for (std::int64_t d = 0; d < dots; ++d) acc[d] += part[d][l];
        for (std::int64_t r = 0; r < rows; ++r) store_row(c + (i0 + r) * n, acc + r * n, n, alpha, beta);
    }
}

template <class T>
void gemm_skinny(const T* a, bool ta, const T* b, bool tb, T* c, std::int64_t m, std::int64_t n, std::int64_t k,
                 T alpha, T beta, bool dot_form) {
    if (dot_form) {
        if (!ta) {
            // Dot form: C[i, j] = <A row i, op(B) column j>, with op(B)^T as contiguous rows.
            const std::vector<T> bt = materialize(b, !tb, n, k);  // op(B)^T, [N, K]
            dot_rows(a, bt.data(), c, m, n, k, alpha, beta);
        } else {
            // C^T = op(B)^T A_stored: A stored [K, M] has contiguous rows. C^T is built in a
            // small buffer ([N, M], N tiny) and stored transposed.
            const std::vector<T> bt = materialize(b, !tb, n, k);  // op(B)^T as the left operand
            std::vector<T> ct(static_cast<std::size_t>(n * m));
            gemm_axpy(bt.data(), false, a, ct.data(), n, m, k, T(1), T(0));
            for (std::int64_t i = 0; i < m; ++i) {
                T* out = c + i * n;
                for (std::int64_t j = 0; j < n; ++j)
                    out[j] = beta == T(0) ? alpha * ct[j * m + i] : alpha * ct[j * m + i] + beta * out[j];
            }
        }
        return;
    }
    // Axpy form over contiguous rows of op(B).
    if (tb) {
        const std::vector<T> bk = materialize(b, true, k, n);
        gemm_axpy(a, ta, bk.data(), c, m, n, k, alpha, beta);
    } else {
        gemm_axpy(a, ta, b, c, m, n, k, alpha, beta);
    }
}

[[noreturn]] void gemm_shape_error(const char* op, const Tensor& a, bool ta, const Tensor& b, bool tb,
                                   const std::string& why) {
    throw ShapeError(std::string(op) + ": shapes " + shape_str(a.shape()) + (ta ? "^T" : "") + " and " +
                     shape_str(b.shape()) + (tb ? "^T" : "") + " " + why);
}

// x < 0 ? 0 : x over C, the ReLU of the unfused op (NaN stays NaN).
template <class T>
void relu_inplace(T* c, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) c[i] = c[i] < 0 ? T(0) : c[i];
}

// c[i] = gate[i] > 0 ? c[i] : 0 over [i0, i1): the backward pass of a ReLU whose output is gate.
void apply_gate(float* c, const float* gate, std::int64_t i0, std::int64_t i1) {
#pragma omp simd
    for (std::int64_t i = i0; i < i1; ++i) c[i] = gate[i] > 0 ? c[i] : 0.0f;
}

// Rows r0..r1 of a skinny product C = alpha * (op(A) op(B) + bias) + beta * C (ReLU when
// `relu`, then gate[i] > 0 ? C[i] : 0 when `gate`, a tensor of C's shape); m is the whole
// product's row count. Rows r0..r1 of C read rows r0..r1 of A only when A is not transposed. The
// form is chosen on the whole product, so that every row is computed the same way however the
// rows are split. On AVX-512 (alpha 1) the same sums run in the backend's kernels
// (gemm_avx512.hpp), with the epilogue applied while a row is in registers.
void skinny_rows(const float* pa, bool ta, const float* pb, bool tb, float* pc, std::int64_t m, std::int64_t n,
                 std::int64_t k, std::int64_t r0, std::int64_t r1, float alpha, float beta, const float* pbias,
                 bool relu, const float* gate = nullptr) {
    const bool dot_form = n <= kSkinny && n < m;
    // Transposed A only whole (r0 = 0, r1 = m), as gemm_impl calls it.
    const bool fast_dot = ta ? beta == 0.0f || beta == 1.0f : beta == 0.0f;
    if (alpha == 1.0f && (!dot_form || fast_dot) && backend::avx512::available()) {
        // The operand read in rows: op(B)^T [n, k] (dot form) or op(B) [k, n] (axpy form); a
        // transposed copy when B is stored the other way (small by construction).
        thread_local std::vector<float> rows_copy, ct;
        const float* rows_b = pb;
        if (dot_form != tb) {
            materialize(pb, true, dot_form ? n : k, dot_form ? k : n, rows_copy);
            rows_b = rows_copy.data();
        }
        const float* g = gate ? gate + r0 * n : nullptr;
        if (!dot_form) {
            backend::avx512::axpy_rows(r1 - r0, n, k, ta ? pa : pa + r0 * k, ta, rows_b, pc + r0 * n, beta, pbias, relu,
                                       g);
            return;
        }
        if (!ta) {
            backend::avx512::dot_rows(r1 - r0, n, k, pa + r0 * k, rows_b, pc + r0 * n, pbias, relu);
        } else {
            // C^T [n, m] = op(B)^T A as rows of axpy sums over A's stored rows, then stored
            // transposed (+ C when beta is 1), as gemm_skinny's transposed dot form does.
            ct.resize(static_cast<std::size_t>(n * m));
            backend::avx512::axpy_rows(n, m, k, rows_b, false, pa, ct.data(), 0.0f, nullptr, false, nullptr);
            for (std::int64_t i = 0; i < m; ++i)
                for (std::int64_t j = 0; j < n; ++j) {
                    const float v = ct[static_cast<std::size_t>(j * m + i)];
                    pc[i * n + j] = beta == 0.0f ? v : v + pc[i * n + j];
                }
            for (std::int64_t i = r0; i < r1; ++i) {
                float* row = pc + i * n;
                if (pbias)
                    for (std::int64_t j = 0; j < n; ++j) row[j] += pbias[j];
                if (relu) relu_inplace(row, n);
            }
        }
    } else {
        gemm_skinny(pa + (ta ? 0 : r0 * k), ta, pb, tb, pc + r0 * n, r1 - r0, n, k, alpha, beta, dot_form);
        for (std::int64_t i = r0; i < r1; ++i) {
            float* row = pc + i * n;
            if (pbias) {
#pragma omp simd
                for (std::int64_t j = 0; j < n; ++j) row[j] += alpha * pbias[j];
            }
            if (relu) relu_inplace(row, n);
        }
    }
    if (gate) apply_gate(pc, gate, r0 * n, r1 * n);
}

}  // namespace

namespace detail {
bool gemm_is_skinny(std::int64_t m, std::int64_t n, std::int64_t k) { return is_skinny(m, n, k); }

std::int64_t skinny_grad_state_size(std::int64_t m, std::int64_t n) {
    return backend::avx512::available() ? m * n : 0;
}

bool skinny_grad_block(const float* a, const float* g, std::int64_t m, std::int64_t n, std::int64_t k0,
                       std::int64_t k1, bool first, bool last, float* state, float* c) {
    // skinny_rows' fast paths for A transposed, alpha 1, beta 0, whose sums are FMA chains over
    // k started from zero: a block continues them from the state with beta 1.
    if (!backend::avx512::available()) return false;
    const std::int64_t rows = k1 - k0;
    const float beta = first ? 0.0f : 1.0f;
    if (!(n <= kSkinny && n < m)) {
        // Axpy form: the running sums are C's own entries, kept in the state until the last block.
        backend::avx512::axpy_rows(m, n, rows, a + k0 * m, true, g + k0 * n, state, beta, nullptr, false, nullptr);
        if (last && c != state) std::copy(state, state + m * n, c);
        return true;
    }
    // Transposed dot form: C^T [n, m] = G^T A as axpy sums, G's block transposed into rows.
    thread_local std::vector<float> gt;
    materialize(g + k0 * n, true, n, rows, gt);
    backend::avx512::axpy_rows(n, m, rows, gt.data(), false, a + k0 * m, state, beta, nullptr, false, nullptr);
    if (last)
        for (std::int64_t i = 0; i < m; ++i)
            for (std::int64_t j = 0; j < n; ++j) c[i * n + j] = state[j * m + i];
    return true;
}

void gemm_rows(const float* a, const float* b, bool tb, float* c, std::int64_t m, std::int64_t n, std::int64_t k,
               std::int64_t r0, std::int64_t r1, const float* bias, bool relu, const float* gate, bool sparse_a) {
    if (r1 <= r0 || n == 0) return;
    if (is_skinny(m, n, k)) {
        skinny_rows(a, false, b, tb, c, m, n, k, r0, r1, 1.0f, 0.0f, bias, relu, gate);
        return;
    }
    const backend::Gemm g{.m = r1 - r0, .n = n, .k = k, .trans_a = false, .trans_b = tb, .bias = bias != nullptr,
                          .relu = relu};
    if (sparse_a && backend::sgemm_sparse(g, k, tb ? k : n, n, a + r0 * k, b, c + r0 * n, bias,
                                          gate ? gate + r0 * n : nullptr, n))
        return;
    backend::sgemm_tile(g, k, tb ? k : n, n, a + r0 * k, b, c + r0 * n, bias);
    if (gate) apply_gate(c, gate, r0 * n, r1 * n);
}

void gemm_impl(const char* op, const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, double alpha,
               double beta, const Tensor* bias, bool relu) {
    detail::check_dtypes(op, a, b);
    detail::check_dtypes(op, a, c);
    if (a.dim() != 2 || b.dim() != 2) gemm_shape_error(op, a, ta, b, tb, "are not both 2-d");
    const std::int64_t m = ta ? a.size(1) : a.size(0), k = ta ? a.size(0) : a.size(1);
    const std::int64_t kb = tb ? b.size(1) : b.size(0), n = tb ? b.size(0) : b.size(1);
    if (k != kb) gemm_shape_error(op, a, ta, b, tb, "do not multiply (inner sizes differ)");
    if (c.shape() != Shape{m, n})
        gemm_shape_error(op, a, ta, b, tb, "give [" + std::to_string(m) + ", " + std::to_string(n) +
                                               "], but the output is " + shape_str(c.shape()));
    if (bias) {
        detail::check_dtypes(op, a, *bias);
        if (bias->numel() != n || bias->dim() > 2 || (bias->dim() == 2 && bias->size(0) != 1))
            throw ShapeError(std::string(op) + ": bias " + shape_str(bias->shape()) + " does not match output " +
                             shape_str(c.shape()));
    }
    if (m == 0 || n == 0) return;
    if (relu && (k == 0 || a.dtype() != DType::f32)) {  // the rare paths: unfused
        gemm_impl(op, a, ta, b, tb, c, alpha, beta, bias, false);
        detail::dispatch(c.dtype(), [&](auto tag) { relu_inplace(c.data<decltype(tag)>(), c.numel()); });
        return;
    }
    if (k == 0) {  // op(A) op(B) is all zeros
        if (beta == 0.0)
            c.fill(0.0);
        else
            kern::scale_inplace(c, beta);
        if (bias)
            for (std::int64_t i = 0; i < m; ++i)
                for (std::int64_t j = 0; j < n; ++j) c.set_item(i * n + j, c.item(i * n + j) + alpha * bias->item(j));
        return;
    }
    if (a.dtype() == DType::f32 && is_skinny(m, n, k)) {
        const float* pa = a.data<float>();
        const float* pbias = bias ? bias->data<float>() : nullptr;
        float* pc = c.data<float>();
        auto rows = [&](std::int64_t r0, std::int64_t r1) {
            skinny_rows(pa, ta, b.data<float>(), tb, pc, m, n, k, r0, r1, static_cast<float>(alpha),
                        static_cast<float>(beta), pbias, relu);
        };
        // Sampling 10,000 points of a 2-d flow runs these for 1 -> 128 and 128 -> 2 layers on
        // 10,000 rows: split the rows when C's rows are independent (A not transposed).
        if (!ta && m * std::max(n, k) > 2 * kElementwiseGrain)
            parallel_for(m, std::max<std::int64_t>(16, kElementwiseGrain / std::max(n, k)), rows);
        else
            rows(0, m);
    } else if (a.dtype() == DType::f32)
        gemm_f32(a, ta, b, tb, c, m, n, k, static_cast<float>(alpha), static_cast<float>(beta), bias, relu);
    else
        gemm_f64(a, ta, b, tb, c, m, n, k, alpha, beta, bias);
}
}  // namespace detail

namespace {
using detail::gemm_impl;

std::int64_t out_rows(const Tensor& a, bool ta) { return a.dim() == 2 ? (ta ? a.size(1) : a.size(0)) : 0; }
std::int64_t out_cols(const Tensor& b, bool tb) { return b.dim() == 2 ? (tb ? b.size(0) : b.size(1)) : 0; }

}  // namespace

// ---------------------------------------------------------------------------------- kern

namespace kern {

void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, double alpha, double beta) {
    detail::check_defined("gemm", c);
    gemm_impl("gemm", a, trans_a, b, trans_b, c, alpha, beta, nullptr);
}

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
    detail::check_dtypes("matmul", a, b);
    if (a.dim() != 2 || b.dim() != 2) gemm_shape_error("matmul", a, trans_a, b, trans_b, "are not both 2-d");
    Tensor c = Tensor::empty({out_rows(a, trans_a), out_cols(b, trans_b)}, a.dtype());
    gemm_impl("matmul", a, trans_a, b, trans_b, c, 1.0, 0.0, nullptr);
    return c;
}

}  // namespace kern

// ---------------------------------------------------------------------------------- Var ops

Var matmul(const Var& a, const Var& b, bool trans_a, bool trans_b) {
    Tensor y = kern::matmul(a.value(), b.value(), trans_a, trans_b);
    return make_op("matmul", std::move(y), {a, b},
                   [a, b, ta = trans_a, tb = trans_b](const Tensor& gy, const Tensor&, GradSink& g) {
                       const Tensor& A = a.value();
                       const Tensor& B = b.value();
                       // d op(A) = gC op(B)^T and d op(B) = op(A)^T gC, transposed back where the
                       // operand was used transposed.
                       detail::gemm_grad(g, 0, a, [&](Tensor& d, double beta) {
                           if (!ta)
                               gemm_impl("matmul backward", gy, false, B, !tb, d, 1.0, beta, nullptr);
                           else
                               gemm_impl("matmul backward", B, tb, gy, true, d, 1.0, beta, nullptr);
                       });
                       detail::gemm_grad(g, 1, b, [&](Tensor& d, double beta) {
                           if (!tb)
                               gemm_impl("matmul backward", A, !ta, gy, false, d, 1.0, beta, nullptr);
                           else
                               gemm_impl("matmul backward", gy, true, A, ta, d, 1.0, beta, nullptr);
                       });
                   });
}

}  // namespace flowlab
