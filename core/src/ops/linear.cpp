// Linear layers: linear (x w + b) and linear_relu (relu(x w + b)), on gemm_impl (oneDNN, or
// vector loops for skinny shapes). linear_relu runs the ReLU in the GEMM's epilogue (a oneDNN
// post-op), so the forward makes no second pass over its output.
//
// Measured and not kept: one-sweep kernels for the narrow layers of a 2-d coupling (1 -> 128
// forward and backward, 128 -> 2 backward, the mask fused with the bias gradient) gave no
// measurable change on W1 at 1 or 2 threads (ratio 0.98 and 0.96 over 5-6 alternating runs):
// those passes are L2-resident and short next to the 128 x 128 GEMMs.
#include "flowlab/ops/linalg.hpp"

#include "ops/ops_internal.hpp"

namespace flowlab {

namespace {

void check_linear(const char* op, const Var& x, const Var& w, const Var& b) {
    const Tensor& X = x.value();
    const Tensor& W = w.value();
    detail::check_dtypes(op, X, W);
    if (X.dim() != 2 || W.dim() != 2 || X.size(1) != W.size(0))
        detail::shape_error(op, X.shape(), W.shape(), "incompatible (want x [batch, in] and w [in, out])");
    if (b.defined()) {
        detail::check_dtypes(op, X, b.value());
        if (b.value().dim() != 1 || b.value().size(0) != W.size(1))
            detail::shape_error(op, W.shape(), b.value().shape(), "incompatible (want w [in, out] and b [out])");
    }
}

// The gradients of y = x w + b from gy = dL/dy. (Measured and not kept: running the two GEMMs
// side by side, one barrier instead of two, made no difference on W1.)
void linear_backward(const Var& x, const Var& w, const Tensor& gy, GradSink& g) {
    detail::gemm_grad(g, 0, x, [&](Tensor& d, double beta) {
        detail::gemm_impl("linear backward", gy, false, w.value(), true, d, 1.0, beta, nullptr);
    });
    detail::gemm_grad(g, 1, w, [&](Tensor& d, double beta) {
        detail::gemm_impl("linear backward", x.value(), true, gy, false, d, 1.0, beta, nullptr);
    });
    if (g.needs(2)) g.add(2, kern::sum(gy, 0));
}

Tensor forward(const char* op, const Var& x, const Var& w, const Var& b, bool relu) {
    check_linear(op, x, w, b);
    Tensor y = Tensor::empty({x.size(0), w.size(1)}, x.dtype());
    detail::gemm_impl(op, x.value(), false, w.value(), false, y, 1.0, 0.0, b.defined() ? &b.value() : nullptr, relu);
    return y;
}

}  // namespace

Var linear(const Var& x, const Var& w, const Var& b) {
    Tensor y = forward("linear", x, w, b, false);
    return make_op("linear", std::move(y), {x, w, b},
                   [x, w](const Tensor& gy, const Tensor&, GradSink& g) { linear_backward(x, w, gy, g); });
}

Var linear_relu(const Var& x, const Var& w, const Var& b) {
    Tensor y = forward("linear_relu", x, w, b, true);
    return make_op("linear_relu", std::move(y), {x, w, b}, [x, w](const Tensor& gy, const Tensor& y, GradSink& g) {
        // y > 0 is where the ReLU passed its input through (and only there it has a gradient).
        const Tensor gz = detail::dispatch(gy.dtype(), [&](auto t) {
            using T = decltype(t);
            return detail::map2<T>(gy, y, [](T u, T v) { return v > 0 ? u : T(0); });
        });
        linear_backward(x, w, gz, g);
    });
}

}  // namespace flowlab
