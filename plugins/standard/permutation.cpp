// Permutations of the first event dimension (features of a vector, channels of an image):
// `reverse` and `random_permutation`. Volume preserving, so log_det = 0.
//   inverse (x -> z): z[:, i] = x[:, perm[i]];  forward: x[:, j] = z[:, inv[j]]
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include <flowlab/ops.hpp>

#include "standard.hpp"

namespace flowlab::standard {
namespace {

class Permutation final : public Bijector {
public:
    Permutation(std::vector<std::int64_t> perm, const Shape& event) : perm_(std::move(perm)), inv_(perm_.size()) {
        set_event_shape(event);
        for (std::size_t i = 0; i < perm_.size(); ++i) inv_[static_cast<std::size_t>(perm_[i])] = static_cast<std::int64_t>(i);
    }

protected:
    FlowResult do_inverse(const Var& x, const Var&) override { return {gather(x, perm_, 1), zero_log_det(x)}; }
    FlowResult do_forward(const Var& z, const Var&) override { return {gather(z, inv_, 1), zero_log_det(z)}; }

private:
    std::vector<std::int64_t> perm_, inv_;
};

std::int64_t first_dim(const BuildContext& c, const char* name) {
    if (c.event_shape.empty() || c.event_shape[0] < 1)
        throw ShapeError(std::string(name) + ": needs an event with a first dimension, got " + shape_str(c.event_shape));
    return c.event_shape[0];
}

ConformanceHints permutation_hints(const char* params) {
    ConformanceHints h;
    h.shapes = {{2}, {5}};
    h.params_json = params;
    return h;
}

}  // namespace

void register_permutations(Registry& reg) {
    reg.add_bijector({"reverse", "reverses the order of the features (of the first event dimension)", {},
                      [](const Params&, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          std::vector<std::int64_t> perm(static_cast<std::size_t>(first_dim(c, "reverse")));
                          std::iota(perm.rbegin(), perm.rend(), std::int64_t{0});
                          return std::make_unique<Permutation>(std::move(perm), c.event_shape);
                      },
                      permutation_hints("{}")});
    reg.add_bijector(
        {"random_permutation", "a fixed, seeded random permutation of the features (of the first event dimension)",
         {param_int("seed", -1, "seed of the permutation; -1 = drawn from the model's init seed (differs per layer)")
              .min(-1)},
         [](const Params& p, const BuildContext& c) -> std::unique_ptr<Bijector> {
             const std::int64_t n = first_dim(c, "random_permutation");
             const std::int64_t seed = p.get_int("seed");
             Rng rng = seed >= 0 || !c.rng ? Rng(static_cast<std::uint64_t>(std::max<std::int64_t>(seed, 0))) : c.rng->split();
             return std::make_unique<Permutation>(rng.permutation(n), c.event_shape);
         },
         permutation_hints(R"({"seed": 3})")});
}

}  // namespace flowlab::standard
