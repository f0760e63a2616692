// BaseDistribution: the density p0 on the latent space, and its sampler.
//
//   class StandardLogistic : public flowlab::BaseDistribution {
//   protected:
//       flowlab::Var do_log_prob(const flowlab::Var& z, const flowlab::Var&) override {
//           using namespace flowlab;  // log p = -z - 2 softplus(-z), summed per sample
//           return sum_per_sample(-z - 2.0 * softplus(-z));
//       }
//       flowlab::Tensor do_sample(std::int64_t n, flowlab::Rng& rng, double temperature,
//                                 const flowlab::Tensor&) override { ... }
//   };
#pragma once

#include "flowlab/module.hpp"
#include "flowlab/ops.hpp"
#include "flowlab/rng.hpp"

namespace flowlab {

class BaseDistribution : public Module {
public:
    // z: [batch, event...] -> log p0(z): [batch]. Checks the event shape.
    Var log_prob(const Var& z, const Var& context = Var());
    // n samples [n, event...]; temperature scales the spread (1 = the distribution itself).
    Tensor sample(std::int64_t n, Rng& rng, double temperature = 1.0, const Tensor& context = Tensor());

    const Shape& event_shape() const { return shape_; }
    void set_event_shape(const Shape& s) { shape_ = s; }

protected:
    virtual Var do_log_prob(const Var& z, const Var& context) = 0;
    virtual Tensor do_sample(std::int64_t n, Rng& rng, double temperature, const Tensor& context) = 0;

private:
    Shape shape_;
};

}  // namespace flowlab
