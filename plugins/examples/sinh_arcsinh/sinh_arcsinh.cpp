// An example plugin built outside flowlab's tree: the sinh-arcsinh transform (Jones & Pewsey,
// 2009), an element-wise bijector with a learnable skew and tail weight per feature.
//
//   inverse (data -> latent):  z = sinh(delta * asinh(x) - eps),     delta = exp(log_tail)
//       log|dz/dx| = log cosh(u) + log_tail - 0.5 log(1 + x^2),       u = delta * asinh(x) - eps
//   forward (latent -> data):  x = sinh((asinh(z) + eps) / delta)
//       log|dx/dz| = log cosh(w) - log_tail - 0.5 log(1 + z^2),       w = (asinh(z) + eps) / delta
//
// delta > 1 pulls heavy data tails in towards a Gaussian's, delta < 1 pushes light ones out,
// eps removes skew. eps = 0, delta = 1 is the identity, where the layer starts.
//
// flowlab's ops have no asinh, and composing the log-det from exp/log would be slow and lose
// precision in the tails, so the transform is one fused op with a hand-written backward: one
// pass computes the output and the per-element log-det, and two graph nodes (output, log-det)
// share that pass's inputs.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include <flowlab/errors.hpp>
#include <flowlab/kernels.hpp>
#include <flowlab/parallel.hpp>
#include <flowlab/plugin.hpp>

namespace {

using namespace flowlab;

template <class T>
T log_cosh(T u) {
    const T a = std::abs(u);  // log cosh u = |u| + log(1 + e^-2|u|) - log 2, without overflow
    return a + std::log1p(std::exp(T(-2) * a)) - T(0.6931471805599453);
}

// One element of the transform: the output, its log-det, and their partial derivatives with
// respect to the input x, the skew eps and the log tail weight l.
template <class T>
struct Elem {
    T y, ld;
    T dy_dx, dy_de, dy_dl;
    T dld_dx, dld_de, dld_dl;
};

template <class T>
Elem<T> element(T x, T eps, T l, bool inverse) {
    const T a = std::asinh(x);
    const T delta = std::exp(l);
    const T r = T(1) / std::hypot(T(1), x);  // 1 / sqrt(1 + x^2) = d asinh(x) / dx
    Elem<T> e;
    if (inverse) {
        const T u = delta * a - eps;
        const T c = std::cosh(u), th = std::tanh(u);
        e.y = std::sinh(u);
        e.ld = log_cosh(u) + l + std::log(r);
        e.dy_dx = c * delta * r;
        e.dy_de = -c;
        e.dy_dl = c * delta * a;
        e.dld_dx = th * delta * r - x * r * r;
        e.dld_de = -th;
        e.dld_dl = th * delta * a + T(1);
    } else {
        const T w = (a + eps) / delta;
        const T c = std::cosh(w), th = std::tanh(w);
        e.y = std::sinh(w);
        e.ld = log_cosh(w) - l + std::log(r);
        e.dy_dx = c * r / delta;
        e.dy_de = c / delta;
        e.dy_dl = -c * w;
        e.dld_dx = th * r / delta - x * r * r;
        e.dld_de = th / delta;
        e.dld_dl = -th * w - T(1);
    }
    return e;
}

// Parallel over features: each chunk owns its columns, so the parameter gradients (a sum over
// the batch per feature) accumulate without races.
std::int64_t feature_grain(std::int64_t batch) { return std::max<std::int64_t>(1, kElementwiseGrain / std::max<std::int64_t>(1, batch)); }

// The backward rule of either node: grad_out times the node's partials, accumulated into the
// gradient buffers of x [B, D], eps [D] and l [D]. `log_det_node` picks the partials.
BackwardFn make_backward(Tensor xv, Tensor ev, Tensor lv, bool inverse, bool log_det_node) {
    return [xv, ev, lv, inverse, log_det_node](const Tensor& gout, const Tensor&, GradSink& sink) {
        const bool nx = sink.needs(0), ne = sink.needs(1), nl = sink.needs(2);
        if (!nx && !ne && !nl) return;
        // dispatch (kernels.hpp): T = float or double after the dtype; training runs in f32, the
        // conformance suite in f64.
        dispatch(xv.dtype(), [&](auto tag) {
            using T = decltype(tag);
            const std::int64_t B = xv.size(0), D = xv.size(1);
            T* gx = nx ? sink.buffer(0).template data<T>() : nullptr;
            T* ge = ne ? sink.buffer(1).template data<T>() : nullptr;
            T* gl = nl ? sink.buffer(2).template data<T>() : nullptr;
            const T* g = gout.data<T>();
            const T* x = xv.data<T>();
            const T* eps = ev.data<T>();
            const T* l = lv.data<T>();
            parallel_for(D, feature_grain(B), [&](std::int64_t j0, std::int64_t j1) {
                for (std::int64_t b = 0; b < B; ++b) {
                    for (std::int64_t j = j0; j < j1; ++j) {
                        const std::int64_t i = b * D + j;
                        const Elem<T> e = element<T>(x[i], eps[j], l[j], inverse);
                        if (gx) gx[i] += g[i] * (log_det_node ? e.dld_dx : e.dy_dx);
                        if (ge) ge[j] += g[i] * (log_det_node ? e.dld_de : e.dy_de);
                        if (gl) gl[j] += g[i] * (log_det_node ? e.dld_dl : e.dy_dl);
                    }
                }
            });
        });
    };
}

// x [B, D], eps [D], l [D] -> {y [B, D], log_det [B]}.
FlowResult sinh_arcsinh(const Var& x, const Var& eps, const Var& l, bool inverse) {
    const Tensor& xv = x.value();
    if (xv.dtype() != eps.dtype() || xv.dtype() != l.dtype())
        throw ShapeError(std::string("sinh_arcsinh: input is ") + dtype_name(xv.dtype()) + ", parameters are " +
                         dtype_name(eps.dtype()));
    const std::int64_t B = xv.size(0), D = xv.size(1);
    Tensor y = Tensor::empty({B, D}, xv.dtype());
    Tensor ld = Tensor::empty({B, D}, xv.dtype());
    // dispatch (kernels.hpp): T = float or double after the dtype; training runs in f32, the
        // conformance suite in f64.
        dispatch(xv.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* xp = xv.data<T>();
        const T* ep = eps.value().data<T>();
        const T* lp = l.value().data<T>();
        T* yp = y.data<T>();
        T* ldp = ld.data<T>();
        parallel_for(D, feature_grain(B), [&](std::int64_t j0, std::int64_t j1) {
            for (std::int64_t b = 0; b < B; ++b)
                for (std::int64_t j = j0; j < j1; ++j) {
                    const Elem<T> e = element<T>(xp[b * D + j], ep[j], lp[j], inverse);
                    yp[b * D + j] = e.y;
                    ldp[b * D + j] = e.ld;
                }
        });
    });
    // Both nodes capture the input values (Tensor copies share storage, nothing is copied).
    const Tensor& ev = eps.value();
    const Tensor& lv = l.value();
    Var y_var = make_op(inverse ? "sinh_arcsinh_inverse" : "sinh_arcsinh_forward", std::move(y), {x, eps, l},
                        make_backward(xv, ev, lv, inverse, false));
    Var ld_var = make_op("sinh_arcsinh_log_det", std::move(ld), {x, eps, l}, make_backward(xv, ev, lv, inverse, true));
    return {y_var, sum_per_sample(ld_var)};
}

class SinhArcsinh final : public Bijector {
public:
    SinhArcsinh(const Params& p, const BuildContext& c) {
        const std::int64_t d = numel(c.event_shape);  // one (eps, delta) per value of the event
        eps_ = add_parameter("skew", Tensor::full({d}, p.get_number("init_skew")));
        log_tail_ = add_parameter("log_tail", Tensor::full({d}, p.get_number("init_log_tail")));
    }

protected:
    FlowResult do_inverse(const Var& x, const Var&) override { return apply(x, true); }
    FlowResult do_forward(const Var& z, const Var&) override { return apply(z, false); }

private:
    FlowResult apply(const Var& in, bool inverse) {
        // Events of any shape are flattened to [B, D] and back.
        FlowResult r = sinh_arcsinh(reshape(in, {in.size(0), eps_.size(0)}), eps_, log_tail_, inverse);
        r.out = reshape(r.out, in.shape());
        return r;
    }

    Var eps_, log_tail_;
};

}  // namespace

FLOWLAB_PLUGIN("sinh_arcsinh", "1.0.0", "sinh-arcsinh transform: learnable skew and tail weight per feature") {
    ConformanceHints hints;
    hints.shapes = {{2}, {5}, {2, 3}};  // a flattened image-like event too
    reg.add_bijector({"sinh_arcsinh",
                      "z = sinh(delta*asinh(x) - eps) per feature: learnable skew eps and tail weight delta",
                      {
                          param_number("init_skew", 0.0, "initial skew eps of every feature"),
                          param_number("init_log_tail", 0.0, "initial log(delta) of every feature; 0 with "
                                                             "init_skew 0 starts as the identity")
                              .range(-3.0, 3.0),
                      },
                      [](const Params& p, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<SinhArcsinh>(p, c);
                      },
                      hints});
}
