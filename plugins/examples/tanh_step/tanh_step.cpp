// An example plugin built outside flowlab's tree: a layer with no closed-form inverse. One
// direction is a formula; the other is solved numerically and still carries exact gradients.
//
//   inverse (data -> latent):  z = exp(s) * f(x),   f(x) = x + w * tanh(x - c),   w = softplus(a)
//       log|dz/dx| = s + log f'(x),                 f'(x) = 1 + w * (1 - tanh(x - c)^2)
//   forward (latent -> data):  x = f^-1(z * exp(-s)), by bisection and one Newton step
//       log|dx/dz| = -s - log f'(x)
//
// Per feature, f adds a smooth step of height 2w centred at c: it spreads the data apart around
// c (the latent side sees a gap there), which a Gaussian base then fills. f' >= 1, so f is
// increasing and f(x) = y has exactly one root, and |f(x) - x| <= w puts it in [y - w, y + w]:
// a bracket that always holds, for a bisection that always converges.
//
// The forward direction is flowlab's sampling direction. Training only differentiates the
// inverse, but the conformance suite checks the gradients of both (a program may differentiate
// samples), so the solved direction ends in newton_step: the bisection runs on values without a
// graph, and the step x = x0 - (f(x0) - y) / f'(x0) gives x its gradients in z, s, a and c.
// The pattern is the same when the solved direction is the inverse, where it is what makes
// training work at all.
#include <memory>

#include <flowlab/plugin.hpp>

namespace {

using namespace flowlab;

class TanhStep final : public Bijector {
public:
    explicit TanhStep(const Shape& shape) {
        log_scale_ = add_parameter("log_scale", Tensor::zeros(shape));
        // softplus(-3) = 0.049: the layer starts close to the identity.
        step_ = add_parameter("step", Tensor::full(shape, -3.0));
        center_ = add_parameter("center", Tensor::zeros(shape));
    }

protected:
    FlowResult do_inverse(const Var& x, const Var&) override {
        const Var w = softplus(step_);
        const Var z = exp(log_scale_) * f(x, w);
        return {z, sum_per_sample(log(slope(x, w))) + broadcast_log_det(sum_all(log_scale_), x)};
    }

    FlowResult do_forward(const Var& z, const Var&) override {
        const Var w = softplus(step_);
        const Var y = z * exp(-log_scale_);
        const ElementwiseFn fn = [&](const Var& x) { return f(x, w); };
        const ElementwiseFn dfn = [&](const Var& x) { return slope(x, w); };
        Tensor lo, hi;
        {
            NoGradGuard no_grad;  // the bracket is a starting point, not part of the result
            lo = (y - w).value();
            hi = (y + w).value();
        }
        const Tensor root = bisect_increasing(fn, y.value(), lo, hi);
        const Var x = newton_step(fn, dfn, root, y);
        return {x, -(sum_per_sample(log(slope(x, w))) + broadcast_log_det(sum_all(log_scale_), z))};
    }

private:
    Var f(const Var& x, const Var& w) const { return x + w * tanh(x - center_); }
    Var slope(const Var& x, const Var& w) const { return 1.0 + w * (1.0 - square(tanh(x - center_))); }

    Var log_scale_, step_, center_;
};

}  // namespace

// FLOWLAB_PLUGIN_NAME is the NAME given to flowlab_add_plugin ("tanh_step"): the plugin's name
// and its file's (libflowlab_tanh_step.so) cannot drift apart.
FLOWLAB_PLUGIN(FLOWLAB_PLUGIN_NAME, "1.0.0", "tanh_step: a per-feature smooth step whose forward is solved numerically") {
    ConformanceHints hints;
    hints.shapes = {{5}, {2, 3}};
    reg.add_bijector({"tanh_step",
                      "z = exp(s) * (x + w * tanh(x - c)) per feature, w = softplus(a); forward by bisection",
                      {},
                      [](const Params&, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<TanhStep>(c.event_shape);
                      },
                      hints});
}
