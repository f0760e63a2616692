// Reductions (core/src/ops/reduce.cpp): sums, means and log-sum-exp over a dimension or the
// whole tensor, and their plain Tensor kernels; softmax (core/src/ops/softmax.cpp), the
// normalisation that log-sum-exp computes, kept as a tensor.
//
// Example, a Gaussian log-density per sample:  Var lp = -0.5 * sum(square(z), 1) - c;  // [B]
#pragma once

#include <cstdint>

#include "flowlab/autodiff.hpp"

namespace flowlab {

Var sum(const Var& a, std::int64_t dim, bool keepdim = false);
Var mean(const Var& a, std::int64_t dim, bool keepdim = false);
Var sum_all(const Var& a);   // scalar (shape [])
Var mean_all(const Var& a);  // scalar
// Sum over every dimension but the first: [B, ...] -> [B]. The per-sample log-det reduction.
Var sum_per_sample(const Var& a);
Var logsumexp(const Var& a, std::int64_t dim, bool keepdim = false);
// exp(a - logsumexp(a, dim, true)): each slice along dim sums to 1 (attention weights).
Var softmax(const Var& a, std::int64_t dim);

namespace kern {
// Sum a (a broadcast of `shape`) back down to `shape`: the backward of a broadcast.
Tensor sum_to(const Tensor& a, const Shape& shape);
Tensor sum(const Tensor& a, std::int64_t dim, bool keepdim = false);
double sum_all(const Tensor& a);
double sq_norm(const Tensor& a);  // sum of squares, in double
bool all_finite(const Tensor& a);
double max_abs_diff(const Tensor& a, const Tensor& b);
}  // namespace kern

}  // namespace flowlab
