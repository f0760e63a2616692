// flow_dot (builder.hpp): the built flow as a Graphviz DOT digraph. The structure (names,
// inputs, conditioners, outputs and their bases) comes from the config's graph form
// (graph_spec.hpp), the shapes and parameter counts from the built flow's LayerInfo, matched by
// node name: the config says what was written, the flow what it became.
//
// Every identifier and label is a double-quoted DOT string, so names with dots, colons, spaces or
// DOT keywords need nothing more than escaping. Ids other than the flow's nodes all contain a ':'
// ("output:0", "cond:NODE:conditioner"), which no node name may, so they never clash with one.
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "flowlab/builder.hpp"
#include "graph/graph_spec.hpp"
#include "graph/json_internal.hpp"

namespace flowlab {

using nlohmann::json;

namespace {

// A DOT double-quoted string. Backslashes are doubled (a name's "\l" must not become a DOT
// line break) and a newline becomes DOT's "\n", the line break of labels.
std::string q(const std::string& s) {
    std::string o = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') {
            o += '\\';
            o += c;
        } else if (c == '\n') {
            o += "\\n";
        } else if (static_cast<unsigned char>(c) < 0x20) {
            o += ' ';
        } else {
            o += c;
        }
    }
    return o + "\"";
}

// Per-sample shapes on edges, compact: "[6,14,14]".
std::string shape_text(const Shape& s) {
    std::string r = "[";
    for (std::size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
    return r + "]";
}

// 1234567 -> "1,234,567": parameter counts of a Glow are read at a glance.
std::string count_text(std::int64_t n) {
    std::string digits = std::to_string(n < 0 ? -n : n), out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return (n < 0 ? "-" : "") + out;
}

std::string params_text(std::int64_t n) { return count_text(n) + (n == 1 ? " parameter" : " parameters"); }

// obj[key] when it is a string, else "".
std::string string_at(const json& obj, const char* key) {
    return obj.is_object() && obj.contains(key) && obj[key].is_string() ? obj[key].get<std::string>() : "";
}

// A parameter value in a summary: strings bare, lists "[128, 128]", an object by its type.
std::string value_text(const json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_array()) {
        std::string r = "[";
        for (std::size_t i = 0; i < v.size(); ++i) r += (i ? ", " : "") + value_text(v[i]);
        return r + "]";
    }
    if (v.is_object()) return string_at(v, "type").empty() ? "{...}" : string_at(v, "type") + " {...}";
    return v.dump();
}

// A built-in conditioner or a base in one line per ~40 characters: "mlp hidden [128, 128] relu".
// Values follow their key, but strings other than "auto" stand alone after them (they read as
// words: relu, nhwc). Keys in `skip` are left out.
std::string summary_text(const json& obj, const std::set<std::string>& skip = {}) {
    std::vector<std::string> parts, words;
    parts.push_back(string_at(obj, "type").empty() ? "?" : string_at(obj, "type"));
    for (auto it = obj.begin(); it != obj.end(); ++it) {
        if (it.key() == "type" || skip.count(it.key()) || it.value().is_null()) continue;
        if (it.value().is_string() && it.value() != "auto")
            words.push_back(value_text(it.value()));
        else
            parts.push_back(it.key() + " " + value_text(it.value()));
    }
    parts.insert(parts.end(), words.begin(), words.end());
    std::string out, line;
    for (const std::string& p : parts) {
        if (!line.empty() && line.size() + 1 + p.size() > 40) {
            out += (out.empty() ? "" : "\n") + line;
            line.clear();
        }
        line += (line.empty() ? "" : " ") + p;
    }
    return out + (out.empty() ? "" : "\n") + line;
}

struct TensorInfo {
    std::string producer;  // DOT id of the node or ellipse that makes it
    int port = -1;         // output number for nodes of several outputs, -1 otherwise
    Shape shape;
    bool known = false;    // shape known (from the built flow)
    bool context = false;  // the context or a network of it
};

class DotWriter {
public:
    DotWriter(const Params& config, const Flow& flow)
        : config_(config), flow_(flow), model_(config.get_object("model")), spec_(graph::model_graph(model_)) {
        const json& m = params_json(model_);
        if (m.contains("networks") && m["networks"].is_object()) networks_ = m["networks"];
        for (std::size_t i = 0; i < flow.layer_info().size(); ++i) info_by_name_[flow.layer_info()[i].name] = i;
        conditioner_params();
    }

    std::string write() {
        o_ << "digraph " << q(config_.has("name") ? config_.get_string("name") : std::string("flow")) << " {\n"
           << "  rankdir=TB;\n  compound=true;\n  fontname=\"Helvetica\";\n"
           << "  node [fontname=\"Helvetica\", fontsize=10];\n"
           << "  edge [fontname=\"Helvetica\", fontsize=9];\n";
        inputs();
        for (std::size_t n : node_order()) node(spec_.nodes[n]);
        outputs();
        o_ << "}\n";
        return o_.str();
    }

private:
    // Nodes in the order the built flow runs them (topological); any the flow does not know
    // (a config other than the one it was built from) after them, without shapes.
    std::vector<std::size_t> node_order() const {
        std::vector<std::size_t> order, rest;
        std::map<std::size_t, std::size_t> by_step;
        for (std::size_t n = 0; n < spec_.nodes.size(); ++n) {
            auto it = info_by_name_.find(spec_.nodes[n].name);
            if (it != info_by_name_.end())
                by_step[it->second] = n;
            else
                rest.push_back(n);
        }
        for (const auto& [step, n] : by_step) order.push_back(n);
        order.insert(order.end(), rest.begin(), rest.end());
        return order;
    }

    const LayerInfo* info_of(const std::string& name) const {
        auto it = info_by_name_.find(name);
        return it == info_by_name_.end() ? nullptr : &flow_.layer_info()[it->second];
    }

    void inputs() {
        std::string x = "x\n" + shape_text(flow_.event_shape());
        if (model_.has("dequantizer"))
            x += "\ndequantizer: " + summary_text(params_json(model_.get_object("dequantizer")));
        o_ << "  " << q(graph::kInputTensor) << " [shape=ellipse, label=" << q(x) << "];\n";
        tensors_[graph::kInputTensor] = {graph::kInputTensor, -1, flow_.event_shape(), true, false};
        if (!flow_.context_shape().empty()) {
            o_ << "  " << q(graph::kContextTensor) << " [shape=ellipse, style=dashed, label="
               << q(std::string("context\n") + shape_text(flow_.context_shape())) << "];\n";
            tensors_[graph::kContextTensor] = {graph::kContextTensor, -1, flow_.context_shape(), true, true};
        }
    }

    // The tensor a reference names; an unknown one (never for the flow's own config) gets a
    // plain node of its own so that the picture still shows the reference.
    const TensorInfo& tensor(const std::string& ref) {
        if (auto it = tensors_.find(ref); it != tensors_.end()) return it->second;
        const std::string id = "tensor:" + ref;
        o_ << "  " << q(id) << " [shape=plaintext, label=" << q(ref + "\n(unknown)") << "];\n";
        return tensors_[ref] = {id, -1, {}, false, false};
    }

    void edge(const std::string& ref, const std::string& to, bool context) {
        const TensorInfo& t = tensor(ref);
        std::string label = t.known ? shape_text(t.shape) : "?";
        if (t.port >= 0) label = ":" + std::to_string(t.port) + " " + label;
        o_ << "  " << q(t.producer) << " -> " << q(to) << " [label=" << q(label);
        // Data edges pull hard, so that the chain runs straight down and the conditioner
        // clusters hang beside it (unweighted, a deep flow drifts sideways one cluster per node).
        o_ << (context || t.context ? ", style=dashed" : ", weight=10") << "];\n";
    }

    void node(const graph::NodeSpec& n) {
        const LayerInfo* info = info_of(n.name);
        const bool network = n.type == "network";
        std::string label = n.name + "\n" + (info ? info->type : n.type);
        if (info) label += "\n" + params_text(info->num_parameters);
        o_ << "  " << q(n.name) << " [shape=box, " << (network ? "style=\"rounded,dashed\", " : "style=rounded, ")
           << "label=" << q(label) << "];\n";
        for (const std::string& in : (info ? info->inputs : n.inputs)) edge(in, n.name, network);
        std::string context;
        if (info)
            context = info->context;
        else if (n.context)
            context = *n.context;
        else if (!flow_.context_shape().empty())
            context = graph::kContextTensor;
        // A slice or concat is handed the context like every node but has nothing that reads it.
        if (!context.empty() && n.type != "slice" && n.type != "concat") edge(context, n.name, true);
        // What this node makes, for the nodes and outputs that read it.
        const std::vector<Shape> outs = info ? info->out_shapes : std::vector<Shape>{};
        const std::size_t k = outs.size();
        if (k == 1 || !info) {
            const TensorInfo t{n.name, -1, k == 1 ? outs[0] : Shape{}, k == 1, network};
            tensors_[n.name] = t;
            tensors_[n.name + ":0"] = t;
        } else {
            for (std::size_t p = 0; p < k; ++p)
                tensors_[n.name + ":" + std::to_string(p)] = {n.name, static_cast<int>(p), outs[p], true, network};
        }
        nested(n);
    }

    // The node's conditioner (a split's prior), or a network node's op graph, as a cluster.
    void nested(const graph::NodeSpec& n) {
        const json& p = params_json(n.params);
        if (n.type == "network") {
            // Inside, "x" is what the node reads (the context or a network of it).
            const std::string in = n.inputs.empty() ? std::string() : n.inputs[0];
            if (!string_at(p, "network").empty())
                named_network(n.name, "network", "network", string_at(p, "network"), "", in);
            else
                cluster(n.name, "network", "network", p, true, in);
            return;
        }
        for (const char* key : {"conditioner", "prior"}) {
            if (p.contains(key) && p[key].is_object()) {
                const json& c = p[key];
                if (c.contains("type") && c["type"] == "graph") {
                    const std::string title = std::string(key) + ": graph";
                    if (!string_at(c, "network").empty())
                        named_network(n.name, key, title, string_at(c, "network"),
                                      c.contains("share") && c["share"] == true ? ", one instance shared" : "");
                    else
                        cluster(n.name, key, title + param_suffix(n.name, key), c, true);
                } else {
                    cluster(n.name, key, key, json(summary_text(c) + param_suffix(n.name, key, "\n")), false);
                }
            } else if (cond_params_.count(n.name) && cond_params_.at(n.name).count(key)) {
                // Left to the layer's default: the flow has its parameters, the config no description.
                cluster(n.name, key, key, json("the layer's default" + param_suffix(n.name, key, "\n")), false);
            }
        }
    }

    // A definition of model.networks is drawn op by op where it is first used; every later use
    // is one box pointing there, so that eight couplings of one ResNet make one ResNet drawing.
    void named_network(const std::string& node, const std::string& key, const std::string& title,
                       const std::string& name, const std::string& shared, const std::string& x_is = "") {
        const std::string what = title + " '" + name + "' (model.networks" + shared + ")";
        auto [it, first] = drawn_networks_.emplace(name, node);
        if (first)
            cluster(node, key, what + param_suffix(node, key), network_definition(name), true, x_is);
        else
            cluster(node, key, key,
                    json(what + "\nits ops as drawn for " + it->second + param_suffix(node, key, "\n")), false);
    }

    std::string param_suffix(const std::string& node, const std::string& key, const std::string& sep = ", ") const {
        auto it = cond_params_.find(node);
        if (it == cond_params_.end() || !it->second.count(key)) return "";
        return sep + params_text(it->second.at(key));
    }

    json network_definition(const std::string& name) const {
        if (networks_.contains(name) && networks_[name].is_object()) return networks_[name];
        return json::object();
    }

    // cluster for `node`'s `key`: a graph `def` ({"nodes", "output"}) op by op, or one box `text`.
    // x_is: what a network node's input "x" is ("" for a conditioner, whose "x" is the
    // conditioning part of the layer's input).
    void cluster(const std::string& node, const std::string& key, const std::string& title, const json& def_or_text,
                 bool graph, const std::string& x_is = "") {
        const std::string base = node + ":" + key;
        const std::string cid = "cluster:" + base;
        o_ << "  subgraph " << q(cid) << " {\n    label=" << q(title)
           << ";\n    style=\"rounded,dashed\";\n    color=gray50;\n    fontsize=9;\n";
        std::string anchor;
        if (!graph) {
            anchor = "cond:" + base;
            o_ << "    " << q(anchor) << " [shape=box, style=filled, fillcolor=gray95, label="
               << q(def_or_text.get<std::string>()) << "];\n";
        } else {
            anchor = ops(base, def_or_text, x_is.empty() ? "x\n(conditioning part)" : "x = " + x_is);
        }
        o_ << "  }\n";
        o_ << "  " << q(node) << " -> " << q(anchor) << " [lhead=" << q(cid) << ", style=dotted, arrowhead=none];\n";
    }

    // The ops of a network definition inside the open cluster; returns the DOT id the node's
    // dotted edge points at (an input of the network, which ranks above its ops, else the first op).
    std::string ops(const std::string& base, const json& def, const std::string& x_label) {
        std::set<std::string> names;
        const json nodes = def.contains("nodes") && def["nodes"].is_array() ? def["nodes"] : json::array();
        for (const json& op : nodes)
            if (!string_at(op, "name").empty()) names.insert(string_at(op, "name"));
        const std::string output = string_at(def, "output");
        std::string first;
        std::set<std::string> declared_inputs;
        std::ostringstream edges;
        for (const json& op : nodes) {
            const std::string name = string_at(op, "name");
            if (name.empty()) continue;
            const std::string id = "op:" + base + ":" + name;
            const bool out = name == output;
            o_ << "    " << q(id) << " [shape=box, style=\"filled" << (out ? ",bold" : "")
               << "\", fillcolor=gray95, label=" << q(name + "\n" + summary_text(op, {"name", "inputs"}) +
                                                      (out ? "\n(output)" : ""))
               << "];\n";
            if (first.empty()) first = id;
            if (!op.contains("inputs") || !op["inputs"].is_array()) continue;
            for (const json& in : op["inputs"]) {
                if (!in.is_string()) continue;
                const std::string src = in.get<std::string>();
                std::string from = "op:" + base + ":" + src;
                if (!names.count(src)) {
                    // A network input ("x", "context"): a small label of its own.
                    from = "in:" + base + ":" + src;
                    if (declared_inputs.insert(src).second)
                        o_ << "    " << q(from) << " [shape=plaintext, label=" << q(src == "x" ? x_label : src)
                           << "];\n";
                }
                edges << "    " << q(from) << " -> " << q(id) << ";\n";
            }
        }
        o_ << edges.str();
        if (first.empty()) {
            first = "op:" + base + ":?";
            o_ << "    " << q(first) << " [shape=plaintext, label=\"(no nodes)\"];\n";
        }
        if (!declared_inputs.empty()) return "in:" + base + ":" + *declared_inputs.begin();
        return first;
    }

    void outputs() {
        const bool several = spec_.outputs.size() > 1;
        std::string shared;
        if (model_.has("base")) shared = summary_text(params_json(model_.get_object("base")));
        for (std::size_t k = 0; k < spec_.outputs.size(); ++k) {
            const graph::OutputSpec& out = spec_.outputs[k];
            const std::string id = "output:" + std::to_string(k);
            std::string label = several ? "latent part " + std::to_string(k) : std::string("latent");
            label += "\n" + out.tensor;
            std::string given;
            if (out.base) {
                label += "\nbase: " + summary_text(params_json(*out.base));
                given = !out.given.empty() ? out.given : (flow_.context_shape().empty() ? "" : graph::kContextTensor);
                if (!given.empty()) label += "\ngiven " + given;
            } else {
                label += "\nmodel.base: " + (shared.empty() ? std::string("(default)") : shared);
            }
            o_ << "  " << q(id) << " [shape=ellipse, peripheries=2, label=" << q(label) << "];\n";
            edge(out.tensor, id, false);
            if (!given.empty()) edge(given, id, true);
        }
    }

    // Parameters of each node's conditioner and prior: the flow's parameter names are
    // NODE.conditioner.* / NODE.prior.*; each name goes to the longest node name it starts with,
    // so that a node named "a.conditioner" does not count as a's conditioner.
    void conditioner_params() {
        for (const NamedVar& nv : flow_.named_parameters()) {
            std::string best;
            for (std::size_t dot = nv.name.find('.'); dot != std::string::npos; dot = nv.name.find('.', dot + 1))
                if (info_by_name_.count(nv.name.substr(0, dot))) best = nv.name.substr(0, dot);
            if (best.empty()) continue;
            const std::string rest = nv.name.substr(best.size() + 1);
            for (const char* key : {"conditioner", "prior"})
                if (rest.rfind(std::string(key) + ".", 0) == 0) cond_params_[best][key] += nv.var.value().numel();
        }
    }

    const Params& config_;
    const Flow& flow_;
    Params model_;
    graph::GraphSpec spec_;
    json networks_ = json::object();
    std::map<std::string, std::size_t> info_by_name_;
    std::map<std::string, TensorInfo> tensors_;
    std::map<std::string, std::map<std::string, std::int64_t>> cond_params_;
    std::map<std::string, std::string> drawn_networks_;  // model.networks name -> the node it is drawn for
    std::ostringstream o_;
};

}  // namespace

std::string flow_dot(const Params& config, const Flow& flow) { return DotWriter(config, flow).write(); }

}  // namespace flowlab
