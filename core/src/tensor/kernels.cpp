#include "flowlab/kernels.hpp"

#include <cmath>

#include "flowlab/conditioner.hpp"
#include "flowlab/ops.hpp"
#include "flowlab/registry.hpp"
#include "flowlab/rng.hpp"

namespace flowlab {

CouplingSplit coupling_split(const std::string& kind, std::int64_t parity, std::int64_t dim, const std::string& layer) {
    if (dim < 2) throw ShapeError(layer + ": needs at least 2 features to split, got " + std::to_string(dim));
    if (kind != "alternate" && kind != "half")
        throw ConfigError(layer + ": unknown mask '" + kind + "' (known: alternate, half)");
    CouplingSplit s;
    s.dim = dim;
    s.slot.assign(static_cast<std::size_t>(dim), -1);
    const std::int64_t half = (dim + 1) / 2;
    for (std::int64_t j = 0; j < dim; ++j) {
        const std::int64_t set = kind == "alternate" ? j % 2 : (j < half ? 0 : 1);
        if (set == parity) {
            s.slot[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(s.trans.size());
            s.trans.push_back(j);
        } else {
            s.cond.push_back(j);
        }
    }
    s.cond_contiguous = !s.cond.empty() && s.cond.back() - s.cond.front() + 1 == static_cast<std::int64_t>(s.cond.size());
    return s;
}

Schema coupling_split_params() {
    return {
        param_string("mask", "alternate",
                     "feature split: 'alternate' (even/odd flat index) or 'half' (first ceil(D/2) / rest)")
            .choices({"alternate", "half"}),
        param_int("parity", 0, "which set is transformed: 0 = even indices / first half, 1 = odd / second half")
            .range(0, 1),
    };
}

std::unique_ptr<Conditioner> make_coupling_conditioner(const Params& p, const BuildContext& c, const CouplingSplit& s,
                                                       std::int64_t width, Rng& rng, const std::string& layer) {
    if (!c.registry) throw PluginError(layer + ": built without a registry (needed for its conditioner)");
    ConditionerSpec spec{{static_cast<std::int64_t>(s.cond.size())}, {width}, c.context_shape, true};
    spec.registry = c.registry;
    spec.networks = c.networks;
    return c.registry->make_conditioner(p.get_object("conditioner"), spec, rng);
}

Var coupling_conditioner(Conditioner& net, const Var& x, const Var& context, const CouplingSplit& s,
                         std::int64_t width, const std::string& layer) {
    const auto n_cond = static_cast<std::int64_t>(s.cond.size());
    Var raw = net(s.cond_contiguous ? slice(x, 1, s.cond.front(), n_cond) : gather(x, s.cond, 1), context);
    const Shape expected{x.size(0), width};
    if (raw.shape() != expected)
        throw ShapeError(layer + ": the conditioner returned " + shape_str(raw.shape()) + ", expected " +
                         shape_str(expected));
    return raw;
}

void init_fan_in_uniform(Tensor& weight, Tensor& bias, std::int64_t fan_in, bool zero, Rng& rng) {
    if (zero) {
        weight.fill(0.0);
        if (bias.defined()) bias.fill(0.0);
        return;
    }
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    rng.fill_uniform(weight, -bound, bound);
    if (bias.defined()) rng.fill_uniform(bias, -bound, bound);
}

void check_memory(const std::string& where, std::int64_t count, std::int64_t bytes_each, const std::string& what,
                  const std::string& hint) {
    const std::uint64_t avail = available_memory_bytes();
    std::int64_t bytes = 0;
    const bool overflow = count < 0 || bytes_each < 0 || __builtin_mul_overflow(count, bytes_each, &bytes);
    if (!overflow && (avail == 0 || static_cast<std::uint64_t>(bytes) <= avail)) return;
    throw ConfigError(where + ": " + std::to_string(count) + " " + what + " need about " +
                      format_gigabytes(static_cast<double>(count) * static_cast<double>(bytes_each)) + " of memory, " +
                      (avail ? format_gigabytes(static_cast<double>(avail)) : std::string("an unknown amount")) + " is available; " +
                      hint);
}

}  // namespace flowlab
