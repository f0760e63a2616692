// Optimizer's entry points.
#include "flowlab/optimizer.hpp"

#include <cmath>

#include "flowlab/errors.hpp"
#include "flowlab/ops.hpp"

namespace flowlab {

void Optimizer::step(double lr, double grad_scale) {
    if (!std::isfinite(lr)) throw NumericError("optimizer: learning rate is not finite");
    if (!std::isfinite(grad_scale)) throw NumericError("optimizer: gradient scale is not finite");
    if (grad_scale != 1.0 && !applies_grad_scale()) {
        for (auto& p : params_)
            if (p.var.grad().defined()) kern::scale_inplace(p.var.mutable_grad(), grad_scale);
        grad_scale = 1.0;
    }
    grad_scale_ = grad_scale;
    // Back to 1 however do_step ends, so that grad_scale() never leaks into a later step.
    struct Reset {
        double& s;
        ~Reset() { s = 1.0; }
    } reset{grad_scale_};
    do_step(lr);
    ++steps_;
}

void Optimizer::zero_grad() {
    for (auto& p : params_) p.var.zero_grad();
}

}  // namespace flowlab
