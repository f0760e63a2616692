// A deliberately wrong plugin, for the conformance suite to catch: a per-feature scale and
// shift whose inverse reports the log-det of the forward direction (the sign is flipped).
// Round trips and gradients are fine; `flowlab check-plugin` fails it on log_det_cancel and
// log_det_vs_jacobian. A flow trained with it optimises the wrong likelihood (the loss falls
// without bound); `flowlab run config.json` stops it with exit code 8 at the first evaluation,
// once training has moved the parameters away from zero, where both log-dets are 0 and agree.
#include <flowlab/plugin.hpp>

namespace {

using namespace flowlab;

// inverse: z = (x - b) * exp(-a), log|dz/dx| = -sum(a); forward: x = z * exp(a) + b.
class BrokenScaleShift final : public Bijector {
public:
    explicit BrokenScaleShift(const Shape& shape)
        : a_(add_parameter("log_scale", Tensor::zeros(shape))), b_(add_parameter("shift", Tensor::zeros(shape))) {}

protected:
    FlowResult do_inverse(const Var& x, const Var&) override {
        return {(x - b_) * exp(-a_), broadcast_log_det(sum_all(a_), x)};  // BUG: should be -sum_all(a_)
    }
    FlowResult do_forward(const Var& z, const Var&) override {
        return {z * exp(a_) + b_, broadcast_log_det(sum_all(a_), z)};
    }

private:
    Var a_, b_;
};

}  // namespace

FLOWLAB_PLUGIN("broken_logdet", "0.0.1", "a scale-and-shift layer with the inverse log-det's sign flipped (a test fixture)") {
    reg.add_bijector({"broken_scale_shift", "z = (x - b) * exp(-a) per feature, with a wrong log-det", {},
                      from_event_shape<Bijector, BrokenScaleShift>()});
}
