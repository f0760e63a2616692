// Dequantizer `variational` (Flow++'s variational dequantisation): instead of uniform noise,
// u ~ q(u | x) in (0, 1)^D from a conditional flow that sees the image, trained jointly with
// the model on the ELBO
//   log P(x) >= E_q[ log p((x + u) / L) - D log L - log q(u | x) ],   L = 2^bits
// so dequantize() returns x' = (x + u) / L + offset and log_weight = -D log L - log q(u | x),
// and the trainer's objective log p(x') + log_weight is that bound unchanged.
//
// q: eps ~ N(0, I) (of the shape the layer chain produces), v = the chain's forward(eps) (latent
// -> data) with the features of x as context, u = sigmoid(v); so
//   log q(u | x) = log N(eps) - log|det dv/deps| - sum log(sigmoid(v) (1 - sigmoid(v))).
// u is a differentiable function of the parameters (reparameterisation), so the gradient of the
// bound reaches q's layers through x' as well as through log_weight.
//
// The context of q's layers is a feature image of x: the "features" conditioner applied to
// x / L - 0.5, or x / L - 0.5 itself when "features" is null. Layers with a data-dependent init
// (actnorm2d) start from their plain init here, since a dequantizer has no init pass.
#include <cmath>
#include <memory>
#include <string>

#include "image.hpp"

namespace flowlab::image {
namespace {

constexpr double kLog2Pi = 1.8378770664093454836;

// Four checkerboard affine couplings, as one line of JSON (so that `flowlab list` prints it whole).
const char* const kDefaultLayers =
    R"([{"type": "conv_affine_coupling", "mask": "checkerboard", "parity": 0, "conditioner": {"type": "cnn", "hidden": 32}}, )"
    R"({"type": "conv_affine_coupling", "mask": "checkerboard", "parity": 1, "conditioner": {"type": "cnn", "hidden": 32}}, )"
    R"({"type": "conv_affine_coupling", "mask": "checkerboard", "parity": 0, "conditioner": {"type": "cnn", "hidden": 32}}, )"
    R"({"type": "conv_affine_coupling", "mask": "checkerboard", "parity": 1, "conditioner": {"type": "cnn", "hidden": 32}}])";

class VariationalDequantizer final : public Dequantizer {
public:
    VariationalDequantizer(const Params& p, const BuildContext& ctx) : image_(ctx.event_shape) {
        require_image(image_, "variational dequantizer");
        if (!ctx.registry || !ctx.rng) throw ConfigError(p.where() + ": the variational dequantizer needs a registry and an rng");
        levels_ = std::ldexp(1.0, static_cast<int>(p.get_int("bits")));
        offset_ = p.get_number("offset");
        Shape context = image_;
        if (p.has("features")) {
            context = {p.get_int("feature_channels"), image_[1], image_[2]};
            ConditionerSpec spec{image_, context, {}, false};
            spec.networks = ctx.networks;
            features_ = ctx.registry->make_conditioner(p.get_object("features"), spec, *ctx.rng);
            add_child("features", features_.get());
        }
        Shape shape = image_;
        const std::vector<Params> items = p.get_object_list("layers");
        if (items.empty()) throw ConfigError(p.where("layers") + ": q needs at least one layer");
        for (std::size_t i = 0; i < items.size(); ++i) {
            BuildContext lc{shape, context, ctx.rng, ctx.registry, ctx.networks};
            auto layer = ctx.registry->make_bijector(items[i], lc);
            shape = layer->output_shape(shape);
            add_child("layers." + std::to_string(i), layer.get());
            layers_.push_back(std::move(layer));
        }
        if (numel(shape) != numel(image_))
            throw ShapeError(p.where("layers") + ": q's layers map the image " + shape_str(image_) + " to " +
                             shape_str(shape) + ", which has a different number of values");
        eps_shape_ = shape;
    }

    bool stochastic() const override { return true; }

protected:
    Dequantized do_dequantize(const Tensor& x, Rng& rng, const Var&) override {
        const std::int64_t B = x.size(0);
        const DType dt = x.dtype();
        Tensor xs = x.clone();
        // x / L: the bin's corner; the features see it centred.
        kern::scale_inplace(xs, 1.0 / levels_);
        Var feat = Var(kern::add_scalar(xs, -0.5));
        if (features_) feat = (*features_)(feat, Var());

        Tensor eps = Tensor::empty(with_batch(B, eps_shape_), dt);
        rng.fill_normal(eps);
        Tensor log_n = Tensor::empty({B}, dt);
        {
            const std::int64_t d = numel(eps_shape_);
            const std::vector<double> e = eps.to_vector();
            for (std::int64_t b = 0; b < B; ++b) {
                double ss = 0.0;
                for (std::int64_t k = 0; k < d; ++k) ss += e[static_cast<std::size_t>(b * d + k)] * e[static_cast<std::size_t>(b * d + k)];
                log_n.set_item(b, -0.5 * ss - 0.5 * static_cast<double>(d) * kLog2Pi);
            }
        }
        Var h(eps), log_det;
        for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) {
            FlowResult r = (*it)->forward(h, feat);
            h = r.out;
            log_det = log_det.defined() ? log_det + r.log_det : r.log_det;
        }
        Var v = reshape(h, x.shape());
        Var u = sigmoid(v);
        // log q(u|x) = log N(eps) - log|dv/deps| - sum log sigmoid'(v)
        Var log_q = Var(log_n) - log_det - sum_per_sample(log_sigmoid(v) + log_sigmoid(-v));
        Var x_cont = u * (1.0 / levels_) + Var(kern::add_scalar(xs, offset_));
        const double D = static_cast<double>(numel(image_));
        Var log_weight = (-log_q) - D * std::log(levels_);
        return {x_cont, log_weight};
    }

private:
    Shape image_, eps_shape_;
    double levels_ = 256.0, offset_ = 0.0;
    std::unique_ptr<Conditioner> features_;
    std::vector<std::unique_ptr<Bijector>> layers_;
};

}  // namespace

void register_dequantizers(Registry& reg) {
    ParamSpec layers;
    layers.name = "layers";
    layers.type = ParamType::any;
    layers.default_json = kDefaultLayers;
    layers.doc = "q's flow: a list of layer objects over the image, conditioned on the features (default: "
                 "4 checkerboard affine couplings with cnn hidden 32)";
    reg.add_dequantizer(
        {"variational",
         "variational dequantisation u ~ q(u|x) by a conditional flow, x' = (x + u)/2^bits + offset; "
         "log_weight = -D bits log 2 - log q(u|x) (the ELBO)",
         {param_int("bits", 8, "bits per value: levels L = 2^bits").range(1, 30),
          param_number("offset", 0.0, "added after scaling, e.g. -0.5 to centre on 0"), layers,
          param_object("features", "null", "conditioner from the image (x/L - 0.5) to q's context "
                                           "(null = the image itself)")
              .allow_null(),
          param_int("feature_channels", 8, "channels of the feature image (with \"features\")").min(1)},
         [](const Params& p, const BuildContext& c) -> std::unique_ptr<Dequantizer> {
             return std::make_unique<VariationalDequantizer>(p, c);
         }});
}

}  // namespace flowlab::image
