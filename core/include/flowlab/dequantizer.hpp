// Dequantizer: turns discrete data into continuous values for a density model.
//
// dequantize(x) returns the continuous x', and log_weight so that
//   log P(x) >= E[ log p(x') + log_weight ]
// For uniform dequantisation x' = (x + u)/256 this is -D log 256 (the bin width); for a
// variational one it is that minus log q(u|x). The identity dequantizer returns 0.
//
//   class Identity : public flowlab::Dequantizer {
//   protected:
//       flowlab::Dequantized do_dequantize(const flowlab::Tensor& x, flowlab::Rng&,
//                                          const flowlab::Var&) override {
//           return {flowlab::Var(x), flowlab::Var(flowlab::Tensor::zeros({x.size(0)}))};
//       }
//   };
#pragma once

#include "flowlab/module.hpp"
#include "flowlab/rng.hpp"

namespace flowlab {

struct Dequantized {
    Var x;           // continuous data [batch, event...]
    Var log_weight;  // [batch]
};

class Dequantizer : public Module {
public:
    Dequantized dequantize(const Tensor& x, Rng& rng, const Var& context = Var());
    // True when dequantize() draws noise u ~ q(u|x) (uniform, variational): evaluation may then
    // average K draws into the importance-weighted bound. False for deterministic ones.
    virtual bool stochastic() const { return false; }

protected:
    virtual Dequantized do_dequantize(const Tensor& x, Rng& rng, const Var& context) = 0;
};

}  // namespace flowlab
