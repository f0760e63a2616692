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

protected:
    virtual FlowResult do_inverse(const Var& x, const Var& context) = 0;
    virtual FlowResult do_forward(const Var& z, const Var& context) = 0;

private:
    Shape in_shape_;
    std::string type_name_;
};

// A [batch] log-det with the same value for every row of `like` (a data-independent layer).
Var broadcast_log_det(const Var& scalar_log_det, const Var& like);

}  // namespace flowlab
