// Flow: runs the built graph (model/flow_graph.hpp) in either direction and scores the latent
// under the base distributions.
#include "flowlab/flow.hpp"

#include "flowlab/errors.hpp"
#include "flowlab/kernels.hpp"
#include "flowlab/network.hpp"
#include "model/flow_graph.hpp"

namespace flowlab {

namespace {

Shape with_channels(const Shape& s, std::int64_t c) {
    Shape out = s;
    out[0] = c;
    return out;
}

void add_log_det(Var& total, const Var& term) {
    if (term.defined()) total = total.defined() ? total + term : term;
}

// The tensors of slots `which` joined along the channels (features).
Var join_slots(const std::vector<int>& which, const std::vector<Var>& slots) {
    std::vector<Var> parts;
    for (int i : which) parts.push_back(slots[static_cast<std::size_t>(i)]);
    return concat(parts, 1);
}

// `whole` cut along the channels into slots `which`, sizes[i] channels each.
void cut_into_slots(const Var& whole, const std::vector<int>& which, const std::vector<std::int64_t>& sizes,
                    std::vector<Var>& slots) {
    std::int64_t at = 0;
    for (std::size_t i = 0; i < which.size(); ++i) {
        slots[static_cast<std::size_t>(which[i])] = slice(whole, 1, at, sizes[i]);
        at += sizes[i];
    }
}

}  // namespace

SplitNode::SplitNode(const Shape& in, std::int64_t keep, std::unique_ptr<Conditioner> prior)
    : in_(in), keep_(keep), prior_(std::move(prior)) {
    if (in_.empty() || keep_ < 1 || keep_ >= in_[0])
        throw ShapeError("split: cannot keep " + std::to_string(keep_) + " of the " +
                         std::to_string(in_.empty() ? 0 : in_[0]) + " channels of input " + shape_str(in_) +
                         "; keep must be between 1 and channels - 1");
    if (prior_) add_child("prior", prior_.get());
}

Shape SplitNode::kept_shape() const { return with_channels(in_, keep_); }
Shape SplitNode::factored_shape() const { return with_channels(in_, in_[0] - keep_); }

void SplitNode::prior_params(const Var& kept, const Var& context, Var& mu, Var& log_sigma) {
    const std::int64_t cf = in_[0] - keep_;
    Var p = (*prior_)(kept, context);
    mu = slice(p, 1, 0, cf);
    log_sigma = slice(p, 1, cf, cf);
}

void SplitNode::inverse(const Var& x, const Var& context, Var& kept, Var& factored, Var& log_det) {
    kept = slice(x, 1, 0, keep_);
    factored = slice(x, 1, keep_, in_[0] - keep_);
    if (!prior_) return;
    Var mu, log_sigma;
    prior_params(kept, context, mu, log_sigma);
    factored = (factored - mu) * exp(-log_sigma);
    add_log_det(log_det, -sum_per_sample(log_sigma));
}

Var SplitNode::forward(const Var& kept, const Var& factored, const Var& context, Var& log_det) {
    Var xf = factored;
    if (prior_) {
        Var mu, log_sigma;
        prior_params(kept, context, mu, log_sigma);
        xf = factored * exp(log_sigma) + mu;
        add_log_det(log_det, sum_per_sample(log_sigma));
    }
    return concat({kept, xf}, 1);
}

std::vector<Var> FlowGraph::empty_slots(const Var& x, const Var& context) const {
    std::vector<Var> slots(slot_shapes.size());
    slots[kInputSlot] = x;
    slots[kContextSlot] = context;
    return slots;
}

void FlowGraph::run_inverse(std::vector<Var>& slots, Var& log_det, bool data_init) const {
    for (const FlowStep& s : steps) run_step(s, slots, log_det, data_init);
}

void FlowGraph::run_step(const FlowStep& s, std::vector<Var>& slots, Var& log_det, bool data_init) const {
    {
        const Var& in = slots[s.in[0]];
        const Var ctx = s.context >= 0 ? slots[s.context] : Var();
        switch (s.kind) {
            case FlowStep::Kind::bijector:
                if (data_init) {
                    slots[s.out[0]] = s.bijector->data_init(in, ctx);
                } else {
                    FlowResult r = s.bijector->inverse(in, ctx);
                    slots[s.out[0]] = std::move(r.out);
                    add_log_det(log_det, r.log_det);
                }
                break;
            case FlowStep::Kind::split:
                s.split->inverse(in, ctx, slots[s.out[0]], slots[s.out[1]], log_det);
                break;
            case FlowStep::Kind::slice:
                cut_into_slots(in, s.out, s.sizes, slots);
                break;
            case FlowStep::Kind::concat:
                slots[s.out[0]] = join_slots(s.in, slots);
                break;
            case FlowStep::Kind::network:
                slots[s.out[0]] = (*s.network)({in});
                break;
        }
        for (std::size_t i = 0; i < s.in.size(); ++i)
            if (s.release[i]) slots[s.in[i]] = Var();
    }
}

void FlowGraph::run_networks(std::vector<Var>& slots) const {
    for (const FlowStep& s : steps)
        if (s.kind == FlowStep::Kind::network) slots[s.out[0]] = (*s.network)({slots[s.in[0]]});
}

namespace {

// Draws output o from its own base, given its conditioning slot.
void draw_output(const FlowGraph& g, std::size_t o, std::vector<Var>& slots, std::int64_t n, Rng& rng,
                 double temperature) {
    const FlowOutput& out = g.outputs[o];
    const Tensor given = out.given >= 0 ? slots[out.given].value() : Tensor();
    slots[out.slot] = Var(out.base->sample(n, rng, temperature, given));
}

}  // namespace

void FlowGraph::run_forward(std::vector<Var>& slots, Var& log_det, Rng* rng, double temperature,
                            std::int64_t n) const {
    run_networks(slots);
    if (rng)
        for (std::size_t o : sample_first) draw_output(*this, o, slots, n, *rng, temperature);
    for (std::size_t k = steps.size(); k-- > 0;) {
        const FlowStep& s = steps[k];
        const Var ctx = s.context >= 0 ? slots[s.context] : Var();
        switch (s.kind) {
            case FlowStep::Kind::bijector: {
                FlowResult r = s.bijector->forward(slots[s.out[0]], ctx);
                slots[s.in[0]] = std::move(r.out);
                add_log_det(log_det, r.log_det);
                break;
            }
            case FlowStep::Kind::split:
                slots[s.in[0]] = s.split->forward(slots[s.out[0]], slots[s.out[1]], ctx, log_det);
                break;
            case FlowStep::Kind::slice:
                slots[s.in[0]] = join_slots(s.out, slots);
                break;
            case FlowStep::Kind::concat:
                cut_into_slots(Var(slots[s.out[0]]), s.in, s.sizes, slots);
                break;
            case FlowStep::Kind::network:
                break;  // computed up front
        }
        if (rng)
            for (std::size_t o : sample_after[k]) draw_output(*this, o, slots, n, *rng, temperature);
    }
}

std::optional<std::size_t> FlowGraph::plan_sampling(std::vector<bool> known) {
    for (std::size_t o : shared) known[static_cast<std::size_t>(outputs[o].slot)] = true;
    std::vector<std::size_t> pending;
    for (std::size_t o = 0; o < outputs.size(); ++o)
        if (outputs[o].base) pending.push_back(o);
    auto draw = [&](std::vector<std::size_t>& into) {
        for (bool progress = true; progress;) {
            progress = false;
            for (auto it = pending.begin(); it != pending.end();) {
                const FlowOutput& out = outputs[*it];
                if (out.given >= 0 && !known[static_cast<std::size_t>(out.given)]) {
                    ++it;
                    continue;
                }
                known[static_cast<std::size_t>(out.slot)] = true;
                into.push_back(*it);
                it = pending.erase(it);
                progress = true;
            }
        }
    };
    sample_first.clear();
    draw(sample_first);
    sample_after.assign(steps.size(), {});
    for (std::size_t k = steps.size(); k-- > 0;) {
        for (int slot : steps[k].out)
            if (!known[static_cast<std::size_t>(slot)])
                for (std::size_t o = 0; o < outputs.size(); ++o)
                    if (outputs[o].slot == slot) return o;
        for (int slot : steps[k].in) known[static_cast<std::size_t>(slot)] = true;
        draw(sample_after[k]);
    }
    return std::nullopt;
}

Flow::Flow(std::unique_ptr<FlowGraph> graph, std::vector<LayerInfo> info, std::unique_ptr<Dequantizer> dequantizer,
           Shape event_shape, Shape context_shape)
    : graph_(std::move(graph)),
      info_(std::move(info)),
      dequantizer_(std::move(dequantizer)),
      event_shape_(std::move(event_shape)),
      context_shape_(std::move(context_shape)) {
    if (!graph_) throw ConfigError("flow: no graph");
    for (std::size_t i = 0; i < graph_->steps.size(); ++i)
        if (graph_->steps[i].owned) add_child(info_[i].name, graph_->steps[i].owned.get());
    if (graph_->shared_base) add_child("base", graph_->shared_base.get());
    for (std::size_t o = 0; o < graph_->outputs.size(); ++o)
        if (graph_->outputs[o].base) add_child("outputs." + std::to_string(o) + ".base", graph_->outputs[o].base.get());
    if (dequantizer_) add_child("dequantizer", dequantizer_.get());
}

Flow::~Flow() = default;

std::int64_t Flow::base_num_parameters() const {
    std::int64_t n = graph_->shared_base ? graph_->shared_base->num_parameters() : 0;
    for (const FlowOutput& o : graph_->outputs)
        if (o.base) n += o.base->num_parameters();
    return n;
}

std::vector<Var> Flow::run_inverse(const Var& x, const Var& context, Var& log_det, bool data_init) {
    std::vector<Var> slots = graph_->empty_slots(x, context);
    graph_->run_inverse(slots, log_det, data_init);
    if (!log_det.defined()) log_det = Var(Tensor::zeros({x.size(0)}, x.dtype()));
    return slots;
}

namespace {

// The outputs `which` of `slots` as one latent: one output as it is, several flattened and
// concatenated in order.
Var join_outputs(const FlowGraph& g, const std::vector<std::size_t>& which, const std::vector<Var>& slots) {
    if (which.size() == 1) return slots[g.outputs[which[0]].slot];
    std::vector<Var> parts;
    for (std::size_t o : which) {
        const Var& v = slots[g.outputs[o].slot];
        parts.push_back(v.value().dim() == 2 ? v : reshape(v, {v.size(0), -1}));
    }
    return concat(parts, 1);
}

// The inverse of join_outputs: z's parts into the outputs' slots.
void split_latent(const FlowGraph& g, const std::vector<std::size_t>& which, const Var& z, std::vector<Var>& slots) {
    if (which.size() == 1) {
        slots[g.outputs[which[0]].slot] = z;
        return;
    }
    std::int64_t at = 0;
    for (std::size_t o : which) {
        const Shape& shape = g.outputs[o].shape;
        const std::int64_t d = numel(shape);
        Var part = slice(z, 1, at, d);
        slots[g.outputs[o].slot] = shape.size() == 1 ? part : reshape(part, with_batch(z.size(0), shape));
        at += d;
    }
}

std::vector<std::size_t> all_outputs(const FlowGraph& g) {
    std::vector<std::size_t> all(g.outputs.size());
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
    return all;
}

}  // namespace

Var Flow::latent(const std::vector<Var>& slots) const { return join_outputs(*graph_, all_outputs(*graph_), slots); }

FlowResult Flow::inverse(const Var& x, const Var& context) {
    Var log_det;
    std::vector<Var> slots = run_inverse(x, context, log_det, false);
    return {latent(slots), log_det};
}

FlowResult Flow::forward(const Var& z, const Var& context) {
    std::vector<Var> slots = graph_->empty_slots(Var(), context);
    split_latent(*graph_, all_outputs(*graph_), z, slots);
    Var log_det;
    graph_->run_forward(slots, log_det, nullptr, 1.0, z.size(0));
    if (!log_det.defined()) log_det = Var(Tensor::zeros({z.size(0)}, z.dtype()));
    return {slots[FlowGraph::kInputSlot], log_det};
}

Var Flow::log_prob(const Var& x, const Var& context) {
    Var log_det;
    std::vector<Var> slots = run_inverse(x, context, log_det, false);
    const FlowGraph& g = *graph_;
    Var lp = log_det;
    if (g.shared_base) lp = g.shared_base->log_prob(join_outputs(g, g.shared, slots), context) + lp;
    for (const FlowOutput& o : g.outputs)
        if (o.base) lp = lp + o.base->log_prob(slots[o.slot], o.given >= 0 ? slots[o.given] : Var());
    return lp;
}

Tensor Flow::sample(std::int64_t n, Rng& rng, double temperature, const Tensor& context) {
    NoGradGuard guard;
    Var ctx = context.defined() ? Var(context) : Var();
    const FlowGraph& g = *graph_;
    std::vector<Var> slots = g.empty_slots(Var(), ctx);
    if (g.shared_base) split_latent(g, g.shared, Var(g.shared_base->sample(n, rng, temperature, context)), slots);
    Var log_det;
    g.run_forward(slots, log_det, &rng, temperature, n);
    return slots[FlowGraph::kInputSlot].value();
}

void Flow::data_init(const Tensor& x, const Tensor& context) {
    NoGradGuard guard;
    Var log_det;
    run_inverse(Var(x), context.defined() ? Var(context) : Var(), log_det, true);
}

}  // namespace flowlab
