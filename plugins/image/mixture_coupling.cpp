// Flow++'s logistic-mixture CDF coupling (Ho et al. 2019), on vectors (`mixture_coupling`) and
// on images (`conv_mixture_coupling`):
//   inverse (data -> latent): z_b = logit(MixLogCDF(x_b; pi, mu, s)) exp(a) + b
//   forward (latent -> data): x_b = MixLogCDF^-1(sigmoid((z_b - b) exp(-a))), solved numerically
// with K components (softmax logits pi, means mu, log-scales log s floored at min_log_scale) and
// a = c tanh(a_raw / c), b per transformed value, all from a conditioner on the other part
// (and the flow's context). A zero-initialised conditioner gives K identical standard logistics
// and a = b = 0, whose map is logit(sigmoid(x)) = x: the layer starts as the identity.
//
// The split follows the affine couplings: a mask of flat features for vectors (affine_coupling's
// "alternate" or "half"), a channel half or a checkerboard of pixels for images
// (conv_affine_coupling's). The transform itself is one fused op (mixture_op.hpp).
//
// "closed_form": "forward" makes the layer the inverse bijector of the default one with the same
// parameters (as maf's "iaf" does): forward computes the formula and inverse solves it. The
// variational dequantizer draws its noise through its layers' forward, so there (as in Flow++'s
// dequantizer) the formula is what training runs, with no solve.
#include <memory>
#include <string>

#include "image.hpp"
#include "mixture_op.hpp"

namespace flowlab::image {
namespace {

std::shared_ptr<MixturePlan> base_plan(const Params& p, const std::string& layer) {
    auto plan = std::make_shared<MixturePlan>();
    plan->layer = layer;
    plan->components = static_cast<int>(p.get_int("components"));
    plan->scale_clamp = p.get_number("scale_clamp");
    plan->min_log_scale = p.get_number("min_log_scale");
    plan->mean_spread = p.get_number("mean_spread");
    plan->tolerance = p.get_number("inverse_tolerance");
    plan->max_iterations = static_cast<int>(p.get_int("inverse_iterations"));
    return plan;
}

// ---------------------------------------------------------------------------------- vectors

class MixtureCoupling final : public Bijector {
public:
    MixtureCoupling(const Params& p, const BuildContext& c) : swapped_(p.get_string("closed_form") == "forward") {
        const std::int64_t dim = numel(c.event_shape);
        flat_ = c.event_shape.size() != 1;
        split_ = coupling_split(p.get_string("mask"), p.get_int("parity"), dim, kName);
        auto plan = base_plan(p, kName);
        plan->dim = dim;
        plan->slots = split_.d_trans();
        plan->slot = split_.slot;
        plan_ = plan;
        Rng fallback(0);
        net_ = make_coupling_conditioner(p, c, split_, plan_->raw_cols(), c.rng ? *c.rng : fallback, kName);
        add_child("conditioner", net_.get());
    }

protected:
    // closed_form "forward" swaps which direction the formula computes (see the top).
    FlowResult do_inverse(const Var& x, const Var& context) override { return apply(x, context, !swapped_); }
    FlowResult do_forward(const Var& z, const Var& context) override { return apply(z, context, swapped_); }

private:
    static constexpr const char* kName = "mixture_coupling";

    FlowResult apply(const Var& in, const Var& context, bool inverse) {
        const std::int64_t B = in.size(0);
        Var x = flat_ ? reshape(in, {B, split_.dim}) : in;
        // Both directions condition on the untouched part, which is the same in x and z.
        Var raw = coupling_conditioner(*net_, x, context, split_, plan_->raw_cols(), kName);
        FlowResult r = mixture_transform(x, raw, plan_, inverse);
        if (flat_) r.out = reshape(r.out, in.shape());
        return r;
    }

    bool swapped_ = false;
    bool flat_ = false;
    CouplingSplit split_;
    std::shared_ptr<const MixturePlan> plan_;
    std::unique_ptr<Conditioner> net_;
};

// ----------------------------------------------------------------------------------- images

class ConvMixtureCoupling final : public Bijector {
public:
    ConvMixtureCoupling(const Params& p, const BuildContext& ctx) : swapped_(p.get_string("closed_form") == "forward") {
        const Shape& in = ctx.event_shape;
        require_image(in, kName);
        const std::int64_t C = in[0], P = in[1] * in[2];
        const std::int64_t parity = p.get_int("parity");
        auto plan = base_plan(p, kName);
        plan->dim = C * P;
        plan->slot.assign(static_cast<std::size_t>(C * P), -1);
        checker_ = p.get_string("mask") == "checkerboard";
        Shape cond_in;
        std::int64_t ct = 0;  // channels with transformed values; the conditioner gives each 2 + 3K
        if (checker_) {
            ct = C;
            mask_ = Tensor::empty({1, in[1], in[2]}, DType::f64);  // 1 on the conditioning pixels
            for (std::int64_t i = 0; i < in[1]; ++i)
                for (std::int64_t j = 0; j < in[2]; ++j) {
                    const std::int64_t q = i * in[2] + j;
                    const bool trans = (i + j) % 2 != parity;
                    mask_.set_item(q, trans ? 0.0 : 1.0);
                    if (trans)
                        for (std::int64_t c = 0; c < C; ++c)
                            plan->slot[static_cast<std::size_t>(c * P + q)] = static_cast<std::int32_t>(c * P + q);
                }
            cond_in = in;
        } else {
            if (C < 2 || C % 2 != 0)
                throw ShapeError(std::string(kName) + ": the channel mask needs an even number of channels, got " +
                                 shape_str(in) + " (squeeze first, or use \"mask\": \"checkerboard\")");
            ct = C / 2;
            const std::int64_t t0 = parity == 0 ? ct : 0;
            cond0_ = parity == 0 ? 0 : ct;
            cond_len_ = ct;
            for (std::int64_t c = t0; c < t0 + ct; ++c)
                for (std::int64_t q = 0; q < P; ++q)
                    plan->slot[static_cast<std::size_t>(c * P + q)] = static_cast<std::int32_t>((c - t0) * P + q);
            cond_in = {ct, in[1], in[2]};
        }
        plan->slots = ct * P;
        plan_ = plan;
        if (!ctx.registry || !ctx.rng)
            throw ConfigError(std::string(kName) + ": needs a registry and an rng to build its conditioner");
        ConditionerSpec spec{cond_in, {plan->params_per_slot() * ct, in[1], in[2]}, ctx.context_shape, true};
        spec.networks = ctx.networks;
        conditioner_ = ctx.registry->make_conditioner(p.get_object("conditioner"), spec, *ctx.rng);
        add_child("conditioner", conditioner_.get());
    }

protected:
    // closed_form "forward" swaps which direction the formula computes (see the top).
    FlowResult do_inverse(const Var& x, const Var& context) override { return apply(x, context, !swapped_); }
    FlowResult do_forward(const Var& z, const Var& context) override { return apply(z, context, swapped_); }

private:
    static constexpr const char* kName = "conv_mixture_coupling";

    FlowResult apply(const Var& in, const Var& context, bool inverse) {
        Var h;
        if (checker_) {
            if (mask_.dtype() != in.dtype()) mask_ = mask_.to(in.dtype());
            h = (*conditioner_)(in * Var(mask_), context);
        } else {
            h = (*conditioner_)(slice(in, 1, cond0_, cond_len_), context);
        }
        const std::int64_t B = in.size(0);
        if (h.value().numel() != B * plan_->raw_cols())
            throw ShapeError(std::string(kName) + ": the conditioner returned " + shape_str(h.shape()) + ", which does not hold " +
                             std::to_string(plan_->raw_cols()) + " values per sample");
        FlowResult r = mixture_transform(reshape(in, {B, plan_->dim}), reshape(h, {B, plan_->raw_cols()}), plan_, inverse);
        r.out = reshape(r.out, in.shape());
        return r;
    }

    std::shared_ptr<const MixturePlan> plan_;
    bool swapped_ = false;
    bool checker_ = false;
    Tensor mask_;
    std::int64_t cond0_ = 0, cond_len_ = 0;
    std::unique_ptr<Conditioner> conditioner_;
};

// The parameters of the mixture transform, shared by both layers.
Schema mixture_params(std::int64_t components) {
    return {
        param_int("components", components, "K, the logistic components of the mixture CDF per value")
            .range(1, kMaxMixtureComponents),
        param_number("scale_clamp", 1.0, "a = c tanh(a_raw / c) bounds the log-scale of the final affine map "
                                         "(Flow++: c = 1)")
            .range(0.01, 20.0),
        param_number("min_log_scale", -7.0, "floor of the components' log-scales (Flow++: -7)").range(-20.0, 0.0),
        param_number("mean_spread", 1.0,
                     "the components' means are offset evenly over [-spread, spread], so that a zero-initialised "
                     "conditioner does not start (and keep) K equal components; 0: no offsets")
            .range(0.0, 100.0),
        param_number("inverse_tolerance", 1e-10,
                     "sampling solves the mixture CDF by safeguarded Newton to this step, relative to max(1, |x|) "
                     "(never below 4 ulps of the dtype)")
            .range(1e-16, 1e-2),
        param_int("inverse_iterations", 200, "iteration limit of that solve (beyond it: an error naming the layer)")
            .range(1, 100000),
        param_string("closed_form", "inverse",
                     "the direction the formula computes: inverse (density, training) or forward (sampling; "
                     "e.g. q's layers in the variational dequantizer, which draw through forward); the other "
                     "direction is solved")
            .choices({"inverse", "forward"}),
    };
}

Schema vector_schema() {
    Schema s = coupling_split_params();
    s.push_back(param_object("conditioner", R"({"type": "mlp"})",
                             "network from the conditioning features (and context) to the 2 + 3K parameters of each "
                             "transformed feature"));
    for (auto& e : mixture_params(8)) s.push_back(std::move(e));
    return s;
}

Schema image_schema() {
    Schema s = {
        param_object("conditioner", R"({"type": "cnn"})",
                     "network from the conditioning part to 2 + 3K channels per transformed channel"),
        param_string("mask", "channel", "what conditions: the first half of the channels, or a checkerboard of pixels")
            .choices({"channel", "checkerboard"}),
        param_int("parity", 0, "channel: 0 conditions on the first half, 1 on the second; checkerboard: the "
                               "squares with (h + w) % 2 == parity condition")
            .range(0, 1),
    };
    for (auto& e : mixture_params(4)) s.push_back(std::move(e));
    return s;
}

}  // namespace

void register_mixture_couplings(Registry& reg) {
    BijectorEntry vec{"mixture_coupling",
                      "Flow++ coupling on vectors: z_t = logit(MixLogCDF(x_t)) exp(a) + b, K logistics per feature "
                      "from the other features",
                      vector_schema(),
                      [](const Params& p, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<MixtureCoupling>(p, c);
                      }};
    vec.hints.shapes = {{2}, {5}};
    vec.hints.params_json = R"({"components": 3, "conditioner": {"type": "mlp", "hidden": [16]}})";
    reg.add_bijector(std::move(vec));

    BijectorEntry img{"conv_mixture_coupling",
                      "Flow++ coupling on images: z_b = logit(MixLogCDF(x_b)) exp(a) + b, K logistics per value "
                      "from the other half (channels or checkerboard)",
                      image_schema(),
                      [](const Params& p, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<ConvMixtureCoupling>(p, c);
                      }};
    img.hints.shapes = {{4, 3, 3}, {2, 2, 3}};
    // A narrow cnn: the suite perturbs every weight by 0.3, and a wide one then gives mixtures
    // with gaps where F is flat to e^-18, whose solved direction is too steep for its finite
    // differences (step 1e-6); these keep the maps steep only to about e^5 (20 seeds checked).
    img.hints.params_json = R"({"components": 3, "conditioner": {"type": "cnn", "hidden": 4}})";
    reg.add_bijector(std::move(img));
}

}  // namespace flowlab::image
