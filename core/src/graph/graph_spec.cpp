// The two ways of writing a flow, read into one GraphSpec: the list form expands (repeat blocks
// unrolled, a split's tail becoming the nodes that read its kept output), the graph form is read
// as written. Names in an expanded list are the module paths the parameters have always had
// ("layers.3", "layers.3.rest.0"), so checkpoints of list configs load into the graph form.
#include "graph/graph_spec.hpp"

#include <limits>
#include <set>

#include "flowlab/errors.hpp"
#include "graph/json_internal.hpp"

namespace flowlab::graph {

using nlohmann::json;

namespace {

// Published flows have tens to hundreds of layers; past this a count is a typo, and building it
// would take minutes before any other error could show.
constexpr std::int64_t kMaxLayers = 10'000;

// Keys of a node that belong to the graph, not to the node's type.
const std::set<std::string>& graph_keys() {
    static const std::set<std::string> keys = {"name", "type", "input", "inputs", "context"};
    return keys;
}

// The node object without its graph keys, at the node's own location.
Params node_params(const Params& node) {
    json j = params_json(node);
    for (const auto& k : graph_keys())
        if (k != "type") j.erase(k);
    return make_params(std::move(j), node.file(), node.pointer());
}

class ListExpander {
public:
    explicit ListExpander(GraphSpec& spec) : spec_(spec) {}

    // Expands items[first...] of one list into nodes named prefix.0, prefix.1, ...; `tensor` is
    // the tensor the list starts from and becomes the one it ends on. Latent parts factored out
    // by splits are appended to spec_.outputs in the order the old chain concatenated them.
    void expand(const std::vector<Params>& items, std::size_t first, bool in_repeat, const std::string& prefix,
                std::int64_t& index, std::string& tensor) {
        for (std::size_t i = first; i < items.size(); ++i) {
            const Params& item = items[i];
            const json& j = params_json(item);
            if (!j.is_object())
                throw ConfigError(item.where() + ": expected a layer object, e.g. {\"type\": \"reverse\"}");
            if (j.contains("repeat")) {
                expand_repeat(item, prefix, index, tensor);
                continue;
            }
            if (!j.contains("type"))
                throw ConfigError(item.where() + ": a layer needs a \"type\" (or is a {\"repeat\": N, \"layers\": [...]} block)");
            for (const char* k : {"name", "input", "inputs", "context"})
                if (j.contains(k))
                    throw ConfigError(item.where(k) + ": \"" + k + "\" belongs to the graph form (\"graph\": {\"nodes\": "
                                      "[...]}); in a \"layers\" list each layer reads the one before it");
            NodeSpec node;
            node.name = prefix + "." + std::to_string(index++);
            node.type = j["type"].is_string() ? j["type"].get<std::string>() : std::string();
            node.params = item;
            node.inputs = {tensor};
            node.pointer = item.pointer();
            if (node.type == "split") {
                // The multi-scale node: the rest of this list runs on the kept channels.
                if (in_repeat)
                    throw ConfigError(item.where("type") + ": a split cannot stand inside a repeat block; "
                                      "put it in the enclosing list (the layers after it act on the kept part)");
                const std::string name = node.name;
                spec_.nodes.push_back(std::move(node));
                spec_.outputs.push_back({name + ":1", std::nullopt, "", item.pointer()});
                std::int64_t rest_index = 0;
                tensor = name + ":0";
                expand(items, i + 1, false, name + ".rest", rest_index, tensor);
                return;
            }
            spec_.nodes.push_back(std::move(node));
            tensor = spec_.nodes.back().name;
            check_count(item);
        }
    }

private:
    void expand_repeat(const Params& item, const std::string& prefix, std::int64_t& index, std::string& tensor) {
        const json& j = params_json(item);
        for (auto it = j.begin(); it != j.end(); ++it)
            if (it.key() != "repeat" && it.key() != "layers")
                throw ConfigError(item.where(it.key()) + ": unknown key '" + it.key() +
                                  "' in a repeat block; a block has only \"repeat\" and \"layers\"");
        std::int64_t n = 0;
        if (!as_integer(j["repeat"], n) || n < 1) throw ConfigError(item.where("repeat") + ": expected a positive integer");
        if (!j.contains("layers")) throw ConfigError(item.where() + ": a repeat block needs \"layers\": [...]");
        if (!j["layers"].is_array())
            throw ConfigError(item.where("layers") + ": expected a list of layers, e.g. [{\"type\": \"reverse\"}]");
        const std::vector<Params> body = item.get_object_list("layers");
        const std::size_t before = spec_.nodes.size();
        expand(body, 0, true, prefix, index, tensor);
        const auto per_rep = static_cast<std::int64_t>(spec_.nodes.size() - before);
        if (per_rep > 0 && n > kMaxLayers / per_rep) {
            // n per_rep can pass 64 bits (repeat counts up to 9.2e18 parse): named, not computed.
            const std::string total = n > std::numeric_limits<std::int64_t>::max() / per_rep
                                          ? "more than " + std::to_string(std::numeric_limits<std::int64_t>::max())
                                          : std::to_string(n * per_rep);
            throw ConfigError(item.where("repeat") + ": repeat " + std::to_string(n) + " makes " + total +
                              " layers, more than the limit of " + std::to_string(kMaxLayers) +
                              "; a deep flow has hundreds");
        }
        if (n > 1 && per_rep > 0) {
            // The builder checks what all repetitions would cost once it has built the first.
            const std::size_t second = spec_.nodes.size();
            for (std::int64_t r = 1; r < n; ++r) expand(body, 0, true, prefix, index, tensor);
            spec_.nodes[second].repeat = RepeatMark{item, n, before};
        }
    }

    void check_count(const Params& item) const {
        if (static_cast<std::int64_t>(spec_.nodes.size()) > kMaxLayers)
            throw ConfigError(item.where() + ": the flow has more than " + std::to_string(kMaxLayers) +
                              " layers; a deep flow has hundreds");
    }

    GraphSpec& spec_;
};

GraphSpec from_list(const Params& model) {
    GraphSpec spec;
    spec.file = model.file();
    spec.from_list = true;
    const json& list = params_json(model)["layers"];
    if (!list.is_array())
        throw ConfigError(model.where("layers") + ": expected a list of layers, e.g. [{\"type\": \"reverse\"}]");
    std::string tensor = kInputTensor;
    std::int64_t index = 0;
    ListExpander(spec).expand(model.get_object_list("layers"), 0, false, "layers", index, tensor);
    // The chain's end is the last part of the latent.
    spec.outputs.push_back({tensor, std::nullopt, "", model.pointer() + "/layers"});
    return spec;
}

std::string string_field(const Params& p, const std::string& key, const std::string& hint) {
    const json& j = params_json(p);
    if (!j.contains(key)) throw ConfigError(p.where() + ": missing \"" + key + "\"; " + hint);
    if (!j[key].is_string() || j[key].get<std::string>().empty())
        throw ConfigError(p.where(key) + ": expected a tensor name (a string), got " + describe_json(j[key]) + "; " + hint);
    return j[key].get<std::string>();
}

GraphSpec from_graph(const Params& model) {
    GraphSpec spec;
    spec.file = model.file();
    const Params g = model.get_object("graph");
    const json& gj = params_json(g);
    for (auto it = gj.begin(); it != gj.end(); ++it)
        if (it.key() != "nodes" && it.key() != "outputs") {
            const std::string dym = did_you_mean(it.key(), {"nodes", "outputs"});
            throw ConfigError(g.where(it.key()) + ": unknown key '" + it.key() + "' in the graph" +
                              (dym.empty() ? "" : "; did you mean '" + dym + "'?") +
                              " (a graph has \"nodes\" and \"outputs\")");
        }
    if (!gj.contains("nodes") || !gj["nodes"].is_array())
        throw ConfigError(g.where("nodes") + ": expected a list of nodes, e.g. [{\"name\": \"a\", \"type\": "
                          "\"affine_coupling\", \"input\": \"x\"}]");
    if (!gj.contains("outputs") || !gj["outputs"].is_array() || gj["outputs"].empty())
        throw ConfigError(g.where("outputs") + ": expected a non-empty list of the tensors that form the latent, "
                          "e.g. [\"last_node\"] or [{\"tensor\": \"s:1\", \"base\": {...}}]");
    const std::vector<Params> nodes = g.get_object_list("nodes");
    if (static_cast<std::int64_t>(nodes.size()) > kMaxLayers)
        throw ConfigError(g.where("nodes") + ": more than " + std::to_string(kMaxLayers) + " nodes");
    for (const Params& n : nodes) {
        const json& j = params_json(n);
        if (!j.is_object()) throw ConfigError(n.where() + ": expected a node object {\"name\", \"type\", \"input\", ...}");
        NodeSpec node;
        node.pointer = n.pointer();
        node.name = string_field(n, "name", "every node has a unique name that other nodes read it by");
        if (!j.contains("type") || !j["type"].is_string())
            throw ConfigError(n.where("type") + ": a node needs a \"type\" (a bijector, or split, slice, concat, network)");
        node.type = j["type"].get<std::string>();
        if (j.contains("inputs")) {
            if (j.contains("input"))
                throw ConfigError(n.where("inputs") + ": give \"input\" (one tensor) or \"inputs\" (a list), not both");
            if (!j["inputs"].is_array() || j["inputs"].empty())
                throw ConfigError(n.where("inputs") + ": expected a non-empty list of tensor names");
            for (const auto& t : j["inputs"]) {
                if (!t.is_string()) throw ConfigError(n.where("inputs") + ": expected tensor names (strings)");
                node.inputs.push_back(t.get<std::string>());
            }
        } else {
            node.inputs = {string_field(n, "input", "name the tensor this node reads: \"x\" (the data) or a node")};
        }
        if (j.contains("context")) {
            if (j["context"].is_null())
                node.context = "";
            else
                node.context = string_field(n, "context", "name a context tensor (\"context\" or a network node), or null");
        }
        node.params = node_params(n);
        spec.nodes.push_back(std::move(node));
    }
    for (std::size_t i = 0; i < gj["outputs"].size(); ++i) {
        const json& o = gj["outputs"][i];
        const std::string ptr = g.pointer() + "/outputs/" + std::to_string(i);
        OutputSpec out;
        out.pointer = ptr;
        if (o.is_string()) {
            out.tensor = o.get<std::string>();
        } else if (o.is_object()) {
            const Params op = make_params(o, g.file(), ptr);
            for (auto it = o.begin(); it != o.end(); ++it)
                if (it.key() != "tensor" && it.key() != "base" && it.key() != "given")
                    throw ConfigError(op.where(it.key()) + ": unknown key '" + it.key() +
                                      "' in an output (it has \"tensor\", \"base\" and \"given\")");
            out.tensor = string_field(op, "tensor", "name the tensor this part of the latent is");
            if (op.has("base")) out.base = op.get_object("base");
            if (o.contains("given")) {
                if (!out.base)
                    throw ConfigError(op.where("given") + ": \"given\" conditions the output's own base; give it a "
                                      "\"base\" too, e.g. {\"type\": \"conditional_diag_gaussian\"}");
                out.given = string_field(op, "given", "name the tensor the base is conditioned on");
            }
        } else {
            throw ConfigError(make_params(o, g.file(), ptr).where() +
                              ": expected a tensor name or {\"tensor\": ..., \"base\": ..., \"given\": ...}");
        }
        spec.outputs.push_back(std::move(out));
    }
    return spec;
}

}  // namespace

GraphSpec model_graph(const Params& model) {
    const bool list = model.has("layers"), graph = model.has("graph");
    if (list && graph)
        throw ConfigError(model.where("graph") + ": give the flow as \"layers\" (a chain) or as \"graph\" (named "
                          "nodes), not both");
    if (!list && !graph)
        throw ConfigError(model.where() + ": the model needs \"layers\" (a list of layers) or \"graph\" "
                          "({\"nodes\": [...], \"outputs\": [...]})");
    return list ? from_list(model) : from_graph(model);
}

json graph_to_json(const GraphSpec& spec) {
    json nodes = json::array();
    for (const NodeSpec& n : spec.nodes) {
        json j = {{"name", n.name}, {"type", n.type}};
        if (n.inputs.size() == 1 && n.type != "concat")
            j["input"] = n.inputs[0];
        else
            j["inputs"] = n.inputs;
        if (n.context) j["context"] = n.context->empty() ? json(nullptr) : json(*n.context);
        const json& p = params_json(n.params);
        for (auto it = p.begin(); it != p.end(); ++it)
            if (!graph_keys().count(it.key())) j[it.key()] = it.value();
        nodes.push_back(std::move(j));
    }
    json outputs = json::array();
    for (const OutputSpec& o : spec.outputs) {
        if (!o.base) {
            outputs.push_back(o.tensor);
            continue;
        }
        json j = {{"tensor", o.tensor}, {"base", params_json(*o.base)}};
        if (!o.given.empty()) j["given"] = o.given;
        outputs.push_back(std::move(j));
    }
    return {{"nodes", nodes}, {"outputs", outputs}};
}

json config_in_graph_form(const Params& config) {
    json out = params_json(config);
    const Params model = config.get_object("model");
    json& m = out["model"];
    if (m.contains("networks") && m["networks"].is_null()) m.erase("networks");
    if (!model.has("layers")) {
        m.erase("layers");  // a null left by validation
        return out;
    }
    m.erase("layers");
    m["graph"] = graph_to_json(model_graph(model));
    return out;
}

}  // namespace flowlab::graph
