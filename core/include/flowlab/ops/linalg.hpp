// Linear algebra on oneDNN's GEMM (core/src/ops/linalg.cpp), the fused linear layers
// (core/src/ops/linear.cpp) and batches of independent products (core/src/ops/batched_matmul.cpp).
//
// Example, an MLP layer:  Var h = linear_relu(x, w, b);   // x [B, in], w [in, out], b [out]
#pragma once

#include "flowlab/autodiff.hpp"

namespace flowlab {

// [M, K] x [K, N] -> [M, N]; trans_* transposes the operand first.
Var matmul(const Var& a, const Var& b, bool trans_a = false, bool trans_b = false);
// [N, M, K] x [N, K, L] -> [N, M, L]: N independent products (trans_* transposes each matrix
// of that operand), e.g. attention's scores Q K^T per sample and head.
Var batched_matmul(const Var& a, const Var& b, bool trans_a = false, bool trans_b = false);
// x [B, in], w [in, out], b [out] (optional) -> [B, out]. One GEMM with a fused bias.
Var linear(const Var& x, const Var& w, const Var& b = Var());
// relu(linear(x, w, b)) as one op: the ReLU runs in the GEMM's epilogue, and the backward
// masks the gradient once. Same values as the two ops.
Var linear_relu(const Var& x, const Var& w, const Var& b = Var());

namespace kern {
// C = alpha * op(A) op(B) + beta * C on 2-D tensors (f32 through oneDNN, f64 on the CPU).
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
          double alpha = 1.0, double beta = 0.0);
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
}  // namespace kern

}  // namespace flowlab
