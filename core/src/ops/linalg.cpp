// GEMM-based ops: kern::gemm (f32 through oneDNN's matmul primitive or, for skinny shapes,
// vector loops; f64 on a plain loop) and matmul with its backward rule. linear.cpp builds the
// linear layers on gemm_impl.
#include "flowlab/ops/linalg.hpp"

#include <cstring>

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

// Row-major copy of op(X), [rows, cols] after the optional transpose.
template <class T>
std::vector<T> materialize(const T* x, bool trans, std::int64_t rows, std::int64_t cols) {
    std::vector<T> out(static_cast<std::size_t>(rows * cols));
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) out[r * cols + c] = trans ? x[c * rows + r] : x[r * cols + c];
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

template <class T>
void gemm_skinny(const T* a, bool ta, const T* b, bool tb, T* c, std::int64_t m, std::int64_t n, std::int64_t k,
                 T alpha, T beta, bool dot_form) {
    if (dot_form) {
        if (!ta) {
            // Dot form: C[i, j] = <A row i, op(B) column j>, with op(B)^T as contiguous rows.
            const std::vector<T> bt = materialize(b, !tb, n, k);  // op(B)^T, [N, K]
            std::vector<T> acc(static_cast<std::size_t>(n));
            for (std::int64_t i = 0; i < m; ++i) {
                const T* row = a + i * k;
                for (std::int64_t j = 0; j < n; ++j) {
                    const T* col = bt.data() + j * k;
                    T s = 0;
#pragma omp simd reduction(+ : s)
                    for (std::int64_t kk = 0; kk < k; ++kk) s += row[kk] * col[kk];
                    acc[j] = s;
                }
                store_row(c + i * n, acc.data(), n, alpha, beta);
            }
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

}  // namespace

namespace detail {
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
        const auto al = static_cast<float>(alpha);
        // The form is chosen on the whole product, so that every row is computed the same way
        // however the rows are split.
        const bool dot_form = n <= kSkinny && n < m;
        const float* pa = a.data<float>();
        const float* pbias = bias ? bias->data<float>() : nullptr;
        float* pc = c.data<float>();
        auto rows = [&](std::int64_t r0, std::int64_t r1) {
            // Rows r0..r1 of C read rows r0..r1 of A only (A not transposed).
            gemm_skinny(pa + (ta ? 0 : r0 * k), ta, b.data<float>(), tb, pc + r0 * n, r1 - r0, n, k, al,
                        static_cast<float>(beta), dot_form);
            for (std::int64_t i = r0; i < r1; ++i) {
                float* row = pc + i * n;
                if (pbias) {
#pragma omp simd
                    for (std::int64_t j = 0; j < n; ++j) row[j] += al * pbias[j];
                }
                if (relu) relu_inplace(row, n);
            }
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
