// Shape ops (core/src/ops/shape.cpp): reshape, slices, concatenation, gathers and transposes,
// and their plain Tensor kernels.
//
// Example, the two halves of a coupling layer's features:
//   Var x0 = slice(x, 1, 0, d), x1 = slice(x, 1, d, D - d);   ...   Var y = concat({x0, y1}, 1);
#pragma once

#include <cstdint>
#include <vector>

#include "flowlab/autodiff.hpp"

namespace flowlab {

Var reshape(const Var& a, Shape shape);
Var slice(const Var& a, std::int64_t dim, std::int64_t start, std::int64_t length);
Var concat(const std::vector<Var>& parts, std::int64_t dim);
// out[..., i, ...] = a[..., index[i], ...] along dim (index values in [0, a.size(dim))).
Var gather(const Var& a, const std::vector<std::int64_t>& index, std::int64_t dim);
Var transpose2d(const Var& a);

namespace kern {
Tensor slice(const Tensor& a, std::int64_t dim, std::int64_t start, std::int64_t length);
Tensor concat(const std::vector<Tensor>& parts, std::int64_t dim);
}  // namespace kern

}  // namespace flowlab
