// Op: one node type of a network graph, the JSON form of a conditioner network (network.hpp):
//
//   {"name": "h1", "type": "linear", "inputs": ["x"], "out": 128}
//
// Ops are registered like layers, by plugins (`reg.add_op`); the core knows none. A factory gets
// the node's validated parameters, an OpSpec (the per-sample shapes of its inputs, whether to
// start at zero, what an "auto" size means here) and an Rng to draw its initial parameters
// from. It returns a Module that owns its parameters, knows its output shape from the moment
// it is built (so a graph's shapes are checked before anything runs), and maps batch-first
// Vars [B, ...] to a batch-first Var.
//
// Example, a plugin registering an op that scales every feature by a learned factor:
//
//   #include <flowlab/plugin.hpp>
//
//   class Scale final : public flowlab::Op {
//   public:
//       explicit Scale(const flowlab::OpSpec& s) {
//           set_output_shape(s.inputs[0]);
//           scale_ = add_parameter("scale", flowlab::Tensor::full(s.inputs[0], s.zero_init ? 0.0 : 1.0));
//       }
//       flowlab::Var operator()(const std::vector<flowlab::Var>& in) override { return in[0] * scale_; }
//   private:
//       flowlab::Var scale_;
//   };
//
//   FLOWLAB_PLUGIN("my_ops", "0.1.0", "a learned scale for network graphs") {
//       reg.add_op({"scale", "y = x * s, s learned per feature (starts at 1)", {},
//                   [](const flowlab::Params& p, const flowlab::OpSpec& s, flowlab::Rng&)
//                       -> std::unique_ptr<flowlab::Op> {
//                       flowlab::expect_inputs(p, s, 1, 1);
//                       return std::make_unique<Scale>(s);
//                   }});
//   }
//
// and in a config: {"name": "s", "type": "scale", "inputs": ["h"]}.
//
// Speed: the executor fuses and lays out by asking the ops, never by knowing them.
// - An activation node (activation() returns its name, e.g. "relu") whose input is read by it
//   alone is offered to the producing op (absorb_activation); an op that accepts applies it in
//   its own epilogue from then on (linear -> linear_relu, conv2d with a fused ReLU) and the
//   activation node is skipped.
// - Images ([C, H, W] per sample) may travel channels-last between ops that can take it
//   (layouts()): the executor keeps hidden activations nhwc between convolutions and moves
//   to flowlab's [B, C, H, W] only where an op or the network's output needs it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flowlab/conv.hpp"
#include "flowlab/module.hpp"
#include "flowlab/params.hpp"

namespace flowlab {

// What an op factory gets besides its parameters.
struct OpSpec {
    std::vector<Shape> inputs;   // per-sample shapes of the node's inputs, in its "inputs" order
                                 // (images as [C, H, W], whatever layout they travel in)
    std::int64_t auto_size = 0;  // > 0 on a network's output node when the network must return
                                 // that many values per sample: what a size "auto" fits (op_size)
    bool zero_init = false;      // start with all parameters zero (the output node of a
                                 // conditioner, so that its layer starts as the identity)
};

// How an op's image inputs and output may be laid out (conv.hpp's ConvLayout). Values that are
// not images ([C, H, W] per sample) are always plain.
enum class OpLayouts : std::uint8_t {
    nchw,    // [B, C, H, W] only (the default): the executor moves channels-last inputs back
    follow,  // any layout, the same for every input; the output is in that layout (element-wise
             // ops, and ops along the channels that set_layouts tells where the channels are)
    any,     // each input in whatever layout it comes in, the output in the layout set_layouts
             // names (a convolution)
};

class Op : public Module {
public:
    // The per-sample output shape (images [C, H, W]), set by the constructor.
    const Shape& output_shape() const { return output_shape_; }

    // inputs[i] is batch-first, [B, OpSpec::inputs[i]...] (or its channels-last form, see
    // layouts()); returns [B, output_shape()...] in the output layout.
    virtual Var operator()(const std::vector<Var>& inputs) = 0;

    // The activation this op is ("relu", ...), or null: the executor offers it to the op that
    // produces this op's input when nothing else reads that input.
    virtual const char* activation() const { return nullptr; }
    // Called at build time with an activation that alone reads this op's output: return true to
    // apply it yourself from now on (the activation node is then skipped), false to decline.
    virtual bool absorb_activation(const std::string& /*activation*/) { return false; }

    virtual OpLayouts layouts() const { return OpLayouts::nchw; }
    // The layouts of the inputs and of the output, set once at build time (for follow and any
    // ops; nchw ops always get nchw).
    virtual void set_layouts(const std::vector<ConvLayout>& /*inputs*/, ConvLayout /*output*/) {}

protected:
    void set_output_shape(Shape s) { output_shape_ = std::move(s); }

private:
    Shape output_shape_;
};

// ConfigError at p.where("inputs") unless the node has between min_inputs and max_inputs inputs.
void expect_inputs(const Params& p, const OpSpec& s, std::size_t min_inputs, std::size_t max_inputs);

// A size parameter (e.g. "out"): an integer >= 1, or "auto" = spec.auto_size / per_unit (the
// values per sample the network's output needs, over the values one unit gives: 1 for a linear
// layer's features, H*W for a convolution's channels). ConfigError naming the key when "auto"
// is used off the output node, or when per_unit does not divide auto_size.
std::int64_t op_size(const Params& p, const std::string& key, const OpSpec& s, std::int64_t per_unit = 1);

// The batch dimension along which an op works on "features" of a value: 1 for vectors [B, F]
// and for images in nchw [B, C, H, W], 3 for images channels-last [B, H, W, C].
inline std::int64_t feature_dim(const Shape& per_sample, ConvLayout layout) {
    return per_sample.size() == 3 && layout == ConvLayout::nhwc ? 3 : 1;
}

}  // namespace flowlab
