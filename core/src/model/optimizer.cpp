// Optimizer's entry points.
#include "flowlab/optimizer.hpp"

#include <cmath>

#include "flowlab/errors.hpp"

namespace flowlab {

void Optimizer::step(double lr) {
    if (!std::isfinite(lr)) throw NumericError("optimizer: learning rate is not finite");
    do_step(lr);
    ++steps_;
}

void Optimizer::zero_grad() {
    for (auto& p : params_) p.var.zero_grad();
}

}  // namespace flowlab
