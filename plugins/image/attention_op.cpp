// Ops of network graphs (flowlab/op.hpp) for Flow++'s conditioner blocks:
//
// - `attention`: multi-head self-attention over the H W positions of an image [C, H, W]. Each
//   position's channels are projected to queries, keys and values (`channels` wide, split into
//   `heads`), every position attends to every other with softmax(q k^T / sqrt(d)), and the heads'
//   results, joined, are projected to `out` channels. Built from the core's differentiable ops
//   (linear, batched_matmul, softmax), whose backward rules give its gradient. Without
//   `positions` it is equivariant to any permutation of the positions; with it, a learned
//   embedding per position (Flow++'s, N(0, 0.01^2) at the start) is added to the input first.
// - `concat_elu`: elu(concat(x, -x)) along the features, doubling them (PixelCNN++, Flow++).
//
// Both take the layout the network gives them: attention works channels-last ([B, H W, C] is a
// plain reshape of nhwc) and moves an nchw input there; concat_elu follows its input.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <flowlab/conv.hpp>
#include <flowlab/op.hpp>
#include <flowlab/rng.hpp>

#include "image.hpp"

namespace flowlab::image {
namespace {

class AttentionOp final : public Op {
public:
    AttentionOp(const Params& p, const OpSpec& s, Rng& rng) {
        const Shape& in = s.inputs[0];
        if (in.size() != 3)
            throw ShapeError("attention works over the positions of an image [C, H, W], its input is " + shape_str(in) +
                             ": load the data with flatten = false");
        c_ = in[0];
        h_ = in[1];
        w_ = in[2];
        heads_ = p.get_int("heads");
        width_ = p.get_int("channels") > 0 ? p.get_int("channels") : c_;
        if (width_ % heads_ != 0)
            throw ConfigError(p.where("heads") + ": the " + std::to_string(width_) +
                              " query/key/value channels do not split into " + std::to_string(heads_) +
                              " heads; choose heads dividing \"channels\" (default: the input's channels)");
        out_ = op_size(p, "out", s, h_ * w_);
        Tensor wq = Tensor::zeros({c_, 3 * width_}), bq = Tensor::zeros({3 * width_});
        init_fan_in_uniform(wq, bq, c_, false, rng);  // only the output projection starts at zero
        Tensor wo = Tensor::zeros({width_, out_}), bo = Tensor::zeros({out_});
        init_fan_in_uniform(wo, bo, width_, s.zero_init, rng);
        qkv_weight_ = add_parameter("qkv.weight", std::move(wq));
        qkv_bias_ = add_parameter("qkv.bias", std::move(bq));
        out_weight_ = add_parameter("out.weight", std::move(wo));
        out_bias_ = add_parameter("out.bias", std::move(bo));
        if (p.get_bool("positions")) {
            Tensor pos = Tensor::zeros({h_ * w_, c_});
            if (!s.zero_init) rng.fill_normal(pos, 0.0, 0.01);
            positions_ = add_parameter("positions", std::move(pos));
        }
        set_output_shape({out_, h_, w_});
    }

    Var operator()(const std::vector<Var>& inputs) override {
        const std::int64_t B = inputs[0].size(0), P = h_ * w_, d = width_ / heads_;
        Var x = in_layout_ == ConvLayout::nhwc ? inputs[0] : to_layout(inputs[0], in_layout_, ConvLayout::nhwc);
        if (positions_.defined()) x = reshape(x, {B, P, c_}) + positions_;
        Var qkv = linear(reshape(x, {B * P, c_}), qkv_weight_, qkv_bias_);  // [B P, 3 width]
        const double scale = 1.0 / std::sqrt(static_cast<double>(d));
        std::vector<Var> heads;
        for (std::int64_t hd = 0; hd < heads_; ++hd) {
            auto part = [&](std::int64_t which) { return reshape(slice(qkv, 1, which * width_ + hd * d, d), {B, P, d}); };
            Var weights = softmax(batched_matmul(part(0) * scale, part(1), false, true), 2);  // [B, P, P]
            heads.push_back(batched_matmul(weights, part(2)));                                // [B, P, d]
        }
        Var joined = heads.size() == 1 ? heads[0] : concat(heads, 2);
        Var y = reshape(linear(reshape(joined, {B * P, width_}), out_weight_, out_bias_), {B, h_, w_, out_});
        return out_layout_ == ConvLayout::nhwc ? y : to_layout(y, ConvLayout::nhwc, out_layout_);
    }

    OpLayouts layouts() const override { return OpLayouts::any; }
    void set_layouts(const std::vector<ConvLayout>& in, ConvLayout out) override {
        in_layout_ = in[0];
        out_layout_ = out;
    }

private:
    std::int64_t c_ = 0, h_ = 0, w_ = 0, heads_ = 1, width_ = 0, out_ = 0;
    Var qkv_weight_, qkv_bias_, out_weight_, out_bias_, positions_;
    ConvLayout in_layout_ = ConvLayout::nchw, out_layout_ = ConvLayout::nchw;
};

class ConcatEluOp final : public Op {
public:
    explicit ConcatEluOp(const OpSpec& s) {
        Shape out = s.inputs[0];
        if (out.size() != 1 && out.size() != 3)
            throw ShapeError("concat_elu works on vectors [F] or images [C, H, W], got " + shape_str(out) +
                             ": flatten it first");
        out[0] *= 2;
        rank_ = out.size();
        set_output_shape(std::move(out));
    }
    Var operator()(const std::vector<Var>& in) override { return concat_elu(in[0], dim_); }
    OpLayouts layouts() const override { return OpLayouts::follow; }
    void set_layouts(const std::vector<ConvLayout>& in, ConvLayout) override {
        dim_ = feature_dim(Shape(rank_, 1), in[0]);
    }

private:
    std::size_t rank_ = 1;
    std::int64_t dim_ = 1;
};

}  // namespace

void register_attention_ops(Registry& reg) {
    reg.add_op({"attention",
                "multi-head self-attention over the positions of an image [C, H, W], with its own query/key/value "
                "and output projections",
                {param_required("out", ParamType::int_or_auto,
                                "output channels; \"auto\" on the output node: what the network must return")
                     .min(1),
                 param_int("heads", 4, "attention heads; they split the query/key/value channels").min(1),
                 param_int("channels", 0, "query/key/value channels (0: the input's channels)").min(0),
                 param_bool("positions", false,
                            "add a learned embedding per position to the input (Flow++); without it the op is "
                            "equivariant to permutations of the positions")},
                [](const Params& p, const OpSpec& s, Rng& rng) -> std::unique_ptr<Op> {
                    expect_inputs(p, s, 1, 1);
                    return std::make_unique<AttentionOp>(p, s, rng);
                }});
    reg.add_op({"concat_elu", "elu(concat(x, -x)) along the features (channels): twice the features", {},
                [](const Params& p, const OpSpec& s, Rng&) -> std::unique_ptr<Op> {
                    expect_inputs(p, s, 1, 1);
                    return std::make_unique<ConcatEluOp>(s);
                }});
}

}  // namespace flowlab::image
