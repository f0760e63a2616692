// `spline_coupling`: the rational-quadratic spline coupling layer of Neural Spline Flows.
//
// The D flat features are split by a mask; the conditioner maps the conditioning features (and
// the flow's context) to 3K-1 raw parameters per transformed feature, contiguous per feature.
//   inverse (x -> z): z_t = spline(x_t), log_det = sum log spline'(x_t)
//   forward (z -> x): x_t = spline^-1(z_t)
// The conditioner's last layer starts at zero, and all-zero raw parameters are the identity
// spline (spline.hpp), so the layer starts as the identity.
#include <memory>
#include <string>

#include <flowlab/ops.hpp>

#include "density.hpp"
#include "spline_op.hpp"

namespace flowlab::density {

Schema spline_schema_params() {
    return {
        param_int("bins", 8, "number of spline bins K").range(1, rqs::kMaxBins),
        param_number("tail_bound", 3.0, "the spline acts on [-B, B]; identity (linear) tails outside").min(1e-6),
        param_number("min_bin_width", 1e-3, "lower bound of every bin width, as a fraction of 2B").range(0.0, 0.5),
        param_number("min_bin_height", 1e-3, "lower bound of every bin height, as a fraction of 2B").range(0.0, 0.5),
        param_number("min_derivative", 1e-3, "lower bound of the interior knot derivatives").range(0.0, 0.99),
    };
}

rqs::SplineConfig spline_config(const Params& p) {
    rqs::SplineConfig cfg;
    cfg.bins = static_cast<int>(p.get_int("bins"));
    cfg.tail_bound = p.get_number("tail_bound");
    cfg.min_width = p.get_number("min_bin_width");
    cfg.min_height = p.get_number("min_bin_height");
    cfg.min_derivative = p.get_number("min_derivative");
    if (cfg.min_width * cfg.bins >= 1.0)
        throw ConfigError(p.where("min_bin_width") + ": bins * min_bin_width must stay below 1");
    if (cfg.min_height * cfg.bins >= 1.0)
        throw ConfigError(p.where("min_bin_height") + ": bins * min_bin_height must stay below 1");
    return cfg;
}

namespace {

class SplineCoupling final : public Bijector {
public:
    SplineCoupling(const Params& p, const BuildContext& c) : cfg_(spline_config(p)) {
        set_event_shape(c.event_shape);
        dim_ = numel(c.event_shape);
        if (c.event_shape.empty() || dim_ < 2)
            throw ShapeError("spline_coupling: needs at least 2 features to split, got " + shape_str(c.event_shape));
        split_ = coupling_split(p.get_string("mask"), p.get_int("parity"), dim_, "spline_coupling");
        layout_ = std::make_shared<const SplineLayout>(SplineLayout::per_feature(
            split_.slot, static_cast<std::int32_t>(split_.trans.size()), cfg_.num_params()));
        Rng rng = init_rng(c);
        net_ = make_coupling_conditioner(p, c, split_, layout_->raw_cols, rng, "spline_coupling");
        add_child("conditioner", net_.get());
    }

protected:
    FlowResult do_inverse(const Var& x, const Var& context) override { return apply(x, context, true); }
    FlowResult do_forward(const Var& z, const Var& context) override { return apply(z, context, false); }

private:
    FlowResult apply(const Var& in, const Var& context, bool spline_forward) {
        const std::int64_t B = in.size(0);
        Var x = in.value().dim() == 2 ? in : reshape(in, {B, dim_});
        Var raw = coupling_conditioner(*net_, x, context, split_, layout_->raw_cols, "spline_coupling");
        FlowResult r = spline_transform(x, raw, layout_, cfg_, spline_forward);
        if (in.value().dim() != 2) r.out = reshape(r.out, in.shape());
        return r;
    }

    rqs::SplineConfig cfg_;
    std::int64_t dim_ = 0;
    CouplingSplit split_;
    std::shared_ptr<const SplineLayout> layout_;
    std::unique_ptr<Conditioner> net_;
};

}  // namespace

void register_splines(Registry& reg) {
    Schema s = coupling_split_params();
    s.push_back(param_object("conditioner", R"({"type": "mlp"})",
                             "network from the conditioning features (and context) to 3K-1 raw parameters per "
                             "transformed feature"));
    for (auto& ps : spline_schema_params()) s.push_back(ps);
    ConformanceHints h;
    h.shapes = {{2}, {5}};
    h.params_json = R"({"bins": 5, "tail_bound": 2.0, "conditioner": {"type": "mlp", "hidden": [16]}})";
    reg.add_bijector({"spline_coupling",
                      "Neural Spline Flow coupling: monotone rational-quadratic spline on [-B, B] (identity tails), "
                      "parameters from the other features",
                      std::move(s),
                      [](const Params& p, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<SplineCoupling>(p, c);
                      },
                      h});
}

}  // namespace flowlab::density
