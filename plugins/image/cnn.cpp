// Conditioner `cnn`: Glow's coupling network on images,
//   conv k x k (c_in -> hidden) ReLU, conv m x m (hidden -> hidden) ReLU, conv k x k (hidden -> c_out)
// with biases and "same" padding; the last conv starts at zero when the spec asks (the coupling
// then starts as the identity), the others use PyTorch's default init (weight and bias
// ~ U(+-1/sqrt(fan_in)), drawn weight then bias, layer by layer).
//
// The flow's context, when there is one, is an image concatenated on the channels; a context
// 2^k times larger than the input (e.g. the full image while the flow works on squeezed halves)
// is squeezed k times first. The hidden activations stay channels-last ("layout": "nhwc"), where
// oneDNN's kernels are fastest; only the thin input and output are moved.
#include <memory>

#include <flowlab/conv.hpp>

#include "image.hpp"

namespace flowlab::image {
namespace {

class Cnn final : public Conditioner {
public:
    Cnn(const Params& p, const ConditionerSpec& spec, Rng& rng) {
        const Shape& in = spec.in_shape;
        const Shape& out = spec.out_shape;
        require_image(in, "cnn conditioner input");
        require_image(out, "cnn conditioner output");
        if (in[1] != out[1] || in[2] != out[2])
            throw ShapeError("cnn conditioner: input " + shape_str(in) + " and output " + shape_str(out) +
                             " differ in height or width");
        std::int64_t c_in = in[0];
        if (!spec.context_shape.empty()) {
            Shape cs = spec.context_shape;
            require_image(cs, "cnn conditioner context");
            while (cs[1] > in[1] && cs[1] % 2 == 0 && cs[2] % 2 == 0) {
                context_squeezes_.push_back({squeeze_index(cs), Shape{4 * cs[0], cs[1] / 2, cs[2] / 2}});
                cs = context_squeezes_.back().second;
            }
            if (cs[1] != in[1] || cs[2] != in[2])
                throw ShapeError("cnn conditioner: context " + shape_str(spec.context_shape) +
                                 " does not match the input " + shape_str(in) +
                                 " (its height and width must be the input's times a power of 2)");
            c_in += cs[0];
            has_context_ = true;
        }
        const std::int64_t hidden = p.get_int("hidden"), k = p.get_int("kernel"), m = p.get_int("mid_kernel");
        layout_ = p.get_string("layout") == "nchw" ? ConvLayout::nchw : ConvLayout::nhwc;
        const std::int64_t widths[4] = {c_in, hidden, hidden, out[0]};
        const std::int64_t kernels[3] = {k, m, k};
        for (int l = 0; l < 3; ++l) {
            const std::int64_t ci = widths[l], co = widths[l + 1], kk = kernels[l];
            Tensor w = Tensor::zeros({co, ci, kk, kk});
            Tensor b = Tensor::zeros({co});
            init_fan_in_uniform(w, b, ci * kk * kk, l == 2 && spec.zero_init_last, rng);
            const std::string name = "conv" + std::to_string(l);
            weights_[l] = add_parameter(name + ".weight", std::move(w));
            biases_[l] = add_parameter(name + ".bias", std::move(b));
            pads_[l] = kk / 2;
        }
    }

    Var operator()(const Var& x, const Var& context) override {
        Var h = x;
        if (has_context_) {
            if (!context.defined()) throw ShapeError("cnn conditioner: built for a context, but none was given");
            Var c = context;
            for (const auto& [idx, shape] : context_squeezes_) c = permute_within_sample(c, idx, shape);
            h = concat({h, c}, 1);
        }
        // The default (channels-last hidden activations) is the fused op, which runs the three
        // convolutions a few images at a time; "layout": "nchw" keeps three conv2d ops.
        if (layout_ == ConvLayout::nhwc)
            return conv_stack(h, weights_[0], biases_[0], weights_[1], biases_[1], weights_[2], biases_[2]);
        Conv2dOptions o;
        o.in_layout = ConvLayout::nchw;
        o.out_layout = layout_;
        o.padding = pads_[0];
        o.relu = true;
        h = conv2d(h, weights_[0], biases_[0], o);
        o.in_layout = layout_;
        o.padding = pads_[1];
        h = conv2d(h, weights_[1], biases_[1], o);
        o.out_layout = ConvLayout::nchw;
        o.padding = pads_[2];
        o.relu = false;
        return conv2d(h, weights_[2], biases_[2], o);
    }

private:
    bool has_context_ = false;
    std::vector<std::pair<std::shared_ptr<const std::vector<std::int64_t>>, Shape>> context_squeezes_;
    ConvLayout layout_ = ConvLayout::nhwc;
    Var weights_[3], biases_[3];
    std::int64_t pads_[3] = {};
};

}  // namespace

void register_conditioners(Registry& reg) {
    reg.add_conditioner(
        {"cnn", "Glow's coupling network: conv k x k, ReLU, conv m x m, ReLU, conv k x k (zero-initialised), on images",
         {param_int("hidden", 128, "channels of the two hidden layers").min(1),
          param_int("kernel", 3, "kernel size of the first and last conv (odd; padded to keep the size)").range(1, 15),
          param_int("mid_kernel", 1, "kernel size of the middle conv (odd)").range(1, 15),
          param_string("layout", "nhwc", "memory layout of the hidden activations (nhwc is faster with oneDNN)")
              .choices({"nhwc", "nchw"})},
         [](const Params& p, const ConditionerSpec& s, Rng& rng) -> std::unique_ptr<Conditioner> {
             if (p.get_int("kernel") % 2 == 0 || p.get_int("mid_kernel") % 2 == 0)
                 throw ConfigError(p.where("kernel") + ": kernel sizes must be odd, so that padding keeps the size");
             return std::make_unique<Cnn>(p, s, rng);
         }});
}

}  // namespace flowlab::image
