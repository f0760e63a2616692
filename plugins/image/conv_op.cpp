// Op `conv2d` of network graphs (flowlab/op.hpp): a stride-1 "same" convolution with an odd
// kernel on images [C, H, W], with a bias, initialised as nn.Conv2d (and the cnn conditioner) by
// default, or at zero on a conditioner's output node. It reads and writes whatever layout the
// network gives it (OpLayouts::any), so hidden activations between convolutions stay
// channels-last as in `cnn`, and a ReLU that alone reads it runs in the convolution.
#include <memory>
#include <string>
#include <vector>

#include <flowlab/conv.hpp>
#include <flowlab/op.hpp>
#include <flowlab/rng.hpp>

#include "image.hpp"

namespace flowlab::image {
namespace {

class Conv2dOp final : public Op {
public:
    Conv2dOp(const Params& p, const OpSpec& s, Rng& rng) {
        const Shape& in = s.inputs[0];
        if (in.size() != 3)
            throw ShapeError("conv2d needs an image [C, H, W] per sample, its input is " + shape_str(in) +
                             ": convolutions take images (load the data with flatten = false); use linear on vectors");
        const std::int64_t k = p.get_int("kernel");
        if (k % 2 == 0)
            throw ConfigError(p.where("kernel") + ": the kernel size must be odd, so that padding keeps the size; " +
                              "got " + std::to_string(k));
        const std::int64_t out = op_size(p, "out", s, in[1] * in[2]);
        Tensor w = Tensor::zeros({out, in[0], k, k});
        Tensor b = p.get_bool("bias") ? Tensor::zeros({out}) : Tensor();
        init_fan_in_uniform(w, b, in[0] * k * k, s.zero_init, rng);
        weight_ = add_parameter("weight", std::move(w));
        if (b.defined()) bias_ = add_parameter("bias", std::move(b));
        opt_.padding = k / 2;
        set_output_shape({out, in[1], in[2]});
    }

    Var operator()(const std::vector<Var>& in) override { return conv2d(in[0], weight_, bias_, opt_); }

    bool absorb_activation(const std::string& act) override {
        if (act != "relu" || opt_.relu) return false;
        opt_.relu = true;
        return true;
    }
    OpLayouts layouts() const override { return OpLayouts::any; }
    void set_layouts(const std::vector<ConvLayout>& in, ConvLayout out) override {
        opt_.in_layout = in[0];
        opt_.out_layout = out;
    }

private:
    Var weight_, bias_;
    Conv2dOptions opt_;
};

}  // namespace

void register_ops(Registry& reg) {
    reg.add_op({"conv2d",
                "k x k convolution of images, stride 1, padded to keep the size, with a bias (a ReLU after it is "
                "fused)",
                {param_required("out", ParamType::int_or_auto,
                                "output channels; \"auto\" on the output node: what the network must return")
                     .min(1),
                 param_int("kernel", 3, "kernel size (odd)").range(1, 15),
                 param_bool("bias", true, "add a learned bias per output channel")},
                [](const Params& p, const OpSpec& s, Rng& rng) -> std::unique_ptr<Op> {
                    expect_inputs(p, s, 1, 1);
                    return std::make_unique<Conv2dOp>(p, s, rng);
                }});
}

}  // namespace flowlab::image
