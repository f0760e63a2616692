// BaseDistribution's checked entry points.
#include "flowlab/distribution.hpp"

#include <cmath>

#include "flowlab/errors.hpp"
#include "flowlab/kernels.hpp"
#include "model/checks.hpp"

namespace flowlab {

using namespace model;

Var BaseDistribution::log_prob(const Var& z, const Var& context) {
    const std::string who = "base distribution (log_prob)";
    check_input(z, shape_, who, "input");
    Var lp = do_log_prob(z, context);
    check_result(lp, {z.size(0)}, who, "log_prob");
    return lp;
}

Tensor BaseDistribution::sample(std::int64_t n, Rng& rng, double temperature, const Tensor& context) {
    if (n < 0) throw ShapeError("base distribution (sample): cannot draw " + std::to_string(n) + " samples");
    if (!(temperature >= 0.0) || !std::isfinite(temperature))
        throw NumericError("base distribution (sample): temperature must be finite and >= 0, got " +
                           std::to_string(temperature));
    Tensor t = do_sample(n, rng, temperature, context);
    if (!t.defined()) throw ShapeError("base distribution (sample): the sampler returned nothing");
    if (!shape_.empty() && t.shape() != with_batch(n, shape_))
        throw ShapeError("base distribution (sample): samples should be " + shape_str(with_batch(n, shape_)) + ", got " +
                         shape_str(t.shape()));
    return t;
}

}  // namespace flowlab
