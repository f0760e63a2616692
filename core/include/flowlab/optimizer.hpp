// Optimizer and Schedule: the parameter update and the learning-rate factor over steps.
//
//   class Sgd : public flowlab::Optimizer {
//   public:
//       using Optimizer::Optimizer;
//   protected:
//       void do_step(double lr) override {
//           for (auto& p : params())
//               if (p.var.grad().defined())
//                   flowlab::kern::axpy_inplace(p.var.mutable_value(), -lr, p.var.grad());
//       }
//   };
#pragma once

#include <cstdint>
#include <vector>

#include "flowlab/module.hpp"

namespace flowlab {

class Optimizer {
public:
    explicit Optimizer(std::vector<NamedVar> params) : params_(std::move(params)) {}
    virtual ~Optimizer() = default;

    // One update with learning rate lr (the schedule already applied) from the gradients times
    // grad_scale (gradient clipping's factor); counts steps. An optimizer that applies the
    // factor in its own pass over the gradients says so (applies_grad_scale); for the others
    // the gradients are scaled in place first, which costs one more pass over them.
    void step(double lr, double grad_scale = 1.0);
    void zero_grad();
    std::int64_t steps_taken() const { return steps_; }
    double base_lr() const { return base_lr_; }
    void set_base_lr(double lr) { base_lr_ = lr; }

    // Named state tensors (moments...) for checkpoints; load_state restores them in place.
    virtual std::vector<NamedTensor> state() { return {}; }
    void set_steps_taken(std::int64_t s) { steps_ = s; }

    const std::vector<NamedVar>& params() const { return params_; }

protected:
    virtual void do_step(double lr) = 0;
    // True when do_step multiplies each gradient by grad_scale() as it reads it.
    virtual bool applies_grad_scale() const { return false; }
    // The factor on this step's gradients (1 outside step(), and when not applies_grad_scale()).
    double grad_scale() const { return grad_scale_; }

private:
    std::vector<NamedVar> params_;
    double grad_scale_ = 1.0;
    std::int64_t steps_ = 0;
    double base_lr_ = 1e-3;
};

class Schedule {
public:
    virtual ~Schedule() = default;
    // The factor on the base learning rate at `step` (0 = the first step) of `total`.
    virtual double factor(std::int64_t step, std::int64_t total) const = 0;
};

}  // namespace flowlab
