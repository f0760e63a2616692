// Conditioner: the network inside a coupling or autoregressive layer that maps the
// conditioning part of the input (and the flow's context, if any) to the transform's
// parameters. Registered like any other type, so `"conditioner": {"type": "mlp", ...}` in a
// config picks one.
//
//   class Linear : public flowlab::Conditioner {
//   public:
//       Linear(const flowlab::ConditionerSpec& s, flowlab::Rng&) {
//           w_ = add_parameter("w", flowlab::Tensor::zeros({s.in_shape[0], s.out_shape[0]}));
//       }
//       flowlab::Var operator()(const flowlab::Var& x, const flowlab::Var&) override {
//           return flowlab::linear(x, w_);
//       }
//   private:
//       flowlab::Var w_;
//   };
#pragma once

#include "flowlab/module.hpp"
#include "flowlab/ops.hpp"

namespace flowlab {

class Registry;
class NetworkLibrary;

struct ConditionerSpec {
    Shape in_shape;       // per sample, e.g. [d] or [c, h, w]
    Shape out_shape;      // per sample
    Shape context_shape;  // empty when the flow is unconditional
    bool zero_init_last = true;  // the layer starts as the identity
    // For conditioners built of other registered types (the `graph` conditioner builds ops):
    // Registry::make_conditioner sets `registry` to itself when it is null. `networks` holds the
    // model's named network definitions ("model.networks", network.hpp); null when there are none.
    const Registry* registry = nullptr;
    NetworkLibrary* networks = nullptr;
};

class Conditioner : public Module {
public:
    virtual Var operator()(const Var& x, const Var& context) = 0;
};

}  // namespace flowlab
