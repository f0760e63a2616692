// The ops of network graphs (flowlab/op.hpp) that work on any value: linear, the activations,
// add, mul, concat, slice, flatten, gate and layer_norm. conv2d is the image plugin's.
//
// "Features" are a vector's entries and an image's channels: concat, slice, gate and layer_norm's
// gain work along them, wherever the layout puts the channels (feature_dim), so that a network
// of convolutions keeps its activations channels-last through them. Shape mismatches are
// ShapeErrors; the network adds the node's JSON pointer and its inputs' shapes.
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <flowlab/network.hpp>
#include <flowlab/op.hpp>
#include <flowlab/ops.hpp>
#include <flowlab/rng.hpp>

#include "standard.hpp"

namespace flowlab::standard {
namespace {

constexpr std::size_t kMany = std::numeric_limits<std::size_t>::max();

// ------------------------------------------------------------------------------- linear

// y = x W + b, W [in, out] (nn.Linear's default init, as the mlp conditioner draws it). A ReLU
// that alone reads it is fused into the GEMM (linear_relu).
class LinearOp final : public Op {
public:
    LinearOp(const Params& p, const OpSpec& s, Rng& rng) {
        const Shape& in = s.inputs[0];
        if (in.size() != 1)
            throw ShapeError("linear takes a vector per sample, its input is " + shape_str(in) +
                             ": flatten it first (a \"flatten\" node)");
        const std::int64_t out = op_size(p, "out", s);
        Tensor w = Tensor::zeros({in[0], out});
        Tensor b = p.get_bool("bias") ? Tensor::zeros({out}) : Tensor();
        init_fan_in_uniform(w, b, in[0], s.zero_init, rng);
        weight_ = add_parameter("weight", std::move(w));
        if (b.defined()) bias_ = add_parameter("bias", std::move(b));
        set_output_shape({out});
    }

    Var operator()(const std::vector<Var>& in) override {
        return relu_ ? linear_relu(in[0], weight_, bias_) : linear(in[0], weight_, bias_);
    }

    bool absorb_activation(const std::string& act) override {
        if (act != "relu" || relu_) return false;
        relu_ = true;
        return true;
    }

private:
    Var weight_, bias_;
    bool relu_ = false;
};

// ------------------------------------------------------------------------------- element-wise

// An activation: one input, any layout; the executor offers it to the op before it by name.
class ActivationOp final : public Op {
public:
    ActivationOp(const OpSpec& s, const char* name, Var (*fn)(const Var&)) : name_(name), fn_(fn) {
        set_output_shape(s.inputs[0]);
    }
    Var operator()(const std::vector<Var>& in) override { return fn_(in[0]); }
    const char* activation() const override { return name_; }
    OpLayouts layouts() const override { return OpLayouts::follow; }

private:
    const char* name_;
    Var (*fn_)(const Var&);
};

// add: the sum of its inputs; mul: their product. One shape for all (no broadcasting: a
// mismatch is more often a mistake than an intent).
class ElementwiseOp final : public Op {
public:
    ElementwiseOp(const OpSpec& s, const char* name, bool product) : product_(product) {
        for (std::size_t i = 1; i < s.inputs.size(); ++i)
            if (s.inputs[i] != s.inputs[0])
                throw ShapeError(std::string(name) + " needs inputs of one shape, got " + shape_str(s.inputs[0]) +
                                 " and " + shape_str(s.inputs[i]) +
                                 ": make them agree (the \"out\" of the nodes that make them)");
        set_output_shape(s.inputs[0]);
    }
    Var operator()(const std::vector<Var>& in) override {
        Var y = in[0];
        for (std::size_t i = 1; i < in.size(); ++i) y = product_ ? mul(y, in[i]) : add(y, in[i]);
        return y;
    }
    OpLayouts layouts() const override { return OpLayouts::follow; }

private:
    bool product_;
};

// ------------------------------------------------------------------------------- features

// Vectors [F] or images [C, H, W]: the per-sample rank every input of a features op must share.
void require_features(const Shape& s, const char* op) {
    if (s.size() != 1 && s.size() != 3)
        throw ShapeError(std::string(op) + " works on vectors [F] or images [C, H, W], got " + shape_str(s) +
                         ": flatten it first");
}

// Concatenation along the features (channels of images, whose height and width must agree).
class ConcatOp final : public Op {
public:
    explicit ConcatOp(const OpSpec& s) {
        Shape out = s.inputs[0];
        require_features(out, "concat");
        for (std::size_t i = 1; i < s.inputs.size(); ++i) {
            const Shape& a = s.inputs[i];
            if (a.size() != out.size() || !std::equal(a.begin() + 1, a.end(), out.begin() + 1))
                throw ShapeError("concat joins vectors, or images of one height and width, along the features; got " +
                                 shape_str(s.inputs[0]) + " and " + shape_str(a) +
                                 ": flatten the images, or make their sizes agree");
            out[0] += a[0];
        }
        rank_ = out.size();
        set_output_shape(std::move(out));
    }
    Var operator()(const std::vector<Var>& in) override { return concat(in, dim_); }
    OpLayouts layouts() const override { return OpLayouts::follow; }
    void set_layouts(const std::vector<ConvLayout>& in, ConvLayout) override {
        dim_ = feature_dim(Shape(rank_, 1), in[0]);
    }

private:
    std::size_t rank_ = 1;
    std::int64_t dim_ = 1;
};

// Features [start, start + size).
class SliceOp final : public Op {
public:
    SliceOp(const Params& p, const OpSpec& s) : start_(p.get_int("start")), size_(p.get_int("size")) {
        Shape out = s.inputs[0];
        require_features(out, "slice");
        if (start_ + size_ > out[0])
            throw ShapeError("slice [" + std::to_string(start_) + ", " + std::to_string(start_ + size_) +
                             ") runs past the " + std::to_string(out[0]) + " features of its input " + shape_str(out) +
                             ": lower \"start\" or \"size\"");
        out[0] = size_;
        rank_ = out.size();
        set_output_shape(std::move(out));
    }
    Var operator()(const std::vector<Var>& in) override { return slice(in[0], dim_, start_, size_); }
    OpLayouts layouts() const override { return OpLayouts::follow; }
    void set_layouts(const std::vector<ConvLayout>& in, ConvLayout) override {
        dim_ = feature_dim(Shape(rank_, 1), in[0]);
    }

private:
    std::int64_t start_, size_;
    std::size_t rank_ = 1;
    std::int64_t dim_ = 1;
};

// GLU: the first half of the features times the sigmoid of the second half.
class GateOp final : public Op {
public:
    explicit GateOp(const OpSpec& s) {
        Shape out = s.inputs[0];
        require_features(out, "gate");
        if (out[0] % 2 != 0)
            throw ShapeError("gate splits its input's features in halves (value, gate), but " + shape_str(out) +
                             " has an odd number: give the node before it an even \"out\"");
        half_ = out[0] / 2;
        out[0] = half_;
        rank_ = out.size();
        set_output_shape(std::move(out));
    }
    Var operator()(const std::vector<Var>& in) override {
        return mul(slice(in[0], dim_, 0, half_), sigmoid(slice(in[0], dim_, half_, half_)));
    }
    OpLayouts layouts() const override { return OpLayouts::follow; }
    void set_layouts(const std::vector<ConvLayout>& in, ConvLayout) override {
        dim_ = feature_dim(Shape(rank_, 1), in[0]);
    }

private:
    std::int64_t half_ = 0;
    std::size_t rank_ = 1;
    std::int64_t dim_ = 1;
};

// [B, ...] -> [B, numel]: images in flowlab's [C, H, W] order (the executor moves channels-last
// ones back first).
class FlattenOp final : public Op {
public:
    explicit FlattenOp(const OpSpec& s) : n_(numel(s.inputs[0])) { set_output_shape({n_}); }
    Var operator()(const std::vector<Var>& in) override { return reshape(in[0], {in[0].size(0), n_}); }

private:
    std::int64_t n_;
};

// Layer normalisation: each sample's values (all of them: an image's channels, height and width,
// as GroupNorm with one group) to mean 0 and variance 1, then a learned gain and bias per
// feature or channel (gain 1, bias 0; both 0 when zero_init). Built from the core's ops, whose
// backward rules make its gradient.
class LayerNormOp final : public Op {
public:
    LayerNormOp(const Params& p, const OpSpec& s) : eps_(p.get_number("eps")), shape_(s.inputs[0]) {
        require_features(shape_, "layer_norm");
        if (p.get_bool("affine")) {
            gain_ = add_parameter("gain", Tensor::full({shape_[0]}, s.zero_init ? 0.0 : 1.0));
            bias_ = add_parameter("bias", Tensor::zeros({shape_[0]}));
        }
        set_output_shape(shape_);
    }
    Var operator()(const std::vector<Var>& in) override {
        const Var& x = in[0];
        const std::int64_t B = x.size(0);
        Var flat = reshape(x, {B, -1});
        Var centred = flat - mean(flat, 1, true);
        Var y = reshape(centred / sqrt(mean(square(centred), 1, true) + eps_), x.shape());
        if (!gain_.defined()) return y;
        // Per channel: [C, 1, 1] against nchw images, [C] against vectors and channels-last ones.
        if (nchw_image_) return y * reshape(gain_, {shape_[0], 1, 1}) + reshape(bias_, {shape_[0], 1, 1});
        return y * gain_ + bias_;
    }
    OpLayouts layouts() const override { return OpLayouts::follow; }
    void set_layouts(const std::vector<ConvLayout>& in, ConvLayout) override {
        nchw_image_ = shape_.size() == 3 && in[0] == ConvLayout::nchw;
    }

private:
    double eps_;
    Shape shape_;
    Var gain_, bias_;
    bool nchw_image_ = false;
};

// ------------------------------------------------------------------------------- registration

template <class Make>
OpFactory factory(std::size_t min_inputs, std::size_t max_inputs, Make make) {
    return [min_inputs, max_inputs, make](const Params& p, const OpSpec& s, Rng& rng) -> std::unique_ptr<Op> {
        expect_inputs(p, s, min_inputs, max_inputs);
        return make(p, s, rng);
    };
}

void add_activation(Registry& reg, const char* name, const char* doc, Var (*fn)(const Var&)) {
    reg.add_op({name, doc, {}, factory(1, 1, [name, fn](const Params&, const OpSpec& s, Rng&) {
                    return std::make_unique<ActivationOp>(s, name, fn);
                })});
}

}  // namespace

void register_ops(Registry& reg) {
    reg.add_op({"linear", "y = x W + b on vectors (nn.Linear; a ReLU after it is fused into the GEMM)",
                {param_required("out", ParamType::int_or_auto,
                                "output features; \"auto\" on the output node: what the network must return")
                     .min(1),
                 param_bool("bias", true, "add a learned bias")},
                factory(1, 1, [](const Params& p, const OpSpec& s, Rng& rng) {
                    return std::make_unique<LinearOp>(p, s, rng);
                })});
    add_activation(reg, "relu", "max(0, x)", [](const Var& x) { return relu(x); });
    add_activation(reg, "tanh", "tanh(x)", [](const Var& x) { return tanh(x); });
    add_activation(reg, "elu", "x > 0 ? x : e^x - 1", [](const Var& x) { return elu(x); });
    add_activation(reg, "sigmoid", "1 / (1 + e^-x)", [](const Var& x) { return sigmoid(x); });
    add_activation(reg, "softplus", "log(1 + e^x)", [](const Var& x) { return softplus(x); });
    reg.add_op({"add", "the sum of its inputs, all of one shape (a residual connection)", {},
                factory(2, kMany, [](const Params&, const OpSpec& s, Rng&) {
                    return std::make_unique<ElementwiseOp>(s, "add", false);
                })});
    reg.add_op({"mul", "the element-wise product of its inputs, all of one shape", {},
                factory(2, kMany, [](const Params&, const OpSpec& s, Rng&) {
                    return std::make_unique<ElementwiseOp>(s, "mul", true);
                })});
    reg.add_op({"concat", "its inputs joined along the features (an image's channels)", {},
                factory(2, kMany, [](const Params&, const OpSpec& s, Rng&) { return std::make_unique<ConcatOp>(s); })});
    reg.add_op({"slice", "features (an image's channels) [start, start + size)",
                {param_required("start", ParamType::integer, "first feature").min(0),
                 param_required("size", ParamType::integer, "number of features").min(1)},
                factory(1, 1, [](const Params& p, const OpSpec& s, Rng&) { return std::make_unique<SliceOp>(p, s); })});
    reg.add_op({"flatten", "each sample to a vector (an image [C, H, W] in that order)", {},
                factory(1, 1, [](const Params&, const OpSpec& s, Rng&) { return std::make_unique<FlattenOp>(s); })});
    reg.add_op({"gate", "GLU: the first half of the features times the sigmoid of the second half", {},
                factory(1, 1, [](const Params&, const OpSpec& s, Rng&) { return std::make_unique<GateOp>(s); })});
    reg.add_op({"layer_norm",
                "each sample's values to mean 0, variance 1, then a learned gain and bias per feature (channel)",
                {param_number("eps", 1e-5, "added to the variance").min(0.0),
                 param_bool("affine", true, "learn a gain (starts at 1) and a bias (starts at 0)")},
                factory(1, 1, [](const Params& p, const OpSpec& s, Rng&) {
                    return std::make_unique<LayerNormOp>(p, s);
                })});
}

}  // namespace flowlab::standard
