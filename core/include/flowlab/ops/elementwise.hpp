// Element-wise ops (core/src/ops/elementwise.cpp): broadcasting binary ops, ops with a scalar,
// unary functions, the arithmetic operators on Var, and their plain Tensor kernels; and
// concat_elu (core/src/ops/concat_elu.cpp).
//
// Broadcasting follows NumPy: shapes are aligned at the back, a dimension of 1 stretches. The
// backward of a broadcast sums the gradient back to the input's shape.
//
// Example, an affine map with a log-scale:  Var z = (x - b) * exp(-a);
#pragma once

#include <cstdint>

#include "flowlab/autodiff.hpp"

namespace flowlab {

// Broadcasting binary ops.
Var add(const Var& a, const Var& b);
Var sub(const Var& a, const Var& b);
Var mul(const Var& a, const Var& b);
Var div(const Var& a, const Var& b);
Var add_scalar(const Var& a, double s);
Var mul_scalar(const Var& a, double s);
Var neg(const Var& a);

// Unary functions.
Var exp(const Var& a);
Var log(const Var& a);
Var tanh(const Var& a);
Var sigmoid(const Var& a);
Var softplus(const Var& a);    // log(1 + e^a), stable
Var log_sigmoid(const Var& a); // -softplus(-a), stable
Var relu(const Var& a);
Var elu(const Var& a);         // x > 0 ? x : e^x - 1 (alpha = 1)
Var square(const Var& a);
Var sqrt(const Var& a);
Var abs(const Var& a);
// elu(concat(a, -a), dim): twice a's size along dim (PixelCNN++'s and Flow++'s activation), as
// one op.
Var concat_elu(const Var& a, std::int64_t dim);

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
// Plain tensor kernels (no graph) for backward rules and fused ops; results are fresh tensors,
// and the binary ones broadcast like the Var ops.
// a + b, a - b and -a:
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor neg(const Tensor& a);
// a * b, a / b and e^a:
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor exp(const Tensor& a);
// a * s and a + s:
Tensor scale(const Tensor& a, double s);
Tensor add_scalar(const Tensor& a, double s);

// In place on dst (src of dst's shape), for accumulating gradients and optimizer updates.
void add_inplace(Tensor& dst, const Tensor& src);                 // dst += src
void axpy_inplace(Tensor& dst, double alpha, const Tensor& src);  // dst += alpha * src
void scale_inplace(Tensor& dst, double s);
}  // namespace kern

}  // namespace flowlab
