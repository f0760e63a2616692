// Linear algebra on oneDNN's GEMM (core/src/ops/linalg.cpp), the fused linear layers
// (core/src/ops/linear.cpp) and batches of independent products (core/src/ops/batched_matmul.cpp).
//
// Example, an MLP layer:  Var h = linear_relu(x, w, b);   // x [B, in], w [in, out], b [out]
#pragma once

#include <functional>
#include <memory>
#include <vector>

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
// An MLP as one op: linear_relu with (w[l], b[l]) for every layer but the last, linear for the
// last; w[l] [in, out], b[l] [out]. Same values as that chain of ops; a block of rows at a time
// goes through every layer, so the narrow layers and the ReLU masks run in parallel too
// (core/src/ops/mlp_stack.cpp). Shapes it does not fuse run the chain itself.
//
// Example:  Var y = mlp_stack(x, {w0, w1, w2}, {b0, b1, b2});   // x [B, 2] -> [B, 128] -> [B, 128] -> y [B, 4]
Var mlp_stack(const Var& x, const std::vector<Var>& w, const std::vector<Var>& b);

// Where a weight w [in, out] of fixed connectivity (MADE's masks) can be nonzero: for each block
// of `block()` consecutive output columns, sorted disjoint ranges of input rows. It may cover
// more than the connectivity (short gaps are bridged, nearly full supports are made dense), so
// the GEMMs stay few and large. block_sparse_linear's forward and weight gradient read w only
// inside it; its input gradient reads whole blocks (block x block) that meet it, which is why w must
// be zero outside.
//
// Example, a layer whose output j sees inputs 0..j only:
//   auto s = WeightSupport::from_mask(in, out, [](std::int64_t i, std::int64_t j) { return i <= j; });
//   Var y = block_sparse_linear(x, w, b, s);  // w must be zero where i > j
class WeightSupport {
public:
    struct Range {
        std::int64_t begin = 0, end = 0;
    };
    // The support of the entries keep(row, col) is true for, in blocks of `block` columns.
    static std::shared_ptr<const WeightSupport> from_mask(std::int64_t in, std::int64_t out,
                                                          const std::function<bool(std::int64_t, std::int64_t)>& keep,
                                                          std::int64_t block = 128);

    std::int64_t in() const { return in_; }
    std::int64_t out() const { return out_; }
    std::int64_t block() const { return block_; }
    std::int64_t column_blocks() const { return static_cast<std::int64_t>(rows_.size()); }
    std::int64_t row_blocks() const { return static_cast<std::int64_t>(cols_.size()); }
    // The input rows column block j reads (forward, weight gradient).
    const std::vector<Range>& rows(std::int64_t j) const { return rows_[static_cast<std::size_t>(j)]; }
    // The output columns (whole column blocks) the input rows of row block r feed (input gradient).
    const std::vector<Range>& columns(std::int64_t r) const { return cols_[static_cast<std::size_t>(r)]; }
    // Every block covers every row: the op is a plain linear layer.
    bool dense() const { return dense_; }
    // The share of w's entries inside the support (the forward's share of the dense GEMM's work).
    double density() const { return density_; }

private:
    std::int64_t in_ = 0, out_ = 0, block_ = 0;
    std::vector<std::vector<Range>> rows_, cols_;
    bool dense_ = true;
    double density_ = 1.0;
};

// linear(x, w, b) (with the ReLU fused when `relu`) for a w that is zero outside `support`: the
// GEMMs skip what lies outside, and w's gradient is zero there. f32 runs one GEMM per block and
// row range; f64 and dense supports run the plain layer.
Var block_sparse_linear(const Var& x, const Var& w, const Var& b, const std::shared_ptr<const WeightSupport>& support,
                        bool relu = false);

namespace kern {
// C = alpha * op(A) op(B) + beta * C on 2-D tensors (f32 through oneDNN, f64 on the CPU).
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
          double alpha = 1.0, double beta = 0.0);
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
}  // namespace kern

}  // namespace flowlab
