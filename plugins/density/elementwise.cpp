// Element-wise layers: `logit`, `sigmoid` (its mirror image) and `affine`.
//
// logit, for data in (0, 1) such as dequantised pixels x' = (x + u)/256:
//   inverse (x -> z): z = logit(l + (1 - 2l) x), log_det = sum [log(1-2l) - log p - log(1-p)], p = l + (1-2l) x
//   forward (z -> x): x = (sigmoid(z) - l) / (1 - 2l), the exact inverse
// Its log-det is part of log p(x'), and the uniform dequantizer's log-weight carries the
// -D log 256 bin width, so bits/dim come out in pixel space with no extra bookkeeping.
// sigmoid is the same map the other way round: inverse = the logit layer's forward.
// affine: a learnable scale and shift per feature, x = z * exp(log_scale) + shift.
#include <cmath>
#include <memory>

#include <flowlab/ops.hpp>
#include <flowlab/parallel.hpp>

#include "density.hpp"
#include "spline.hpp"

namespace flowlab::density {
namespace {

// One element of a map: y, the log-derivative, and their derivatives with respect to x.
template <class T>
struct ElementValue {
    T y, ld, dy, dld;
};

// y = logit(l + (1-2l) x)
template <class T>
inline ElementValue<T> logit_map(T x, T lam) {
    const T c = T(1) - T(2) * lam;
    const T p = lam + c * x;
    const T lp = std::log(p), l1p = std::log1p(-p);
    return {lp - l1p, std::log(c) - lp - l1p, c / (p * (T(1) - p)), c * (T(2) * p - T(1)) / (p * (T(1) - p))};
}

// x = (sigmoid(z) - l) / (1 - 2l)
template <class T>
inline ElementValue<T> sigmoid_map(T z, T lam) {
    const T c = T(1) - T(2) * lam;
    const T s = stable_sigmoid(z);
    // log s + log(1 - s) = -softplus(-z) - softplus(z), stable for large |z|
    const T ld = -rqs::softplus(-z) - rqs::softplus(z) - std::log(c);
    return {(s - lam) / c, ld, s * (T(1) - s) / c, T(1) - T(2) * s};
}

// The map applied to every element as two ops (output, per-sample log-det) with their
// backward rules; each rule recomputes the cheap element maps from the captured input.
FlowResult apply_map(const Var& in, double lam, bool logit, const char* name, const char* ld_name) {
    const Tensor xv = in.value();
    const std::int64_t B = xv.size(0);
    const std::int64_t D = B > 0 ? xv.numel() / B : 0;
    Tensor out = Tensor::empty(xv.shape(), xv.dtype());
    Tensor ld = Tensor::empty({B}, xv.dtype());
    auto element = [logit, lam](auto x) {
        using T = decltype(x);
        return logit ? logit_map<T>(x, static_cast<T>(lam)) : sigmoid_map<T>(x, static_cast<T>(lam));
    };
    dispatch(xv.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* xp = xv.data<T>();
        T* op = out.data<T>();
        T* lp = ld.data<T>();
        parallel_for(B, row_grain(D), [&](std::int64_t r0, std::int64_t r1) {
            for (std::int64_t b = r0; b < r1; ++b) {
                T acc = 0;
                for (std::int64_t j = b * D; j < (b + 1) * D; ++j) {
                    const ElementValue<T> e = element(xp[j]);
                    op[j] = e.y;
                    acc += e.ld;
                }
                lp[b] = acc;
            }
        });
    });
    Var out_v = make_op(name, std::move(out), {in}, [xv, element, D](const Tensor& gy, const Tensor&, GradSink& sink) {
        with_grad_buffer(sink, xv.dtype(), [&](auto tag, auto* gx) {
            using T = decltype(tag);
            const T* xp = xv.data<T>();
            const T* gp = gy.data<T>();
            parallel_for(xv.numel(), kElementwiseGrain, [&](std::int64_t i0, std::int64_t i1) {
                for (std::int64_t i = i0; i < i1; ++i) gx[i] += gp[i] * element(xp[i]).dy;
            });
        });
        (void)D;
    });
    Var ld_v = make_op(ld_name, std::move(ld), {in}, [xv, element, D](const Tensor& gld, const Tensor&, GradSink& sink) {
        with_grad_buffer(sink, xv.dtype(), [&](auto tag, auto* gx) {
            using T = decltype(tag);
            const T* xp = xv.data<T>();
            const T* gp = gld.data<T>();
            for (std::int64_t b = 0; b < xv.size(0); ++b)
                for (std::int64_t j = b * D; j < (b + 1) * D; ++j) gx[j] += gp[b] * element(xp[j]).dld;
        });
    });
    return {out_v, ld_v};
}

class Logit final : public Bijector {
public:
    Logit(const Params& p, const BuildContext& c, bool mirrored) : lam_(p.get_number("lambda")), mirrored_(mirrored) {
        set_event_shape(c.event_shape);
    }

protected:
    FlowResult do_inverse(const Var& x, const Var&) override {
        return mirrored_ ? apply_map(x, lam_, false, "sigmoid", "sigmoid_log_det")
                         : apply_map(x, lam_, true, "logit", "logit_log_det");
    }
    FlowResult do_forward(const Var& z, const Var&) override {
        return mirrored_ ? apply_map(z, lam_, true, "logit", "logit_log_det")
                         : apply_map(z, lam_, false, "sigmoid", "sigmoid_log_det");
    }

private:
    double lam_;
    bool mirrored_;
};

class Affine final : public Bijector {
public:
    explicit Affine(const BuildContext& c) {
        set_event_shape(c.event_shape);
        log_scale_ = add_parameter("log_scale", Tensor::zeros(c.event_shape));
        shift_ = add_parameter("shift", Tensor::zeros(c.event_shape));
    }

protected:
    FlowResult do_inverse(const Var& x, const Var&) override {
        return {(x - shift_) * exp(-log_scale_), broadcast_log_det(-sum_all(log_scale_), x)};
    }
    FlowResult do_forward(const Var& z, const Var&) override {
        return {z * exp(log_scale_) + shift_, broadcast_log_det(sum_all(log_scale_), z)};
    }

private:
    Var log_scale_, shift_;
};

}  // namespace

void register_elementwise(Registry& reg) {
    auto lambda_param = [] {
        return param_number("lambda", 1e-6, "squeezes the input into [l, 1-l] first, so 0 and 1 stay finite")
            .range(0.0, 0.49);
    };
    // logit and its mirror image, sigmoid: one layer class, the direction swapped.
    struct Mapping {
        const char* name;
        const char* doc;
        bool mirrored, unit_interval_input;
    };
    for (const Mapping& m :
         {Mapping{"logit", "z = logit(l + (1-2l) x) for data in (0, 1) (e.g. dequantised pixels), log-det included",
                  false, true},
          Mapping{"sigmoid", "z = (sigmoid(x) - l)/(1-2l): maps the reals into (0, 1); the inverse of logit", true,
                  false}}) {
        ConformanceHints hints;
        hints.shapes = {{5}, {2, 3}};
        hints.unit_interval = m.unit_interval_input;
        reg.add_bijector({m.name, m.doc, {lambda_param()},
                          [mirrored = m.mirrored](const Params& p, const BuildContext& c) -> std::unique_ptr<Bijector> {
                              return std::make_unique<Logit>(p, c, mirrored);
                          },
                          hints});
    }
    reg.add_bijector({"affine",
                      "learnable scale and shift per feature: x = z * exp(log_scale) + shift (starts as the identity)",
                      {},
                      [](const Params&, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<Affine>(c);
                      },
                      ConformanceHints{{{5}, {2, 3}}}});
}

}  // namespace flowlab::density
