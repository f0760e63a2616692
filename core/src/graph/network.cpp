// Network (network.hpp): a graph of registered ops read from JSON, checked and planned once, then
// run as a flat schedule over a vector of Vars; and NetworkLibrary.
//
// Building goes: the structure from the JSON alone (names, inputs, output, cycles, unused
// nodes: analyse, network_structure.cpp), the ops in topological order (each infers its output
// shape from its inputs'), the output size, zero-initialisation, then the plan: activations
// fused into the op before them where that op accepts, a layout for every image value, and the
// steps with the slots each one reads and writes (and the slots no later step reads, dropped as
// soon as they are done so that evaluation without gradients keeps few activations alive).
#include "flowlab/network.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "flowlab/conv.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/kernels.hpp"
#include "flowlab/op.hpp"
#include "flowlab/ops.hpp"
#include "flowlab/registry.hpp"
#include "graph/network_internal.hpp"

namespace flowlab {

using namespace network_detail;

namespace {

std::string shape_list(const Structure& g, const NodeDef& node, const std::vector<Shape>& shapes) {
    std::vector<std::string> parts;
    for (int v : node.inputs) parts.push_back(g.value_name(v) + " " + shape_str(shapes[static_cast<std::size_t>(v)]));
    return join(parts);
}

bool is_image(const Shape& s) { return s.size() == 3; }

const char* layout_word(ConvLayout l) {
    switch (l) {
        case ConvLayout::nhwc: return "nhwc";
        case ConvLayout::blocked8: return "blocked8";
        case ConvLayout::nchw: break;
    }
    return "nchw";
}

}  // namespace

// ------------------------------------------------------------------------------- Network

struct Network::Impl {
    struct Step {
        Op* op = nullptr;          // null: a layout move of in[0]
        std::vector<int> in;       // slots read
        int out = -1;              // slot written
        ConvLayout from = ConvLayout::nchw, to = ConvLayout::nchw;  // a move's layouts
        Shape out_batchless;       // what the op must return after the batch dimension
        std::vector<int> release;  // slots no later step reads
        std::string node;          // for messages
    };

    std::vector<NetworkInput> inputs;
    std::int64_t out_numel = 0;
    Shape output_shape;
    std::vector<std::unique_ptr<Op>> ops;  // by node index
    std::vector<Step> steps;
    std::vector<std::string> text;  // schedule(), one line per step
    int n_slots = 0;
    int out_slot = -1;
};

namespace {

// The ops' plan: fusion, layouts, steps and slots (see the top of the file).
void plan(Network::Impl& m, const Structure& g, const std::vector<Shape>& shapes) {
    const int n_in = g.n_inputs();
    const std::size_t n = g.nodes.size();
    const std::size_t n_values = static_cast<std::size_t>(n_in) + n;
    auto node_of = [&](int v) { return static_cast<std::size_t>(v - n_in); };

    // Fusion. uses[v]: how many inputs of live nodes read value v (the output counts as one).
    std::vector<int> rep(n_values);
    for (std::size_t v = 0; v < n_values; ++v) rep[v] = static_cast<int>(v);
    std::vector<int> uses(n_values, 0);
    for (const auto& node : g.nodes)
        for (int v : node.inputs) ++uses[static_cast<std::size_t>(v)];
    ++uses[static_cast<std::size_t>(n_in + g.output)];
    std::vector<char> alive(n, 1);
    std::vector<std::string> label(n);
    for (std::size_t i = 0; i < n; ++i) label[i] = g.nodes[i].p.get_string("type");
    for (int i : g.order) {
        const auto ui = static_cast<std::size_t>(i);
        const char* act = m.ops[ui]->activation();
        if (!act || g.nodes[ui].inputs.size() != 1) continue;
        const int v = rep[static_cast<std::size_t>(g.nodes[ui].inputs[0])];
        if (v < n_in || uses[static_cast<std::size_t>(v)] != 1) continue;
        if (!m.ops[node_of(v)]->absorb_activation(act)) continue;
        rep[static_cast<std::size_t>(n_in + i)] = v;
        uses[static_cast<std::size_t>(v)] = uses[static_cast<std::size_t>(n_in + i)];
        alive[ui] = 0;
        label[node_of(v)] += std::string("+") + act;
    }
    auto rep_of = [&](int v) {
        while (rep[static_cast<std::size_t>(v)] != v) v = rep[static_cast<std::size_t>(v)];
        return v;
    };
    const int out_value = rep_of(n_in + g.output);

    // Layouts. prefer_nchw: this value is better made in nchw, because the output is, or an op
    // that reads it needs nchw (directly, or through follow ops that pass it on).
    std::vector<std::vector<int>> readers(n_values);
    for (int i : g.order)
        if (alive[static_cast<std::size_t>(i)])
            for (int v : g.nodes[static_cast<std::size_t>(i)].inputs)
                readers[static_cast<std::size_t>(rep_of(v))].push_back(i);
    std::vector<char> prefer_nchw(n_values, 0);
    prefer_nchw[static_cast<std::size_t>(out_value)] = 1;
    for (auto it = g.order.rbegin(); it != g.order.rend(); ++it) {
        const auto v = static_cast<std::size_t>(n_in + *it);
        if (!alive[static_cast<std::size_t>(*it)]) continue;
        for (int r : readers[v]) {
            const OpLayouts kind = m.ops[static_cast<std::size_t>(r)]->layouts();
            const bool passes_on = kind == OpLayouts::follow && prefer_nchw[static_cast<std::size_t>(n_in + r)];
            if (kind == OpLayouts::nchw || passes_on) prefer_nchw[v] = 1;
        }
    }

    // Steps. slot_of[v]: where value v is, in layout[v]; moved[(v, layout)]: its moved copy.
    std::vector<int> slot_of(n_values, -1);
    std::vector<ConvLayout> layout(n_values, ConvLayout::nchw);
    std::map<std::pair<int, ConvLayout>, int> moved;
    for (int v = 0; v < n_in; ++v) slot_of[static_cast<std::size_t>(v)] = m.n_slots++;
    auto slot_in = [&](int v, ConvLayout want) {
        const auto uv = static_cast<std::size_t>(v);
        if (layout[uv] == want) return slot_of[uv];
        auto it = moved.find({v, want});
        if (it != moved.end()) return it->second;
        Network::Impl::Step s;
        s.in = {slot_of[uv]};
        s.out = m.n_slots++;
        s.from = layout[uv];
        s.to = want;
        s.node = g.value_name(v);
        m.text.push_back(g.value_name(v) + " = to_" + layout_word(want) + "(" + g.value_name(v) + ")");
        m.steps.push_back(std::move(s));
        moved[{v, want}] = m.steps.back().out;
        return m.steps.back().out;
    };
    for (int i : g.order) {
        const auto ui = static_cast<std::size_t>(i);
        if (!alive[ui]) continue;
        Op& op = *m.ops[ui];
        std::vector<int> ins;
        for (int v : g.nodes[ui].inputs) ins.push_back(rep_of(v));
        const Shape& out_shape = shapes[static_cast<std::size_t>(n_in + i)];
        std::vector<ConvLayout> want(ins.size(), ConvLayout::nchw);
        ConvLayout out = ConvLayout::nchw;
        const bool prefer = prefer_nchw[static_cast<std::size_t>(n_in + i)] != 0;
        switch (op.layouts()) {
            case OpLayouts::nchw: break;
            case OpLayouts::follow: {
                // One layout for all: theirs when they agree, else the one this value prefers.
                bool all_images = true, agree = true;
                for (int v : ins) {
                    all_images = all_images && is_image(shapes[static_cast<std::size_t>(v)]);
                    agree = agree && layout[static_cast<std::size_t>(v)] == layout[static_cast<std::size_t>(ins[0])];
                }
                ConvLayout common = ConvLayout::nchw;
                if (all_images && agree) common = layout[static_cast<std::size_t>(ins[0])];
                else if (all_images && !prefer) common = ConvLayout::nhwc;
                std::fill(want.begin(), want.end(), common);
                if (is_image(out_shape)) out = common;
                break;
            }
            case OpLayouts::any:
                for (std::size_t k = 0; k < ins.size(); ++k) want[k] = layout[static_cast<std::size_t>(ins[k])];
                if (is_image(out_shape) && !prefer) out = ConvLayout::nhwc;
                break;
        }
        Network::Impl::Step s;
        s.op = &op;
        std::vector<std::string> arg_names;
        for (std::size_t k = 0; k < ins.size(); ++k) {
            s.in.push_back(slot_in(ins[k], want[k]));
            arg_names.push_back(g.value_name(ins[k]));
        }
        op.set_layouts(want, out);
        const auto uv = static_cast<std::size_t>(n_in + i);
        layout[uv] = out;
        slot_of[uv] = s.out = m.n_slots++;
        s.out_batchless = out_shape;
        if (is_image(out_shape) && out != ConvLayout::nchw) {
            const Shape laid = layout_shape(with_batch(1, out_shape), out);
            s.out_batchless.assign(laid.begin() + 1, laid.end());
        }
        s.node = g.nodes[ui].name;
        m.text.push_back(g.nodes[ui].name + " = " + label[ui] + "(" + join(arg_names) + ")" +
                         (out != ConvLayout::nchw ? std::string(" [") + layout_word(out) + "]" : ""));
        m.steps.push_back(std::move(s));
    }
    m.out_slot = slot_in(out_value, ConvLayout::nchw);

    // Releases: after the last step that reads a slot (never the output's).
    std::vector<int> last(static_cast<std::size_t>(m.n_slots), -1);
    for (std::size_t k = 0; k < m.steps.size(); ++k)
        for (int s : m.steps[k].in) last[static_cast<std::size_t>(s)] = static_cast<int>(k);
    for (int s = 0; s < m.n_slots; ++s)
        if (s != m.out_slot && last[static_cast<std::size_t>(s)] >= 0)
            m.steps[static_cast<std::size_t>(last[static_cast<std::size_t>(s)])].release.push_back(s);
}

}  // namespace

Network::Network(const Params& def, std::vector<NetworkInput> inputs, std::int64_t out_numel, bool zero_init_output,
                 const Registry& registry, Rng& rng)
    : impl_(std::make_unique<Impl>()) {
    Impl& m = *impl_;
    m.inputs = std::move(inputs);
    m.out_numel = out_numel;
    std::vector<std::string> names;
    for (const auto& in : m.inputs) names.push_back(in.name);
    const Structure g = analyse(def, names, true);
    const int n_in = g.n_inputs();

    std::vector<Shape> shapes(static_cast<std::size_t>(n_in) + g.nodes.size());
    for (int v = 0; v < n_in; ++v) shapes[static_cast<std::size_t>(v)] = m.inputs[static_cast<std::size_t>(v)].shape;
    m.ops.resize(g.nodes.size());
    for (int i : g.order) {
        const NodeDef& node = g.nodes[static_cast<std::size_t>(i)];
        OpSpec spec;
        for (int v : node.inputs) spec.inputs.push_back(shapes[static_cast<std::size_t>(v)]);
        const bool is_output = i == g.output;
        spec.auto_size = is_output && out_numel > 0 ? out_numel : 0;
        spec.zero_init = is_output && zero_init_output;
        std::unique_ptr<Op> op;
        try {
            op = registry.make_op(node.p, spec, rng);
        } catch (const ShapeError& e) {
            // An op's shape checks know no JSON; the node and its inputs' shapes say where.
            throw ConfigError(node.p.where() + ": node '" + node.name + "' cannot take its inputs (" +
                              shape_list(g, node, shapes) + "): " + e.what());
        }
        if (op->output_shape().empty())
            throw PluginError(node.p.where() + ": op '" + node.p.get_string("type") + "' (" +
                              registry.ops.find(node.p.get_string("type"))->origin +
                              ") did not set its output shape (set_output_shape in its constructor)");
        shapes[static_cast<std::size_t>(n_in + i)] = op->output_shape();
        add_child(node.name, op.get());
        m.ops[static_cast<std::size_t>(i)] = std::move(op);
    }

    const NodeDef& out_node = g.nodes[static_cast<std::size_t>(g.output)];
    m.output_shape = shapes[static_cast<std::size_t>(n_in + g.output)];
    if (out_numel > 0 && numel(m.output_shape) != out_numel)
        throw ConfigError(out_node.p.where() + ": the network's output '" + out_node.name + "' has " +
                          std::to_string(numel(m.output_shape)) + " values per sample (shape " +
                          shape_str(m.output_shape) + "), where " + std::to_string(out_numel) + " are needed; " +
                          (out_node.p.has("out") ? "set its \"out\" to \"auto\""
                                                 : "end the network with a node that sizes its output (e.g. a "
                                                   "linear or conv2d with \"out\": \"auto\")"));

    if (zero_init_output && m.ops[static_cast<std::size_t>(g.output)]->num_parameters() == 0) {
        // The output has nothing to zero: the nearest node with parameters up its single-input chain.
        int i = g.output;
        while (m.ops[static_cast<std::size_t>(i)]->num_parameters() == 0) {
            const auto& ins = g.nodes[static_cast<std::size_t>(i)].inputs;
            if (ins.size() != 1 || ins[0] < n_in)
                throw ConfigError(out_node.p.where() + ": the output node '" + out_node.name + "' has no parameters " +
                                  "to start at zero (so that the layer starts as the identity), nor does a chain of " +
                                  "single-input nodes lead back to one that has; end the network with a linear or " +
                                  "conv2d node (or a gate or flatten right after one)");
            i = ins[0] - n_in;
        }
        for (auto& p : m.ops[static_cast<std::size_t>(i)]->named_parameters()) p.var.mutable_value().fill(0.0);
    }

    plan(m, g, shapes);
}

Network::~Network() = default;

const Shape& Network::output_shape() const { return impl_->output_shape; }
const std::vector<NetworkInput>& Network::inputs() const { return impl_->inputs; }
std::int64_t Network::out_numel() const { return impl_->out_numel; }
std::vector<std::string> Network::schedule() const { return impl_->text; }

Var Network::operator()(const std::vector<Var>& inputs) {
    const Impl& m = *impl_;
    if (inputs.size() != m.inputs.size())
        throw ShapeError("network: called with " + std::to_string(inputs.size()) + " inputs, it takes " +
                         std::to_string(m.inputs.size()));
    std::vector<Var> slots(static_cast<std::size_t>(m.n_slots));
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        const Var& v = inputs[i];
        const NetworkInput& want = m.inputs[i];
        if (!v.defined()) throw ShapeError("network: its input '" + want.name + "' was not given");
        const Shape& s = v.shape();
        const std::int64_t per = numel(want.shape);
        if (s.empty() || s[0] * per != v.value().numel())
            throw ShapeError("network: input '" + want.name + "' is " + shape_str(s) + ", expected [batch, " +
                             shape_str(want.shape).substr(1));
        const bool exact =
            s.size() == want.shape.size() + 1 && std::equal(want.shape.begin(), want.shape.end(), s.begin() + 1);
        slots[i] = exact ? v : reshape(v, with_batch(s[0], want.shape));
    }
    std::vector<Var> args;
    for (const Impl::Step& st : m.steps) {
        Var& out = slots[static_cast<std::size_t>(st.out)];
        if (st.op) {
            args.clear();
            for (int k : st.in) args.push_back(slots[static_cast<std::size_t>(k)]);
            out = (*st.op)(args);
            const Shape& y = out.shape();
            const Shape& want = st.out_batchless;
            if (y.size() != want.size() + 1 || !std::equal(want.begin(), want.end(), y.begin() + 1))
                throw ShapeError("network node '" + st.node + "': its op returned " + shape_str(y) +
                                 ", expected [batch, " + shape_str(want).substr(1) +
                                 " (the op's output_shape() and its result disagree)");
        } else {
            out = to_layout(slots[static_cast<std::size_t>(st.in[0])], st.from, st.to);
        }
        for (int r : st.release) slots[static_cast<std::size_t>(r)] = Var();
    }
    return std::move(slots[static_cast<std::size_t>(m.out_slot)]);
}

// ------------------------------------------------------------------------------- NetworkLibrary

NetworkLibrary::NetworkLibrary(const Params& networks) {
    const Schema schema = {
        param_required("nodes", ParamType::any, "the network's nodes: {\"name\", \"type\", \"inputs\", parameters...}"),
        param_required("output", ParamType::string, "the node whose result the network returns"),
    };
    for (const std::string& name : networks.keys()) {
        if (!valid_name(name))
            throw ConfigError(networks.where(name) + ": invalid network name '" + name +
                              "': use letters, digits, '_' and '-'");
        const Params def = networks.get_object(name);
        def.validated(schema, "network '" + name + "'");
        // What can be checked before a layer gives the shapes (inputs: a conditioner's).
        analyse(def, {"x", "context"}, false);
        defs_.emplace(name, def);
    }
}

bool NetworkLibrary::contains(const std::string& name) const { return defs_.count(name) != 0; }

std::vector<std::string> NetworkLibrary::names() const {
    std::vector<std::string> out;
    for (const auto& kv : defs_) out.push_back(kv.first);
    return out;
}

const Params& NetworkLibrary::definition(const std::string& name, const std::string& where) const {
    auto it = defs_.find(name);
    if (it != defs_.end()) return it->second;
    if (defs_.empty())
        throw ConfigError(where + ": unknown network '" + name + "': the model defines no networks; define it in " +
                          "\"model\": {\"networks\": {\"" + name + "\": {\"nodes\": [...], \"output\": ...}}}");
    const std::vector<std::string> known = names();
    const std::string dym = did_you_mean(name, known);
    throw ConfigError(where + ": unknown network '" + name + "'" +
                      (dym.empty() ? "" : "; did you mean '" + dym + "'?") + " (model.networks defines: " + join(known) +
                      ")");
}

std::shared_ptr<Network> NetworkLibrary::build(const std::string& name, const std::string& where,
                                               std::vector<NetworkInput> inputs, std::int64_t out_numel,
                                               bool zero_init_output, const Registry& registry, Rng& rng) const {
    return std::make_shared<Network>(definition(name, where), std::move(inputs), out_numel, zero_init_output, registry,
                                     rng);
}

namespace {
std::string describe_use(const std::vector<NetworkInput>& inputs, std::int64_t out_numel) {
    std::vector<std::string> parts;
    for (const auto& in : inputs) parts.push_back(in.name + " " + shape_str(in.shape));
    return join(parts) + " -> " + (out_numel > 0 ? std::to_string(out_numel) + " values per sample" : "any size");
}
bool same_inputs(const std::vector<NetworkInput>& a, const std::vector<NetworkInput>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (a[i].name != b[i].name || a[i].shape != b[i].shape) return false;
    return true;
}
}  // namespace

std::shared_ptr<Network> NetworkLibrary::shared(const std::string& name, const std::string& where,
                                                std::vector<NetworkInput> inputs, std::int64_t out_numel,
                                                bool zero_init_output, const Registry& registry, Rng& rng) {
    auto it = shared_.find(name);
    if (it != shared_.end()) {
        const Network& net = *it->second.net;
        if (!same_inputs(net.inputs(), inputs) || net.out_numel() != out_numel)
            throw ConfigError(where + ": network '" + name + "' is shared (\"share\": true), and its one instance " +
                              "was built at " + it->second.where + " for " +
                              describe_use(net.inputs(), net.out_numel()) +
                              "; here it would need " + describe_use(inputs, out_numel) +
                              ": layers that share a network must agree on its shapes; give this layer its own copy " +
                              "with \"share\": false");
        return it->second.net;
    }
    auto net = build(name, where, std::move(inputs), out_numel, zero_init_output, registry, rng);
    shared_.emplace(name, Shared{net, where});
    return net;
}

}  // namespace flowlab