// Numerical gradient checking (central differences in f64), for op and plugin authors.
//
//   // f maps the inputs to any Var; the check compares d<f, r>/d input (r random, fixed)
//   // from backward() against central differences of the same scalar.
//   auto res = flowlab::gradcheck(
//       [](const std::vector<flowlab::Var>& v) { return flowlab::tanh(v[0]) * v[1]; },
//       {flowlab::Tensor::from_vector({3}, {0.1, -0.2, 0.3}, flowlab::DType::f64),
//        flowlab::Tensor::from_vector({3}, {1.0, 2.0, 3.0}, flowlab::DType::f64)});
//   REQUIRE(res.ok(1e-6));
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "flowlab/autodiff.hpp"

namespace flowlab {

struct GradCheckResult {
    double max_abs_error = 0.0;   // over all inputs and elements
    double max_rel_error = 0.0;   // |a - n| / max(1, |a|, |n|)
    std::string worst;            // "input 1, element 4: analytic 0.3 numeric 0.31"
    bool ok(double tol) const { return max_rel_error <= tol; }
};

// Inputs are converted to f64. eps is the central-difference step.
GradCheckResult gradcheck(const std::function<Var(const std::vector<Var>&)>& f,
                          const std::vector<Tensor>& inputs, double eps = 1e-6,
                          std::uint64_t seed = 17);

// log|det J| of a map R^D -> R^D at one point, by central differences (f64, LU with pivoting).
// f maps a [1, D] tensor to a [1, D] tensor.
double numerical_log_abs_det(const std::function<Tensor(const Tensor&)>& f, const Tensor& x_row,
                             double eps = 1e-6);

}  // namespace flowlab
