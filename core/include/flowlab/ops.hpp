// The differentiable ops on Var, each with its backward rule next to its forward, and the plain
// Tensor kernels they are built from (namespace flowlab::kern), which backward rules and fused
// ops in plugins use too. One header per op family, each implemented in the source of its name
// under core/src/ops/; this header gathers them (convolutions are in conv.hpp).
//
// Example, an MLP layer and a Gaussian log-density:
//   Var h = relu(linear(x, w, b));               // x [B, in], w [in, out], b [out]
//   Var lp = -0.5 * sum(square(z), 1) - c;        // [B]
#pragma once

#include "flowlab/ops/elementwise.hpp"
#include "flowlab/ops/linalg.hpp"
#include "flowlab/ops/reduce.hpp"
#include "flowlab/ops/shape.hpp"
