// Conditioner `graph`: a network of registered ops written in JSON (flowlab/network.hpp), inline
//
//   "conditioner": {"type": "graph",
//     "nodes": [{"name": "h1", "type": "linear", "inputs": ["x"], "out": 128},
//               {"name": "a1", "type": "relu", "inputs": ["h1"]},
//               {"name": "o", "type": "linear", "inputs": ["a1"], "out": "auto"}],
//     "output": "o"}
//
// or by name from the model's "networks" ({"type": "graph", "network": "resnet"}), either with
// parameters of its own ("share": false, drawn from the layer's rng like any layer's) or as the one
// instance every layer that names it with "share": true uses (one set of parameters).
//
// The network's inputs are "x" (the conditioning part, in_shape) and, when the flow is
// conditional, "context"; its output must hold out_shape's number of values ("auto" on the
// output node fits it) and is reshaped to out_shape. The output node starts at zero when the
// layer asks (zero_init_last): see Network for a parameterless output node.
#include <memory>
#include <string>
#include <vector>

#include <flowlab/network.hpp>
#include <flowlab/ops.hpp>

#include "standard.hpp"

namespace flowlab::standard {
namespace {

class GraphConditioner final : public Conditioner {
public:
    GraphConditioner(const Params& p, const ConditionerSpec& spec, Rng& rng)
        : out_shape_(spec.out_shape), has_context_(!spec.context_shape.empty()) {
        if (!spec.registry) throw PluginError("graph conditioner: built without a registry (needed for its ops)");
        std::vector<NetworkInput> inputs = {{"x", spec.in_shape}};
        if (has_context_) inputs.push_back({"context", spec.context_shape});
        const std::int64_t out = numel(spec.out_shape);
        const bool share = p.get_bool("share");
        if (p.has("network")) {
            if (p.has("nodes") || p.has("output"))
                throw ConfigError(p.where("network") + ": give either \"network\" (the name of a definition in "
                                                       "model.networks) or \"nodes\" and \"output\", not both");
            const std::string name = p.get_string("network");
            if (!spec.networks)
                throw ConfigError(p.where("network") + ": refers to network '" + name + "', but the model defines no " +
                                  "networks; define it in \"model\": {\"networks\": {\"" + name +
                                  "\": {\"nodes\": [...], \"output\": ...}}}, or give \"nodes\" and \"output\" here");
            const std::string where = p.where("network");
            net_ = share ? spec.networks->shared(name, where, inputs, out, spec.zero_init_last, *spec.registry, rng)
                         : spec.networks->build(name, where, inputs, out, spec.zero_init_last, *spec.registry, rng);
        } else {
            if (share)
                throw ConfigError(p.where("share") + ": \"share\" applies to a named network (\"network\": NAME, " +
                                  "defined in model.networks); the nodes written here are this layer's own");
            if (!p.has("nodes") || !p.has("output"))
                throw ConfigError(p.where() + ": the graph conditioner needs \"nodes\" and \"output\" (its network), " +
                                  "or \"network\": the name of a definition in model.networks");
            net_ = std::make_shared<Network>(p, inputs, out, spec.zero_init_last, *spec.registry, rng);
        }
        if (numel(net_->output_shape()) != out)
            throw ShapeError("graph conditioner: the network returns " + shape_str(net_->output_shape()) +
                             " per sample, the layer needs " + shape_str(spec.out_shape));
        reshape_ = net_->output_shape() != out_shape_;
        add_child("net", net_.get());
    }

    Var operator()(const Var& x, const Var& context) override {
        Var y;
        if (has_context_) {
            if (!context.defined()) throw ShapeError("graph conditioner: built for a context, but none was given");
            y = (*net_)({x, context});
        } else {
            y = (*net_)({x});
        }
        return reshape_ ? reshape(y, with_batch(y.size(0), out_shape_)) : y;
    }

private:
    Shape out_shape_;
    bool has_context_;
    bool reshape_ = false;
    std::shared_ptr<Network> net_;
};

// A string parameter that may be left out (null): has() then says whether it was given.
ParamSpec optional_string(std::string name, std::string doc) {
    ParamSpec s = param_string(std::move(name), "", std::move(doc));
    s.default_json = "null";
    s.nullable = true;
    return s;
}

}  // namespace

void register_graph_conditioner(Registry& reg) {
    ParamSpec nodes = param_required("nodes", ParamType::any,
                                     "the network's nodes: [{\"name\", \"type\": OP, \"inputs\": [...], op "
                                     "parameters...}] (inputs \"x\" and, with a context, \"context\")");
    nodes.default_json = "null";
    nodes.nullable = true;
    reg.add_conditioner({"graph", "a network of ops written as JSON nodes, inline or from model.networks",
                         {nodes, optional_string("output", "the node whose result is the conditioner's output"),
                          optional_string("network", "instead of nodes/output: a definition in model.networks"),
                          param_bool("share", false,
                                     "with network: use the one instance (one set of parameters) that every layer "
                                     "naming it with share = true uses")},
                         [](const Params& p, const ConditionerSpec& s, Rng& rng) -> std::unique_ptr<Conditioner> {
                             return std::make_unique<GraphConditioner>(p, s, rng);
                         }});
}

}  // namespace flowlab::standard
