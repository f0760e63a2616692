// Dequantizer's checked entry point.
#include "flowlab/dequantizer.hpp"

#include "flowlab/errors.hpp"
#include "model/checks.hpp"

namespace flowlab {

using namespace model;

Dequantized Dequantizer::dequantize(const Tensor& x, Rng& rng, const Var& context) {
    const std::string who = "dequantizer";
    if (!x.defined() || x.dim() < 1) throw ShapeError(who + ": expected a batched input [B, ...]");
    Dequantized d = do_dequantize(x, rng, context);
    check_result(d.x, x.shape(), who, "dequantized x");
    check_result(d.log_weight, {x.size(0)}, who, "log_weight");
    return d;
}

}  // namespace flowlab
