// The graph's own nodes. They change the graph rather than transform values (a split's learned
// prior aside), which is why they live in the core and not in a plugin.
#include "graph/graph_nodes.hpp"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "flowlab/errors.hpp"
#include "flowlab/network.hpp"
#include "graph/json_internal.hpp"
#include "graph/schemas.hpp"

namespace flowlab::graph {

using nlohmann::json;

namespace {

Schema slice_schema() {
    return {param_required("sizes", ParamType::int_list, "channels (features) of each part, in order; they sum to "
                                                         "the input's")};
}

CoreNode split_node(const CoreNodeContext& c) {
    const Shape& in = c.inputs[0];
    Params sp = c.params.validated(split_schema(), "split");
    if (in.empty() || in[0] < 2)
        throw ConfigError(c.at + ": split needs at least 2 channels, the input here is " + shape_str(in));
    const std::int64_t keep = sp.get_int("keep") > 0 ? sp.get_int("keep") : in[0] / 2;
    if (keep >= in[0])
        throw ConfigError(sp.where("keep") + ": keep " + std::to_string(keep) + " must be below the " +
                          std::to_string(in[0]) + " channels of the input " + shape_str(in));
    Shape kept = in, fact = in;
    kept[0] = keep;
    fact[0] = in[0] - keep;
    std::unique_ptr<Conditioner> prior;
    if (sp.has("prior")) {
        Shape pout = in;
        pout[0] = 2 * fact[0];
        ConditionerSpec cs{kept, pout, c.context_shape, true};
        cs.networks = c.networks;
        prior = c.registry.make_conditioner(sp.get_object("prior"), cs, c.rng);
    }
    CoreNode n;
    n.kind = FlowStep::Kind::split;
    auto split = std::make_unique<SplitNode>(in, keep, std::move(prior));
    n.split = split.get();
    n.module = std::move(split);
    n.outs = {kept, fact};
    return n;
}

CoreNode slice_node(const CoreNodeContext& c) {
    const Shape& in = c.inputs[0];
    Params sp = c.params.validated(slice_schema(), "slice");
    CoreNode n;
    n.kind = FlowStep::Kind::slice;
    std::int64_t total = 0;
    for (std::int64_t s : sp.get_int_list("sizes")) {
        if (s < 1) throw ConfigError(sp.where("sizes") + ": every part needs at least 1 channel, got " + std::to_string(s));
        total += s;
        Shape part = in;
        part[0] = s;
        n.outs.push_back(part);
        n.sizes.push_back(s);
    }
    if (in.empty() || total != in[0])
        throw ConfigError(sp.where("sizes") + ": the parts sum to " + std::to_string(total) + " but the input " +
                          shape_str(in) + " has " + std::to_string(in.empty() ? 0 : in[0]) +
                          " channels (features); they must add up to it");
    if (n.outs.size() < 2) throw ConfigError(sp.where("sizes") + ": a slice makes at least 2 parts");
    return n;
}

CoreNode concat_node(const CoreNodeContext& c) {
    c.params.validated({}, "concat");
    if (c.inputs.size() < 2)
        throw ConfigError(c.at + "/inputs: a concat joins at least 2 tensors, e.g. [\"a\", \"b\"]");
    const Shape& in = c.inputs[0];
    CoreNode n;
    n.kind = FlowStep::Kind::concat;
    Shape joined = in;
    joined[0] = 0;
    for (std::size_t j = 0; j < c.inputs.size(); ++j) {
        const Shape& s = c.inputs[j];
        if (s.empty() || s.size() != in.size() || !std::equal(s.begin() + 1, s.end(), in.begin() + 1))
            throw ConfigError(c.input_where(j) + ": cannot join " + shape_str(s) + " to " + shape_str(in) +
                              "; a concat joins channels (features), the other dimensions must agree");
        joined[0] += s[0];
        n.sizes.push_back(s[0]);
    }
    n.outs = {joined};
    return n;
}

// A network of the context: inline ("nodes", "output") or a definition of model.networks.
CoreNode network_node(const CoreNodeContext& c) {
    const Params& p = c.params;
    json def = params_json(p);
    def.erase("type");
    std::vector<NetworkInput> inputs = {{"x", c.inputs[0]}};
    std::unique_ptr<Network> net;
    if (def.contains("network")) {
        if (def.size() != 1)
            throw ConfigError(p.where("network") + ": a node that names a network takes it as defined; drop the "
                              "other keys, or define the network inline with \"nodes\" and \"output\"");
        if (!c.networks)
            throw ConfigError(p.where("network") + ": no networks are defined; add \"networks\": {\"" +
                              p.get_string("network") + "\": {\"nodes\": [...], \"output\": ...}} to the model");
        net = std::make_unique<Network>(c.networks->definition(p.get_string("network"), p.where("network")), inputs, 0,
                                        false, c.registry, c.rng);
    } else {
        net = std::make_unique<Network>(make_params(std::move(def), p.file(), p.pointer()), inputs, 0, false,
                                        c.registry, c.rng);
    }
    CoreNode n;
    n.kind = FlowStep::Kind::network;
    n.network = net.get();
    n.outs = {net->output_shape()};
    n.module = std::move(net);
    return n;
}

}  // namespace

bool is_core_node(const std::string& type) {
    return type == "split" || type == "slice" || type == "concat" || type == "network";
}

CoreNode build_core_node(const std::string& type, const CoreNodeContext& c) {
    if (type == "split") return split_node(c);
    if (type == "slice") return slice_node(c);
    if (type == "concat") return concat_node(c);
    return network_node(c);
}

}  // namespace flowlab::graph
