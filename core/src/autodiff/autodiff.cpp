#include "flowlab/autodiff.hpp"

#include <chrono>
#include <unordered_map>
#include <utility>

#include "flowlab/errors.hpp"
#include "flowlab/ops.hpp"
#include "flowlab/profiler.hpp"
#include "autodiff/profiler_internal.hpp"

namespace flowlab {

namespace {
thread_local bool t_grad_enabled = true;

// The visited set of the topological sort: open addressing over node addresses, cheaper
// than std::unordered_set for the few hundred to few hundred thousand nodes of a graph.
class NodeSet {
public:
    // Returns true when p was not in the set yet.
    bool insert(const Node* p) {
        if (2 * (size_ + 1) > slots_.size()) grow();
        if (place(slots_, p)) {
            ++size_;
            return true;
        }
        return false;
    }

private:
    static bool place(std::vector<const Node*>& slots, const Node* p) {
        const std::size_t mask = slots.size() - 1;
        std::size_t i = (reinterpret_cast<std::uintptr_t>(p) >> 4) * 0x9E3779B97F4A7C15ull >> 20 & mask;
        while (slots[i]) {
            if (slots[i] == p) return false;
            i = (i + 1) & mask;
        }
        slots[i] = p;
        return true;
    }
    void grow() {
        std::vector<const Node*> bigger(slots_.empty() ? 256 : slots_.size() * 2, nullptr);
        for (const Node* p : slots_)
            if (p) place(bigger, p);
        slots_.swap(bigger);
    }
    std::vector<const Node*> slots_;
    std::size_t size_ = 0;
};

[[noreturn]] void undefined_var(const char* what) {
    throw Error(std::string(what) + ": undefined Var");
}

// The node behind a Var, or the error naming `what` for an undefined one.
Node& node_of(const std::shared_ptr<Node>& node, const char* what) {
    if (!node) undefined_var(what);
    return *node;
}
}  // namespace

// ------------------------------------------------------------------------------------ Node

Node::~Node() {
    // Each parent this node owns alone is emptied before it is released, so no destructor
    // below us has anything left to recurse into; the walk is a loop over an explicit stack.
    if (inputs.empty()) return;
    std::vector<std::shared_ptr<Node>> stack = std::move(inputs);
    inputs.clear();
    backward = nullptr;  // drops the Vars the rule captured; `stack` still holds those nodes
    while (!stack.empty()) {
        std::shared_ptr<Node> n = std::move(stack.back());
        stack.pop_back();
        if (n && n.use_count() == 1) {
            for (auto& in : n->inputs) stack.push_back(std::move(in));
            n->inputs.clear();
            n->backward = nullptr;
        }
    }
}

// ------------------------------------------------------------------------------------ GradSink

bool GradSink::needs(std::size_t i) const {
    return i < node_.inputs.size() && node_.inputs[i] && node_.inputs[i]->requires_grad;
}

namespace {
Node& sink_input(Node& node, std::size_t i) {
    if (i >= node.inputs.size() || !node.inputs[i])
        throw Error(std::string("backward of ") + node.op + ": input " + std::to_string(i) +
                    " does not exist or is undefined");
    return *node.inputs[i];
}
}  // namespace

// A rule may pass its output gradient straight through (add, reshape). The first input to
// take it adopts that storage; any other must not share it, and nothing accumulates into it
// in place while the rule may still read it.
void GradSink::add(std::size_t i, Tensor g) {
    Node& in = sink_input(node_, i);
    if (!in.requires_grad) return;
    if (g.shape() != in.value.shape() || g.dtype() != in.value.dtype())
        throw ShapeError(std::string("backward of ") + node_.op + ": gradient " + dtype_name(g.dtype()) + " " +
                         shape_str(g.shape()) + " for input " + std::to_string(i) + " of " +
                         dtype_name(in.value.dtype()) + " " + shape_str(in.value.shape()));
    const bool is_out_grad = g.same_storage(node_.grad);
    if (!in.grad.defined()) {
        if (is_out_grad) {
            for (const auto& other : node_.inputs)
                if (other && other.get() != &in && other->grad.same_storage(node_.grad)) {
                    g = g.clone();
                    break;
                }
        }
        in.grad = std::move(g);
    } else if (in.grad.same_storage(node_.grad)) {
        in.grad = kern::add(in.grad, g);
    } else {
        kern::add_inplace(in.grad, g);
    }
}

Tensor& GradSink::buffer(std::size_t i) {
    Node& in = sink_input(node_, i);
    if (!in.grad.defined())
        in.grad = Tensor::zeros(in.value.shape(), in.value.dtype());
    else if (in.grad.same_storage(node_.grad))
        in.grad = in.grad.clone();
    return in.grad;
}

// ------------------------------------------------------------------------------------ Var

Var::Var(Tensor value, bool requires_grad) : node_(std::make_shared<Node>()) {
    node_->value = std::move(value);
    node_->requires_grad = requires_grad;
}

const Tensor& Var::value() const { return node_of(node_, "Var::value").value; }
Tensor& Var::mutable_value() { return node_of(node_, "Var::mutable_value").value; }
const Tensor& Var::grad() const { return node_of(node_, "Var::grad").grad; }
Tensor& Var::mutable_grad() { return node_of(node_, "Var::mutable_grad").grad; }

void Var::zero_grad() {
    if (node_) node_->grad = Tensor();
}

void Var::backward() const {
    if (!node_) undefined_var("Var::backward");
    if (node_->value.numel() != 1)
        throw ShapeError("backward(): output " + shape_str(node_->value.shape()) +
                         " is not a single element; pass an output gradient");
    backward(Tensor::full(node_->value.shape(), 1.0, node_->value.dtype()));
}

void Var::backward(const Tensor& grad_out) const { run_backward(grad_out, nullptr); }

void Var::backward(const LeafGradReady& ready) const {
    if (!node_) undefined_var("Var::backward");
    if (node_->value.numel() != 1)
        throw ShapeError("backward(): output " + shape_str(node_->value.shape()) +
                         " is not a single element; pass an output gradient");
    run_backward(Tensor::full(node_->value.shape(), 1.0, node_->value.dtype()), &ready);
}

void Var::run_backward(const Tensor& grad_out, const LeafGradReady* ready) const {
    if (!node_) undefined_var("Var::backward");
    if (!node_->requires_grad)
        throw Error(std::string("backward(): the output of '") + node_->op +
                    "' does not require a gradient (no input requires one, or it was built under "
                    "NoGradGuard)");
    if (grad_out.shape() != node_->value.shape())
        throw ShapeError("backward(): output gradient " + shape_str(grad_out.shape()) + " for output " +
                         shape_str(node_->value.shape()));
    // A private copy: the seed may be adopted and later accumulated into.
    Tensor seed = grad_out.dtype() == node_->value.dtype() ? grad_out.clone() : grad_out.to(node_->value.dtype());

    // Iterative depth-first search; `order` is a post-order, so reversed it is topological.
    std::vector<Node*> order;
    NodeSet seen;
    std::vector<std::pair<Node*, std::size_t>> stack;
    stack.emplace_back(node_.get(), 0);
    seen.insert(node_.get());
    // With `ready`: how many edges from the pass's ops still lead into each leaf; a leaf is
    // complete when the last of them has run (or been skipped).
    std::unordered_map<Node*, std::size_t> pending;
    while (!stack.empty()) {
        auto& [n, next] = stack.back();
        if (next < n->inputs.size()) {
            Node* in = n->inputs[next++].get();
            if (ready && in && in->requires_grad && in->inputs.empty()) ++pending[in];
            if (in && in->requires_grad && seen.insert(in)) stack.emplace_back(in, 0);
        } else {
            order.push_back(n);
            stack.pop_back();
        }
    }

    if (node_->grad.defined())
        kern::add_inplace(node_->grad, seed);
    else
        node_->grad = std::move(seed);

    NoGradGuard no_grad;  // rules are plain kernels; a rule that uses Var ops builds no graph
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
        Node* n = *it;
        if (n->backward && n->grad.defined()) {
            GradSink sink(*n);
            if (OpProfile* prof = op_profile()) {
                const auto t0 = std::chrono::steady_clock::now();
                n->backward(n->grad, n->value, sink);
                profile_detail::add_backward(*prof, n->op, t0);
            } else {
                n->backward(n->grad, n->value, sink);
            }
            n->grad = Tensor();  // intermediate gradients are not kept
        }
        if (!ready) continue;
        for (const auto& in : n->inputs) {
            if (!in || !in->requires_grad || !in->inputs.empty()) continue;
            auto c = pending.find(in.get());
            if (c != pending.end() && --c->second == 0) (*ready)(*in);
        }
    }
    if (ready && node_->inputs.empty()) (*ready)(*node_);  // the output is itself a leaf
}

// ------------------------------------------------------------------------------------ graph

bool grad_enabled() { return t_grad_enabled; }

NoGradGuard::NoGradGuard() : prev_(t_grad_enabled) { t_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { t_grad_enabled = prev_; }

Var make_op(const char* name, Tensor value, std::vector<Var> inputs, BackwardFn backward) {
    if (OpProfile* prof = op_profile()) profile_detail::add_forward(*prof, name);
    bool record = false;
    if (t_grad_enabled)
        for (const auto& v : inputs) record = record || v.requires_grad();
    Var out(std::move(value), record);
    if (!record) return out;
    Node& n = *out.node();
    n.op = name;
    n.inputs.reserve(inputs.size());
    for (auto& v : inputs) n.inputs.push_back(v.node());
    n.backward = std::move(backward);
    return out;
}

}  // namespace flowlab
