// Bijector's checked entry points, the log-det helpers and the numerical-inverse helpers.
#include "flowlab/bijector.hpp"

#include <algorithm>
#include <string>

#include "flowlab/errors.hpp"
#include "flowlab/kernels.hpp"
#include "model/checks.hpp"

namespace flowlab {

using namespace model;

namespace {

std::string layer_name(const Bijector& b, const char* direction) {
    const std::string& n = b.type_name();
    return (n.empty() ? std::string("layer") : "layer '" + n + "'") + " (" + direction + ")";
}

}  // namespace

FlowResult Bijector::inverse(const Var& x, const Var& context) {
    const std::string who = layer_name(*this, "inverse");
    check_input(x, in_shape_, who, "input");
    const std::int64_t b = x.size(0);
    FlowResult r = do_inverse(x, context);
    check_result(r.out, with_batch(b, output_shape(event_of(x.shape()))), who, "output");
    check_result(r.log_det, {b}, who, "log_det");
    return r;
}

FlowResult Bijector::forward(const Var& z, const Var& context) {
    const std::string who = layer_name(*this, "forward");
    // forward takes what inverse produces: the output shape of the event.
    check_input(z, in_shape_.empty() ? Shape{} : output_shape(in_shape_), who, "input");
    const std::int64_t b = z.size(0);
    FlowResult r = do_forward(z, context);
    if (in_shape_.empty()) {
        // Without a known event shape only the batch is checked.
        if (!r.out.defined() || r.out.value().dim() < 1 || r.out.size(0) != b)
            throw ShapeError(who + ": output should have " + std::to_string(b) + " rows, got " +
                             (r.out.defined() ? shape_str(r.out.shape()) : std::string("nothing")));
    } else {
        check_result(r.out, with_batch(b, in_shape_), who, "output");
    }
    check_result(r.log_det, {b}, who, "log_det");
    return r;
}

Var Bijector::data_init(const Var& x, const Var& context) { return inverse(x, context).out; }

Var broadcast_log_det(const Var& scalar_log_det, const Var& like) {
    if (!scalar_log_det.defined() || scalar_log_det.value().numel() != 1)
        throw ShapeError("broadcast_log_det: expected a one-element log-det, got " +
                         (scalar_log_det.defined() ? shape_str(scalar_log_det.shape()) : std::string("nothing")));
    if (!like.defined() || like.value().dim() < 1)
        throw ShapeError("broadcast_log_det: expected a batched tensor to take the batch size from");
    Var s = scalar_log_det.value().dim() == 0 ? scalar_log_det : reshape(scalar_log_det, {});
    // Adding a constant zero vector broadcasts the value and sums the gradient back.
    return s + Var(Tensor::zeros({like.size(0)}, scalar_log_det.dtype()));
}

Var Bijector::zero_log_det(const Var& like) {
    if (!like.defined() || like.value().dim() < 1)
        throw ShapeError("zero_log_det: expected a batched tensor to take the batch size from");
    return Var(Tensor::zeros({like.size(0)}, like.dtype()));
}

namespace {

// f on values, checked: an element-wise map keeps the shape and the dtype.
Tensor eval_elementwise(const ElementwiseFn& f, const Tensor& x, const char* who) {
    Var fx = f(Var(x));
    if (!fx.defined() || fx.shape() != x.shape() || fx.dtype() != x.dtype())
        throw ShapeError(std::string(who) + ": f must map a tensor to one of the same shape and dtype; it mapped " +
                         shape_str(x.shape()) + " to " + (fx.defined() ? shape_str(fx.shape()) : std::string("nothing")));
    return fx.value();
}

// Widens [lo, hi] (doubling its width) where it does not hold f(x) = y; false while some
// element still needs it.
template <class T>
bool widen(const T* y, const T* f_lo, const T* f_hi, T* lo, T* hi, std::int64_t n) {
    bool held = true;
    for (std::int64_t i = 0; i < n; ++i) {
        const T width = std::max(hi[i] - lo[i], T(1));
        if (f_lo[i] > y[i]) lo[i] -= width, held = false;
        if (f_hi[i] < y[i]) hi[i] += width, held = false;
    }
    return held;
}

// mid = (lo + hi) / 2; false when no bracket can shrink any more.
template <class T>
bool midpoints(const T* lo, const T* hi, T* mid, std::int64_t n) {
    bool open = false;
    for (std::int64_t i = 0; i < n; ++i) {
        mid[i] = lo[i] + (hi[i] - lo[i]) / T(2);
        open = open || (mid[i] > lo[i] && mid[i] < hi[i]);
    }
    return open;
}

template <class T>
void halve(const T* y, const T* f_mid, const T* mid, T* lo, T* hi, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) (f_mid[i] < y[i] ? lo[i] : hi[i]) = mid[i];
}

}  // namespace

Tensor bisect_increasing(const ElementwiseFn& f, const Tensor& y, const Tensor& lo_in, const Tensor& hi_in,
                         int max_iterations) {
    if (lo_in.shape() != y.shape() || hi_in.shape() != y.shape())
        throw ShapeError("bisect_increasing: the bracket " + shape_str(lo_in.shape()) + ", " + shape_str(hi_in.shape()) +
                         " must have y's shape " + shape_str(y.shape()));
    NoGradGuard no_grad;
    Tensor lo = lo_in.to(y.dtype()).clone(), hi = hi_in.to(y.dtype()).clone(), mid = Tensor::empty(y.shape(), y.dtype());
    const std::int64_t n = y.numel();
    dispatch(y.dtype(), [&](auto zero) {
        using T = decltype(zero);
        bool held = false;
        for (int k = 0; k < 64 && !held; ++k) {
            const Tensor f_lo = eval_elementwise(f, lo, "bisect_increasing"), f_hi = eval_elementwise(f, hi, "bisect_increasing");
            held = widen<T>(y.data<T>(), f_lo.data<T>(), f_hi.data<T>(), lo.data<T>(), hi.data<T>(), n);
        }
        if (!held)
            throw NumericError("bisect_increasing: no bracket holds a root of f(x) = y; is f increasing in x, and is y "
                               "within its range?");
        for (int it = 0; it < max_iterations && midpoints<T>(lo.data<T>(), hi.data<T>(), mid.data<T>(), n); ++it) {
            const Tensor f_mid = eval_elementwise(f, mid, "bisect_increasing");
            halve<T>(y.data<T>(), f_mid.data<T>(), mid.data<T>(), lo.data<T>(), hi.data<T>(), n);
        }
        midpoints<T>(lo.data<T>(), hi.data<T>(), mid.data<T>(), n);
    });
    return mid;
}

Var newton_step(const ElementwiseFn& f, const ElementwiseFn& df, const Tensor& root, const Var& y) {
    if (root.shape() != y.shape())
        throw ShapeError("newton_step: the root " + shape_str(root.shape()) + " must have y's shape " + shape_str(y.shape()));
    const Var x0(root.to(y.dtype()));  // a constant: no gradient flows through the solver's iterations
    Var slope;
    {
        // f'(x0) as a constant: at the root the step's gradient does not depend on it, and
        // leaving it out of the graph spares its backward pass.
        NoGradGuard no_grad;
        slope = Var(eval_elementwise(df, x0.value(), "newton_step"));
    }
    return x0 - (f(x0) - y) / slope;
}

}  // namespace flowlab
