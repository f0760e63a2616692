// Differentiable ops on Var, each with its backward rule next to its forward (core/src/ops*.cpp),
// and the plain Tensor kernels they are built from (namespace flowlab::kern), which backward
// rules and fused ops in plugins use too.
//
// Broadcasting follows NumPy: shapes are aligned at the back, a dimension of 1 stretches. The
// backward of a broadcast sums the gradient back to the input's shape.
//
// Example, an MLP layer and a Gaussian log-density:
//   Var h = relu(linear(x, w, b));               // x [B, in], w [in, out], b [out]
//   Var lp = -0.5 * sum(square(z), 1) - c;        // [B]
#pragma once

#include <cstdint>
#include <vector>

#include "flowlab/autodiff.hpp"

namespace flowlab {

// ---------------------------------------------------------------- element-wise, broadcasting
Var add(const Var& a, const Var& b);
Var sub(const Var& a, const Var& b);
Var mul(const Var& a, const Var& b);
Var div(const Var& a, const Var& b);
Var add_scalar(const Var& a, double s);
Var mul_scalar(const Var& a, double s);
Var neg(const Var& a);

// ---------------------------------------------------------------- element-wise, unary
Var exp(const Var& a);
Var log(const Var& a);
Var tanh(const Var& a);
Var sigmoid(const Var& a);
Var softplus(const Var& a);    // log(1 + e^a), stable
Var log_sigmoid(const Var& a); // -softplus(-a), stable
Var relu(const Var& a);
Var square(const Var& a);
Var sqrt(const Var& a);
Var abs(const Var& a);

// ---------------------------------------------------------------- reductions
Var sum(const Var& a, std::int64_t dim, bool keepdim = false);
Var mean(const Var& a, std::int64_t dim, bool keepdim = false);
Var sum_all(const Var& a);   // scalar (shape [])
Var mean_all(const Var& a);  // scalar
// Sum over every dimension but the first: [B, ...] -> [B]. The per-sample log-det reduction.
Var sum_per_sample(const Var& a);
Var logsumexp(const Var& a, std::int64_t dim, bool keepdim = false);

// ---------------------------------------------------------------- shape
Var reshape(const Var& a, Shape shape);
Var slice(const Var& a, std::int64_t dim, std::int64_t start, std::int64_t length);
Var concat(const std::vector<Var>& parts, std::int64_t dim);
// out[..., i, ...] = a[..., index[i], ...] along dim (index values in [0, a.size(dim))).
Var gather(const Var& a, const std::vector<std::int64_t>& index, std::int64_t dim);
Var transpose2d(const Var& a);

// ---------------------------------------------------------------- linear algebra (oneDNN)
// [M, K] x [K, N] -> [M, N]; trans_* transposes the operand first.
Var matmul(const Var& a, const Var& b, bool trans_a = false, bool trans_b = false);
// x [B, in], w [in, out], b [out] (optional) -> [B, out]. One GEMM with a fused bias.
Var linear(const Var& x, const Var& w, const Var& b = Var());
// relu(linear(x, w, b)) as one op: the ReLU runs in the GEMM's epilogue, and the backward
// masks the gradient once. Same values as the two ops.
Var linear_relu(const Var& x, const Var& w, const Var& b = Var());

// ---------------------------------------------------------------- operators
inline Var operator+(const Var& a, const Var& b) { return add(a, b); }
inline Var operator-(const Var& a, const Var& b) { return sub(a, b); }
inline Var operator*(const Var& a, const Var& b) { return mul(a, b); }
inline Var operator/(const Var& a, const Var& b) { return div(a, b); }
inline Var operator-(const Var& a) { return neg(a); }
inline Var operator+(const Var& a, double s) { return add_scalar(a, s); }
inline Var operator+(double s, const Var& a) { return add_scalar(a, s); }
inline Var operator-(const Var& a, double s) { return add_scalar(a, -s); }
inline Var operator-(double s, const Var& a) { return add_scalar(neg(a), s); }
inline Var operator*(const Var& a, double s) { return mul_scalar(a, s); }
inline Var operator*(double s, const Var& a) { return mul_scalar(a, s); }
inline Var operator/(const Var& a, double s) { return mul_scalar(a, 1.0 / s); }

// The broadcast result shape of a and b; throws ShapeError naming both.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

namespace kern {
// Plain tensor kernels (no graph). Results are fresh tensors unless named *_inplace.
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& a, double s);
Tensor add_scalar(const Tensor& a, double s);
Tensor exp(const Tensor& a);
Tensor neg(const Tensor& a);
// Sum a (a broadcast of `shape`) back down to `shape`.
Tensor sum_to(const Tensor& a, const Shape& shape);
Tensor sum(const Tensor& a, std::int64_t dim, bool keepdim = false);
double sum_all(const Tensor& a);
double sq_norm(const Tensor& a);  // sum of squares, in double
bool all_finite(const Tensor& a);
void add_inplace(Tensor& dst, const Tensor& src);          // dst += src (same shape)
void axpy_inplace(Tensor& dst, double alpha, const Tensor& src);  // dst += alpha * src
void scale_inplace(Tensor& dst, double s);
// C = alpha * op(A) op(B) + beta * C on 2-D tensors (f32 through oneDNN, f64 on the CPU).
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
          double alpha = 1.0, double beta = 0.0);
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
Tensor slice(const Tensor& a, std::int64_t dim, std::int64_t start, std::int64_t length);
Tensor concat(const std::vector<Tensor>& parts, std::int64_t dim);
double max_abs_diff(const Tensor& a, const Tensor& b);
}  // namespace kern

}  // namespace flowlab
