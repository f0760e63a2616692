// Split: the multi-scale graph node (RealNVP, Glow). It factors out the last channels of its
// input straight to the latent space and runs the rest of the chain on the kept channels only.
//
// In a config it stands inside a layer list; the layers after it act on the kept part:
//   "layers": [{"type": "squeeze"}, ...K steps..., {"type": "split"},
//              {"type": "squeeze"}, ...K steps...]
// The output is one flat latent [B, D]: the factored channels (flattened) followed by the
// chain's output (flattened), so the flow stays one bijection and the base distribution sees
// every dimension; sampling reassembles the parts through forward().
//
// An optional learned prior (Glow's "split prior") makes the factored part conditionally
// Gaussian given the kept part: z_f = (x_f - mu(x_k)) * exp(-log_sigma(x_k)), with mu and
// log_sigma from a conditioner whose last layer starts at zero (so the prior starts as N(0, I)).
#pragma once

#include <memory>
#include <vector>

#include "flowlab/bijector.hpp"
#include "flowlab/conditioner.hpp"

namespace flowlab {

class SplitBijector : public Bijector {
public:
    // in: [C, ...] per sample; keep the first `keep` channels.
    SplitBijector(const Shape& in, std::int64_t keep, std::vector<std::unique_ptr<Bijector>> rest,
                  std::unique_ptr<Conditioner> prior);
    Shape output_shape(const Shape& in) const override;
    Var data_init(const Var& x, const Var& context) override;
    bool batch_independent() const override;

    std::size_t num_rest() const { return rest_.size(); }
    Bijector& rest(std::size_t i) { return *rest_[i]; }
    Shape kept_shape() const;
    Shape factored_shape() const;

protected:
    FlowResult do_inverse(const Var& x, const Var& context) override;
    FlowResult do_forward(const Var& z, const Var& context) override;

private:
    FlowResult run_rest_inverse(const Var& h, const Var& context);
    FlowResult run_rest_forward(const Var& h, const Var& context);

    Shape in_;
    std::int64_t keep_;
    std::vector<std::unique_ptr<Bijector>> rest_;
    std::unique_ptr<Conditioner> prior_;
    Shape rest_out_;
};

}  // namespace flowlab
