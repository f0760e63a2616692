// Conditioner `flowpp`: Flow++'s coupling network (Ho et al. 2019) on images,
//
//   proj_in: conv k x k (c_in -> hidden)
//   B blocks, each:
//     gated residual conv:  h + gate(conv 1x1(concat_elu(conv k x k(concat_elu(h)))) -> 2 hidden)
//     layer_norm
//     (attention on)        h + gate(attention(h) -> 2 hidden), then layer_norm
//   proj_out: conv k x k (hidden -> c_out), zero-initialised when the layer asks (the coupling
//             then starts as the identity)
//
// It is a network of registered ops (network.hpp) written by this file, so it is exactly the
// block a config can write as JSON ("model.networks", configs/fmnist_flowpp_small.json) and runs
// on the same executor: activations channels-last between the convolutions, the attention
// reading them as [B, H W, C] without a copy. gate (a sigmoid(b)), add and layer_norm are the
// standard plugin's ops; layer_norm normalises each sample's values (as the standard op does)
// where Flow++ normalised each position's channels. No dropout.
//
// The flow's context, when there is one, is an image concatenated on the channels of the input
// (squeezed first when it is 2^k times larger, as the cnn conditioner does).
#include <memory>
#include <string>

#include <flowlab/network.hpp>

#include "image.hpp"

namespace flowlab::image {
namespace {

// The network's JSON definition; one input "x", output node "proj_out".
std::string flowpp_definition(std::int64_t hidden, std::int64_t blocks, bool attention, std::int64_t heads,
                              std::int64_t kernel) {
    std::string nodes;
    auto node = [&](const std::string& name, const std::string& type, const std::string& input,
                    const std::string& extra = "", const std::string& input2 = "") {
        if (!nodes.empty()) nodes += ",\n";
        nodes += R"({"name": ")" + name + R"(", "type": ")" + type + R"(", "inputs": [")" + input + "\"" +
                 (input2.empty() ? "" : ", \"" + input2 + "\"") + "]" + (extra.empty() ? "" : ", " + extra) + "}";
    };
    const std::string F = std::to_string(hidden), F2 = std::to_string(2 * hidden), K = std::to_string(kernel);
    node("proj_in", "conv2d", "x", R"("out": )" + F + R"(, "kernel": )" + K);
    std::string h = "proj_in";
    for (std::int64_t i = 0; i < blocks; ++i) {
        const std::string b = "b" + std::to_string(i) + "_";
        node(b + "elu1", "concat_elu", h);
        node(b + "conv1", "conv2d", b + "elu1", R"("out": )" + F + R"(, "kernel": )" + K);
        node(b + "elu2", "concat_elu", b + "conv1");
        node(b + "conv2", "conv2d", b + "elu2", R"("out": )" + F2 + R"(, "kernel": 1)");
        node(b + "gate", "gate", b + "conv2");
        node(b + "res", "add", h, "", b + "gate");
        node(b + "norm", "layer_norm", b + "res");
        h = b + "norm";
        if (attention) {
            node(b + "attn", "attention", h, R"("out": )" + F2 + R"(, "heads": )" + std::to_string(heads));
            node(b + "attn_gate", "gate", b + "attn");
            node(b + "attn_res", "add", h, "", b + "attn_gate");
            node(b + "attn_norm", "layer_norm", b + "attn_res");
            h = b + "attn_norm";
        }
    }
    node("proj_out", "conv2d", h, R"("out": "auto", "kernel": )" + K);
    return "{\"nodes\": [\n" + nodes + "\n], \"output\": \"proj_out\"}";
}

class FlowppConditioner final : public Conditioner {
public:
    FlowppConditioner(const Params& p, const ConditionerSpec& spec, Rng& rng) : out_shape_(spec.out_shape) {
        const Shape& in = spec.in_shape;
        require_image(in, "flowpp conditioner input");
        require_image(out_shape_, "flowpp conditioner output");
        if (in[1] != out_shape_[1] || in[2] != out_shape_[2])
            throw ShapeError("flowpp conditioner: input " + shape_str(in) + " and output " + shape_str(out_shape_) +
                             " differ in height or width");
        if (!spec.registry) throw PluginError("flowpp conditioner: built without a registry (needed for its ops)");
        std::int64_t c_in = in[0];
        if (!spec.context_shape.empty()) {
            Shape cs = spec.context_shape;
            require_image(cs, "flowpp conditioner context");
            while (cs[1] > in[1] && cs[1] % 2 == 0 && cs[2] % 2 == 0) {
                context_squeezes_.push_back({squeeze_index(cs), Shape{4 * cs[0], cs[1] / 2, cs[2] / 2}});
                cs = context_squeezes_.back().second;
            }
            if (cs[1] != in[1] || cs[2] != in[2])
                throw ShapeError("flowpp conditioner: context " + shape_str(spec.context_shape) +
                                 " does not match the input " + shape_str(in) +
                                 " (its height and width must be the input's times a power of 2)");
            c_in += cs[0];
            has_context_ = true;
        }
        const std::int64_t hidden = p.get_int("hidden"), heads = p.get_int("heads");
        const bool attention = p.get_bool("attention");
        if (attention && hidden % heads != 0)
            throw ConfigError(p.where("heads") + ": the " + std::to_string(hidden) + " hidden channels do not split into " +
                              std::to_string(heads) + " attention heads; choose heads dividing \"hidden\"");
        const Params def = Params::parse(
            flowpp_definition(hidden, p.get_int("blocks"), attention, heads, p.get_int("kernel")),
            p.where() + " (the flowpp network)");
        net_ = std::make_unique<Network>(def, std::vector<NetworkInput>{{"x", {c_in, in[1], in[2]}}},
                                         numel(out_shape_), spec.zero_init_last, *spec.registry, rng);
        add_child("net", net_.get());
    }

    Var operator()(const Var& x, const Var& context) override {
        Var h = x;
        if (has_context_) {
            if (!context.defined()) throw ShapeError("flowpp conditioner: built for a context, but none was given");
            Var c = context;
            for (const auto& [idx, shape] : context_squeezes_) c = permute_within_sample(c, idx, shape);
            h = concat({h, c}, 1);
        }
        return (*net_)({h});
    }

private:
    Shape out_shape_;
    bool has_context_ = false;
    std::vector<std::pair<std::shared_ptr<const std::vector<std::int64_t>>, Shape>> context_squeezes_;
    std::unique_ptr<Network> net_;
};

}  // namespace

void register_flowpp_conditioner(Registry& reg) {
    reg.add_conditioner(
        {"flowpp",
         "Flow++'s coupling network on images: conv in, blocks of gated residual convs (concat_elu) and gated "
         "multi-head self-attention, each followed by layer_norm, conv out (zero-initialised)",
         {param_int("hidden", 64, "channels of the blocks").min(1),
          param_int("blocks", 2, "gated residual blocks").range(1, 64),
          param_bool("attention", true, "self-attention over the positions after each gated conv"),
          param_int("heads", 4, "attention heads (dividing hidden)").min(1),
          param_int("kernel", 3, "kernel size of the convolutions in, out and inside the blocks (odd)").range(1, 15)},
         [](const Params& p, const ConditionerSpec& s, Rng& rng) -> std::unique_ptr<Conditioner> {
             if (p.get_int("kernel") % 2 == 0)
                 throw ConfigError(p.where("kernel") + ": the kernel size must be odd, so that padding keeps the size");
             return std::make_unique<FlowppConditioner>(p, s, rng);
         }});
}

}  // namespace flowlab::image
