// The graph form (graph/graph_spec.hpp) becomes a runnable FlowGraph: references resolved to
// slots, nodes ordered, shapes inferred node by node, the bijection checked (every data tensor
// read once, every dimension reaching the latent), bases built and the sampling order planned.
// Every error names the JSON pointer of the node or field at fault and ends with a hint.
#include <algorithm>
#include <map>
#include <queue>
#include <set>

#include <nlohmann/json.hpp>

#include "flowlab/builder.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/network.hpp"
#include "flowlab/plugin.hpp"
#include "graph/graph_build.hpp"
#include "graph/graph_nodes.hpp"
#include "graph/json_internal.hpp"
#include "graph/schemas.hpp"
#include "model/flow_graph.hpp"

namespace flowlab::graph {

using nlohmann::json;

namespace {

// The plugin that registered bijector `type`, for messages about the layer (its name and file).
void origin_of(const Registry& registry, const std::string& type, LayerInfo& info) {
    const BijectorEntry* e = registry.bijectors.find(type);
    if (!e) return;
    info.plugin_path = e->origin;
    for (const auto& rec : registry.plugins)
        if (rec.path == e->origin) info.plugin = rec.name;
}

// A flow far beyond the machine fails once one repetition of a block is built, with its size,
// not after filling the memory. Training holds each parameter four times (value, gradient, two
// Adam moments) in f32; activations come on top, so the bound is a floor.
void check_repeat_size(const RepeatMark& mark, std::int64_t layers_per_rep, std::int64_t params_per_rep) {
    const double bytes = static_cast<double>(mark.count) * static_cast<double>(params_per_rep) * 4.0 * sizeof(float);
    const std::uint64_t memory = available_memory_bytes();
    if (memory > 0 && bytes > static_cast<double>(memory))
        throw ConfigError(mark.block.where("repeat") + ": repeat " + std::to_string(mark.count) + " of " +
                          std::to_string(layers_per_rep) + " layers with " + std::to_string(params_per_rep) +
                          " parameters each needs at least " + format_gigabytes(bytes) +
                          " to train (parameters, gradients, optimizer state), more than the " +
                          format_gigabytes(static_cast<double>(memory)) +
                          " available; lower the repeat count or the layer sizes");
}

class GraphBuilder {
public:
    GraphBuilder(const GraphSpec& spec, const Shape& event_shape, const Shape& context_shape, const Registry& registry,
                 Rng& rng, NetworkLibrary* networks)
        : spec_(spec), context_shape_(context_shape), registry_(registry), rng_(rng), networks_(networks),
          graph_(std::make_unique<FlowGraph>()) {
        graph_->slot_shapes = {event_shape, context_shape};
        context_kind_ = {false, true};
        consumer_ = {-1, -1};
        producer_ = {-1, -1};
    }

    void build_nodes() {
        index_names();
        order_nodes();
        for (std::size_t k = 0; k < order_.size(); ++k) build_node(order_[k]);
    }

    void build_outputs(const Params& model) {
        resolve_outputs();
        check_everything_used();
        build_bases(model);
        plan_releases();
        plan_sampling();
    }

    std::unique_ptr<FlowGraph> take_graph() { return std::move(graph_); }
    std::vector<LayerInfo> take_info() { return std::move(info_); }

private:
    // file:/pointer[/key] of node i.
    std::string at(std::size_t i, const std::string& key = "") const {
        return spec_.nodes[i].params.file() + ":" + spec_.nodes[i].pointer + (key.empty() ? "" : "/" + key);
    }
    std::string out_at(const OutputSpec& o, const std::string& key = "") const {
        return spec_.file + ":" + o.pointer + (key.empty() ? "" : "/" + key);
    }
    // The field of a node that names its inputs, for messages.
    std::string input_key(std::size_t i) const {
        return spec_.from_list ? "" : (params_json(spec_.nodes[i].params).contains("inputs") ||
                                               spec_.nodes[i].inputs.size() > 1 || spec_.nodes[i].type == "concat"
                                           ? "inputs"
                                           : "input");
    }

    std::int64_t output_count(const NodeSpec& n) const {
        if (n.type == "split") return 2;
        if (n.type == "slice") {
            const json& j = params_json(n.params);
            if (j.contains("sizes") && j["sizes"].is_array() && !j["sizes"].empty())
                return static_cast<std::int64_t>(j["sizes"].size());
        }
        return 1;
    }

    void index_names() {
        for (std::size_t i = 0; i < spec_.nodes.size(); ++i) {
            const std::string& name = spec_.nodes[i].name;
            if (name == kInputTensor || name == kContextTensor)
                throw ConfigError(at(i, "name") + ": '" + name + "' names the flow's " +
                                  (name == kInputTensor ? "data" : "context") + "; give the node another name");
            if (name.find(':') != std::string::npos)
                throw ConfigError(at(i, "name") + ": '" + name + "' contains ':', which selects an output of a node "
                                  "(\"s:1\"); give the node a name without it");
            auto [it, fresh] = by_name_.emplace(name, i);
            if (!fresh)
                throw ConfigError(at(i, "name") + ": the name '" + name + "' is already the node at " +
                                  spec_.nodes[it->second].pointer + "; node names are unique");
        }
    }

    struct Ref {
        int node = -1;  // -1: the data x, -2: the context
        int port = 0;
    };

    std::vector<std::string> tensor_names() const {
        std::vector<std::string> names = {kInputTensor};
        if (!context_shape_.empty()) names.push_back(kContextTensor);
        for (const NodeSpec& n : spec_.nodes) {
            const std::int64_t k = output_count(n);
            if (k == 1)
                names.push_back(n.name);
            else
                for (std::int64_t p = 0; p < k; ++p) names.push_back(n.name + ":" + std::to_string(p));
        }
        return names;
    }

    // A tensor reference of the text at `where` (file:/pointer of the field that holds it).
    Ref resolve(const std::string& ref, const std::string& where) const {
        if (ref == kInputTensor) return {-1, 0};
        if (ref == kContextTensor) {
            if (context_shape_.empty())
                throw ConfigError(where + ": 'context' names the flow's context, but the dataset gives none; drop it, "
                                  "or use a conditional dataset");
            return {-2, 0};
        }
        std::string name = ref;
        int port = -1;
        if (const auto colon = ref.rfind(':'); colon != std::string::npos) {
            name = ref.substr(0, colon);
            const std::string digits = ref.substr(colon + 1);
            if (digits.empty() || digits.size() > 6 || !std::all_of(digits.begin(), digits.end(), ::isdigit))
                throw ConfigError(where + ": '" + ref + "': after ':' comes an output number, e.g. 's:1'");
            port = std::stoi(digits);
        }
        auto it = by_name_.find(name);
        if (it == by_name_.end()) {
            const std::vector<std::string> names = tensor_names();
            const std::string dym = did_you_mean(ref, names);
            std::string known;
            for (std::size_t i = 0; i < names.size() && i < 12; ++i) known += (i ? ", " : "") + names[i];
            if (names.size() > 12) known += ", ...";
            throw ConfigError(where + ": no tensor '" + ref + "'" + (dym.empty() ? "" : "; did you mean '" + dym + "'?") +
                              " (tensors: " + known + ")");
        }
        const NodeSpec& n = spec_.nodes[it->second];
        const std::int64_t k = output_count(n);
        if (port < 0 && k > 1)
            throw ConfigError(where + ": node '" + name + "' (" + n.type + ") has " + std::to_string(k) +
                              " outputs; read one of them, " + name + ":0 to " + name + ":" + std::to_string(k - 1) +
                              (n.type == "split" ? " (0 the kept part, 1 the factored part)" : ""));
        if (port >= k)
            throw ConfigError(where + ": node '" + name + "' has " + std::to_string(k) + " output" +
                              (k == 1 ? "" : "s") + "; '" + ref + "' is not one of them");
        return {static_cast<int>(it->second), std::max(port, 0)};
    }

    std::string input_where(std::size_t i, std::size_t j) const {
        const std::string key = input_key(i);
        if (key.empty()) return at(i);
        return key == "inputs" ? at(i, "inputs/" + std::to_string(j)) : at(i, "input");
    }

    // Topological order, keeping the written order wherever the references allow.
    void order_nodes() {
        const std::size_t n = spec_.nodes.size();
        refs_.resize(n);
        context_refs_.resize(n);
        std::vector<std::vector<std::size_t>> users(n);
        std::vector<std::size_t> pending(n, 0);
        for (std::size_t i = 0; i < n; ++i) {
            const NodeSpec& node = spec_.nodes[i];
            for (std::size_t j = 0; j < node.inputs.size(); ++j) refs_[i].push_back(resolve(node.inputs[j], input_where(i, j)));
            if (node.context && !node.context->empty())
                context_refs_[i] = resolve(*node.context, at(i, "context"));
            else if (!node.context && !context_shape_.empty())
                context_refs_[i] = Ref{-2, 0};
            std::set<std::size_t> deps;
            for (const Ref& r : refs_[i])
                if (r.node >= 0) deps.insert(static_cast<std::size_t>(r.node));
            if (context_refs_[i] && context_refs_[i]->node >= 0) deps.insert(static_cast<std::size_t>(context_refs_[i]->node));
            if (deps.count(i)) throw ConfigError(at(i) + ": node '" + node.name + "' reads its own output; a flow is acyclic");
            for (std::size_t d : deps) users[d].push_back(i);
            pending[i] = deps.size();
        }
        std::priority_queue<std::size_t, std::vector<std::size_t>, std::greater<>> ready;
        for (std::size_t i = 0; i < n; ++i)
            if (pending[i] == 0) ready.push(i);
        while (!ready.empty()) {
            const std::size_t i = ready.top();
            ready.pop();
            order_.push_back(i);
            for (std::size_t u : users[i])
                if (--pending[u] == 0) ready.push(u);
        }
        if (order_.size() == n) return;
        // Walk back along unresolved inputs until a node repeats: that is a cycle.
        std::size_t cur = 0;
        while (pending[cur] == 0) ++cur;
        std::vector<std::size_t> path;
        std::map<std::size_t, std::size_t> seen;
        while (!seen.count(cur)) {
            seen[cur] = path.size();
            path.push_back(cur);
            for (const Ref& r : refs_[cur])
                if (r.node >= 0 && pending[static_cast<std::size_t>(r.node)] > 0) {
                    cur = static_cast<std::size_t>(r.node);
                    goto next;
                }
            if (context_refs_[cur] && context_refs_[cur]->node >= 0) cur = static_cast<std::size_t>(context_refs_[cur]->node);
        next:;
        }
        std::string cycle;
        for (std::size_t k = seen[cur]; k < path.size(); ++k) cycle = spec_.nodes[path[k]].name + " <- " + cycle;
        cycle += spec_.nodes[cur].name;
        throw ConfigError(at(cur) + ": the nodes form a cycle (" + cycle + ", each reading the next); a flow is "
                          "acyclic - one of them has to read an earlier tensor");
    }

    int slot_of(const Ref& r) const {
        if (r.node == -1) return FlowGraph::kInputSlot;
        if (r.node == -2) return FlowGraph::kContextSlot;
        return node_slots_.at(static_cast<std::size_t>(r.node))[static_cast<std::size_t>(r.port)];
    }

    std::string tensor_label(int slot) const { return slot_names_[static_cast<std::size_t>(slot)]; }

    int new_slot(const Shape& shape, bool context_kind, int producer, const std::string& label) {
        graph_->slot_shapes.push_back(shape);
        context_kind_.push_back(context_kind);
        consumer_.push_back(-1);
        producer_.push_back(producer);
        slot_names_.push_back(label);
        return static_cast<int>(graph_->slot_shapes.size()) - 1;
    }

    // Data slot `slot` is read by step `step` (node i's input j): once only.
    void consume(int slot, std::size_t i, std::size_t j, int step) {
        const auto s = static_cast<std::size_t>(slot);
        if (context_kind_[s])
            throw ConfigError(input_where(i, j) + ": '" + tensor_label(slot) + "' is a context tensor (the context or "
                              "a network of it), not part of the data; a " + spec_.nodes[i].type +
                              " node transforms data - read the context through \"context\" instead");
        if (consumer_[s] >= 0) {
            const std::size_t other = step_node_[static_cast<std::size_t>(consumer_[s])];
            throw ConfigError(input_where(i, j) + ": tensor '" + tensor_label(slot) + "' is already read by node '" +
                              spec_.nodes[other].name + "' (" + spec_.nodes[other].pointer +
                              "); a flow is a bijection, so each data tensor feeds one node - to use it in two "
                              "places, split or slice it, or condition on it through an output's \"given\"");
        }
        consumer_[s] = step;
    }

    void build_node(std::size_t i) {
        const NodeSpec& node = spec_.nodes[i];
        const int step_index = static_cast<int>(graph_->steps.size());
        FlowStep step;
        LayerInfo info;
        info.pointer = node.pointer;
        info.type = node.type;
        info.name = node.name;
        info.inputs = node.inputs;
        const bool network = node.type == "network";
        if (!network && node.type != "concat" && node.inputs.size() != 1)
            throw ConfigError(at(i, "inputs") + ": a " + node.type + " node reads one tensor, this one lists " +
                              std::to_string(node.inputs.size()) + "; to join tensors use a concat node first");
        std::vector<Shape> in_shapes;
        for (std::size_t j = 0; j < refs_[i].size(); ++j) {
            const int slot = slot_of(refs_[i][j]);
            step.in.push_back(slot);
            in_shapes.push_back(graph_->slot_shapes[static_cast<std::size_t>(slot)]);
            if (network) {
                if (!context_kind_[static_cast<std::size_t>(slot)])
                    throw ConfigError(input_where(i, j) + ": a network node encodes the context; '" + node.inputs[j] +
                                      "' is data (only bijective nodes may read data) - read \"context\" or another "
                                      "network node");
            } else {
                consume(slot, i, j, step_index);
            }
        }
        Shape ctx_shape;
        if (context_refs_[i] && !network) {
            step.context = slot_of(*context_refs_[i]);
            if (!context_kind_[static_cast<std::size_t>(step.context)])
                throw ConfigError(at(i, "context") + ": '" + *node.context + "' is a data tensor; a node's \"context\" "
                                  "is the flow's context or a network node of it (condition an output on data with "
                                  "\"given\")");
            ctx_shape = graph_->slot_shapes[static_cast<std::size_t>(step.context)];
            info.context = node.context ? *node.context : std::string(kContextTensor);
            read_context_.insert(step.context);
        }
        if (network && node.context && !node.context->empty())
            throw ConfigError(at(i, "context") + ": a network node reads the context through \"input\"; drop \"context\"");
        const Shape& in = in_shapes[0];
        info.in_shape = in;
        std::vector<Shape> outs;
        if (is_core_node(node.type)) {
            CoreNodeContext c{node.params, at(i), in_shapes, ctx_shape, registry_, rng_, networks_};
            c.input_where = [&](std::size_t j) { return input_where(i, j); };
            CoreNode built = build_core_node(node.type, c);
            step.kind = built.kind;
            step.split = built.split;
            step.network = built.network;
            step.owned = std::move(built.module);
            step.sizes = std::move(built.sizes);
            outs = std::move(built.outs);
        } else {
            step.kind = FlowStep::Kind::bijector;
            BuildContext ctx{in, ctx_shape, &rng_, &registry_};
            ctx.networks = networks_;
            std::unique_ptr<Bijector> layer;
            try {
                layer = registry_.make_bijector(node.params, ctx);
            } catch (const ConfigError&) {
                throw;
            } catch (const Error& e) {
                throw ConfigError(at(i) + ": cannot build layer '" + node.type + "': " + e.what());
            }
            info.type = layer->type_name();
            origin_of(registry_, layer->type_name(), info);
            outs = {layer->output_shape(in)};
            step.bijector = layer.get();
            step.owned = std::move(layer);
        }
        info.num_parameters = step.owned ? step.owned->num_parameters() : 0;
        info.out_shape = outs[0];
        info.out_shapes = outs;
        node_slots_[i] = {};
        for (std::size_t p = 0; p < outs.size(); ++p)
            step.out.push_back(new_slot(outs[p], network, step_index,
                                        outs.size() == 1 ? node.name : node.name + ":" + std::to_string(p)));
        node_slots_[i] = step.out;
        step_node_.push_back(i);
        graph_->steps.push_back(std::move(step));
        info_.push_back(std::move(info));
        if (node.repeat) {
            std::int64_t params = 0;
            const std::size_t first = node.repeat->first_node, here = info_.size() - 1;
            for (std::size_t k = first; k < here; ++k) params += info_[k].num_parameters;
            check_repeat_size(*node.repeat, static_cast<std::int64_t>(here - first), params);
        }
    }

    void resolve_outputs() {
        std::set<int> listed;
        for (std::size_t o = 0; o < spec_.outputs.size(); ++o) {
            const OutputSpec& os = spec_.outputs[o];
            const std::string where = spec_.from_list ? out_at(os) : out_at(os, os.base ? "tensor" : "");
            const int slot = slot_of(resolve(os.tensor, where));
            const auto s = static_cast<std::size_t>(slot);
            if (context_kind_[s])
                throw ConfigError(where + ": '" + os.tensor + "' is a context tensor, not part of the data; the "
                                  "outputs are the data's latent parts");
            if (!listed.insert(slot).second)
                throw ConfigError(where + ": '" + os.tensor + "' is listed twice; each part of the latent once");
            if (consumer_[s] >= 0)
                throw ConfigError(where + ": '" + os.tensor + "' is read by node '" +
                                  spec_.nodes[step_node_[static_cast<std::size_t>(consumer_[s])]].name +
                                  "', so it is not a latent part; list the tensor that node's path ends on");
            FlowOutput out;
            out.slot = slot;
            out.shape = graph_->slot_shapes[s];
            graph_->outputs.push_back(std::move(out));
            output_of_slot_[slot] = o;
        }
    }

    void check_everything_used() {
        const auto n = static_cast<int>(graph_->slot_shapes.size());
        std::set<int> given;
        for (const OutputSpec& os : spec_.outputs)
            if (!os.given.empty()) given.insert(slot_of(resolve(os.given, out_at(os, "given"))));
        for (int s = 0; s < n; ++s) {
            const auto u = static_cast<std::size_t>(s);
            if (s == FlowGraph::kContextSlot) continue;
            if (context_kind_[u]) {
                bool read = read_context_.count(s) || given.count(s);
                for (const FlowStep& st : graph_->steps)
                    if (st.kind == FlowStep::Kind::network && st.in[0] == s) read = true;
                if (!read) {
                    const std::size_t i = step_node_[static_cast<std::size_t>(producer_[u])];
                    throw ConfigError(at(i) + ": network node '" + spec_.nodes[i].name + "' is read by no node; use it "
                                      "as a node's \"context\" or an output's \"given\", or remove it");
                }
                continue;
            }
            if (consumer_[u] >= 0 || output_of_slot_.count(s)) continue;
            if (s == FlowGraph::kInputSlot)
                throw ConfigError(spec_.file + ":" + (spec_.nodes.empty() ? std::string() : spec_.nodes[0].pointer) +
                                  ": no node reads the data 'x'; the first node of the flow has \"input\": \"x\"");
            const std::size_t i = step_node_[static_cast<std::size_t>(producer_[u])];
            throw ConfigError(at(i) + ": the output '" + tensor_label(s) + "' of node '" + spec_.nodes[i].name +
                              "' is neither read by a node nor listed in \"outputs\"; every dimension must reach "
                              "the latent - add \"" + tensor_label(s) + "\" to the graph's \"outputs\"");
        }
    }

    void build_bases(const Params& model) {
        FlowGraph& g = *graph_;
        for (std::size_t o = 0; o < spec_.outputs.size(); ++o) {
            const OutputSpec& os = spec_.outputs[o];
            if (!os.base) {
                g.shared.push_back(o);
                continue;
            }
            FlowOutput& out = g.outputs[o];
            if (!os.given.empty())
                out.given = slot_of(resolve(os.given, out_at(os, "given")));
            else if (!context_shape_.empty())
                out.given = FlowGraph::kContextSlot;
            const Shape given_shape = out.given >= 0 ? g.slot_shapes[static_cast<std::size_t>(out.given)] : Shape{};
            BuildContext ctx{out.shape, given_shape, &rng_, &registry_};
            ctx.networks = networks_;
            out.base = registry_.make_distribution(*os.base, ctx);
        }
        if (g.shared.empty()) {
            if (model.has("base"))
                throw ConfigError(model.where("base") + ": every output has its own base, so the model's \"base\" "
                                  "would be unused; remove it (or drop \"base\" from an output)");
            return;
        }
        if (g.shared.size() == 1) {
            g.shared_shape = g.outputs[g.shared[0]].shape;
        } else {
            std::int64_t d = 0;
            for (std::size_t o : g.shared) d += numel(g.outputs[o].shape);
            g.shared_shape = {d};
        }
    }

    // A step drops a data tensor once read, unless an output or a conditioned base needs it.
    void plan_releases() {
        std::set<int> keep;
        for (const FlowOutput& o : graph_->outputs) {
            keep.insert(o.slot);
            if (o.given >= 0) keep.insert(o.given);
        }
        for (FlowStep& s : graph_->steps)
            for (int slot : s.in)
                s.release.push_back(slot != FlowGraph::kInputSlot && !context_kind_[static_cast<std::size_t>(slot)] &&
                                    !keep.count(slot));
    }

    void plan_sampling() {
        if (const std::optional<std::size_t> o = graph_->plan_sampling(context_kind_)) {
            const OutputSpec& os = spec_.outputs[*o];
            throw ConfigError(out_at(os, "given") + ": sampling cannot draw '" + os.tensor + "' given '" + os.given +
                              "': '" + os.given + "' is only known once '" + os.tensor +
                              "' has been used; condition on a tensor nearer the latent (e.g. the kept part of the "
                              "same split)");
        }
    }

    const GraphSpec& spec_;
    Shape context_shape_;
    const Registry& registry_;
    Rng& rng_;
    NetworkLibrary* networks_;
    std::unique_ptr<FlowGraph> graph_;
    std::vector<LayerInfo> info_;
    std::map<std::string, std::size_t> by_name_;
    std::vector<std::vector<Ref>> refs_;
    std::vector<std::optional<Ref>> context_refs_;
    std::vector<std::size_t> order_;
    std::map<std::size_t, std::vector<int>> node_slots_;
    std::vector<std::size_t> step_node_;  // step -> node
    std::vector<bool> context_kind_;
    std::vector<int> consumer_, producer_;  // per slot: the step that reads / writes it
    std::vector<std::string> slot_names_ = {kInputTensor, kContextTensor};
    std::set<int> read_context_;
    std::map<int, std::size_t> output_of_slot_;
};

}  // namespace

BuiltGraph build_graph(const GraphSpec& spec, const Params& model, const Shape& event_shape, const Shape& context_shape,
                       const Registry& registry, Rng& rng, NetworkLibrary* networks) {
    GraphBuilder b(spec, event_shape, context_shape, registry, rng, networks);
    b.build_nodes();
    b.build_outputs(model);
    return {b.take_graph(), b.take_info()};
}

bool needs_shared_base(const GraphSpec& spec) {
    for (const OutputSpec& o : spec.outputs)
        if (!o.base) return true;
    return false;
}

}  // namespace flowlab::graph
