// Bijector: the extension point for flow layers.
//
// Directions follow log p(x) = log p0(f^-1(x)) + log|det d f^-1(x)/dx|:
//   inverse(x) -> {z, log|det dz/dx|}   data -> latent (density, training)
//   forward(z) -> {x, log|det dx/dz|}   latent -> data (sampling)
// Tensors are [batch, event...]; log_det is [batch]. Row i of the output depends on row i of
// the input only (unless the layer says otherwise, e.g. batch norm in training mode).
// `context` is the conditioning input of conditional flows ([batch, ...]), undefined otherwise.
//
// A complete layer (y = x * exp(a) + b, per feature), registered from a plugin:
//
//   class ScaleShift : public flowlab::Bijector {
//   public:
//       explicit ScaleShift(const flowlab::Shape& shape) {
//           a_ = add_parameter("a", flowlab::Tensor::zeros(shape));
//           b_ = add_parameter("b", flowlab::Tensor::zeros(shape));
//       }
//   protected:
//       flowlab::FlowResult do_inverse(const flowlab::Var& x, const flowlab::Var&) override {
//           using namespace flowlab;
//           return {(x - b_) * exp(-a_), broadcast_log_det(-sum_all(a_), x)};
//       }
//       flowlab::FlowResult do_forward(const flowlab::Var& z, const flowlab::Var&) override {
//           using namespace flowlab;
//           return {z * exp(a_) + b_, broadcast_log_det(sum_all(a_), z)};
//       }
//   private:
//       flowlab::Var a_, b_;
//   };
//
//   FLOWLAB_PLUGIN("my_layers", "1.0", "a scale-and-shift layer") {
//       reg.add_bijector({"scale_shift", "y = x * exp(a) + b per feature", {},
//           [](const flowlab::Params&, const flowlab::BuildContext& c) {
//               return std::make_unique<ScaleShift>(c.event_shape);
//           }});
//   }
#pragma once

#include <functional>

#include "flowlab/module.hpp"
#include "flowlab/ops.hpp"

namespace flowlab {

struct FlowResult {
    Var out;
    Var log_det;  // [batch]
};

class Bijector : public Module {
public:
    // Check the input against the event shape, then call the implementation, then check the
    // result's shapes. Throw ShapeError naming the layer on a mismatch.
    FlowResult inverse(const Var& x, const Var& context = Var());
    FlowResult forward(const Var& z, const Var& context = Var());

    // Per-sample input shape (set by the builder) and output shape (equal unless the layer
    // reshapes, like squeeze).
    const Shape& event_shape() const { return in_shape_; }
    virtual Shape output_shape(const Shape& in) const { return in; }
    void set_event_shape(const Shape& s) { in_shape_ = s; }

    // The name given at registration ("affine_coupling"); set by the builder.
    const std::string& type_name() const { return type_name_; }
    void set_type_name(std::string n) { type_name_ = std::move(n); }

    // Data-dependent initialisation (e.g. ActNorm): called by the trainer once, before the first
    // step, with a batch at this layer's input. Returns the layer's output for that batch so the
    // next layer can initialise on it. The default does nothing but run inverse.
    virtual Var data_init(const Var& x, const Var& context);

    // Whether row i of the output depends on row i of the input only (true for almost all).
    virtual bool batch_independent() const { return true; }

    // A [batch] log-det of zeros in the dtype of `like`, for a volume-preserving layer (a
    // permutation, a shift): `return {out, zero_log_det(x)};`. A static member rather than a free
    // function: inside a layer it is found before a helper of the same name that a plugin
    // defined for itself, which a free function would make ambiguous.
    static Var zero_log_det(const Var& like);

protected:
    virtual FlowResult do_inverse(const Var& x, const Var& context) = 0;
    virtual FlowResult do_forward(const Var& z, const Var& context) = 0;

private:
    Shape in_shape_;
    std::string type_name_;
};

// A [batch] log-det with the same value for every row of `like` (a data-independent layer).
Var broadcast_log_det(const Var& scalar_log_det, const Var& like);
// A volume-preserving layer returns Bijector::zero_log_det(x) instead (a static member, above).

// Numerical inverses. A direction without a closed form is solved on values, without gradients
// (bisection, Newton, a fixed point), and then carries its gradients through one differentiable
// Newton step from the root: x = x0 - (f(x0) - y) / f'(x0) has the value x0 (to the solver's
// precision, one step better) and, by the implicit function theorem, the exact gradients
// dx/dy = 1 / f'(x) and dx/dtheta = -(df/dtheta) / f'(x) for f's parameters theta. The
// conformance suite checks gradients in both directions, so both need them. For an element-wise
// map y = f(x), increasing in x:
//
//   ElementwiseFn f = [&](const Var& x) { return x + w * tanh(x - c); };       // theta: w, c
//   ElementwiseFn df = [&](const Var& x) { return 1.0 + w * (1.0 - square(tanh(x - c))); };
//   Tensor root = bisect_increasing(f, y.value(), lo, hi);   // no graph: values only
//   Var x = newton_step(f, df, root, y);                     // differentiable in y, w and c
using ElementwiseFn = std::function<Var(const Var&)>;

// Solves f(x) = y element-wise for f increasing in x, by bisection until the bracket cannot
// shrink in y's dtype (or `max_iterations`). lo and hi (y's shape) are a first bracket; where it
// does not hold the root it is widened, doubling, until it does (NumericError when it never
// does: f is not increasing, or y is outside its range). Runs without gradients.
Tensor bisect_increasing(const ElementwiseFn& f, const Tensor& y, const Tensor& lo, const Tensor& hi,
                         int max_iterations = 256);
// One Newton step from `root` (f(root) ~= y, found without gradients) that carries the
// gradients of the solution to y and to the parameters f uses; df is f's element-wise derivative
// in x. Its value is the root's (refined), whatever the solver was.
Var newton_step(const ElementwiseFn& f, const ElementwiseFn& df, const Tensor& root, const Var& y);

}  // namespace flowlab
