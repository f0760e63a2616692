// Reverse-mode automatic differentiation over a dynamic graph.
//
// A Var is a shared handle on a node that holds a value, (lazily) a gradient, its parents and
// the rule that pushes its gradient to them. Ops record a node only when gradients are enabled
// (no NoGradGuard alive) and some input requires a gradient, so evaluation and sampling build
// no graph. `backward()` orders the graph with an iterative depth-first search (flows with
// thousands of ops are normal, recursion would overflow the stack).
//
// Writing a fused op with a hand-written backward (the way hot paths get fast):
//
//   // y = x * exp(s) + t, elementwise, with dy/dx, dy/ds, dy/dt by hand.
//   Var affine(const Var& x, const Var& s, const Var& t) {
//       Tensor y = Tensor::empty(x.shape());
//       ... compute y from x.value(), s.value(), t.value() ...
//       return make_op("affine", std::move(y), {x, s, t},
//           [x, s, t](const Tensor& gy, const Tensor& y, GradSink& g) {
//               if (g.needs(0)) g.add(0, gy * exp(s));   // (pseudo-code: fill a new Tensor)
//               if (g.needs(1)) g.add(1, gy * (y - t));
//               if (g.needs(2)) g.add(2, gy);
//           });
//   }
//
// The backward rule receives the output gradient, the output value, and a sink; `g.add(i, t)`
// accumulates t (same shape as input i) into input i's gradient. The rule must capture what it
// needs (Vars or Tensors) by value.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "flowlab/tensor.hpp"

namespace flowlab {

struct Node;

class GradSink {
public:
    explicit GradSink(Node& node) : node_(node) {}
    // Whether input i needs a gradient.
    bool needs(std::size_t i) const;
    // Accumulate g (shape of input i) into input i's gradient. The sink takes ownership of g's
    // storage when input i has no gradient yet, so pass a fresh tensor, not a shared one.
    void add(std::size_t i, Tensor g);
    // The gradient buffer of input i, zero-filled on first use, for kernels that accumulate in
    // place (e.g. a GEMM with beta = 1).
    Tensor& buffer(std::size_t i);

private:
    Node& node_;
};

using BackwardFn = std::function<void(const Tensor& grad_out, const Tensor& out, GradSink& sink)>;

// Called by backward(ready) for each leaf that requires a gradient (a parameter) as soon as its
// gradient is complete - every op that reads it has run its rule - while the rest of the pass
// goes on. Data-parallel training starts summing that gradient across processes from here. A
// leaf whose readers produced no gradient for it is reported too, its grad still undefined.
using LeafGradReady = std::function<void(Node& leaf)>;

struct Node {
    Tensor value;
    Tensor grad;
    bool requires_grad = false;
    const char* op = "leaf";
    std::vector<std::shared_ptr<Node>> inputs;
    BackwardFn backward;

    // Tears the graph above this node down iteratively: a default destructor would recurse once
    // per op and overflow the stack on long chains.
    ~Node();
};

class Var {
public:
    Var() = default;
    explicit Var(Tensor value, bool requires_grad = false);

    bool defined() const { return static_cast<bool>(node_); }
    const Tensor& value() const;
    Tensor& mutable_value();  // for optimizers and in-place initialisation; never inside a graph
    const Shape& shape() const { return value().shape(); }
    std::int64_t size(std::int64_t d) const { return value().size(d); }
    DType dtype() const { return value().dtype(); }
    bool requires_grad() const { return node_ && node_->requires_grad; }
    const char* op() const { return node_ ? node_->op : "undefined"; }

    // The accumulated gradient (undefined until backward reached this Var).
    const Tensor& grad() const;
    Tensor& mutable_grad();
    void zero_grad();  // drops the gradient buffer

    // Seeds d(this)/d(this) = 1 (this must hold one element) and runs the backward pass.
    void backward() const;
    // Seeds with an explicit output gradient of the same shape.
    void backward(const Tensor& grad_out) const;
    // Seeds with 1, like backward(), and reports each leaf as its gradient completes.
    void backward(const LeafGradReady& ready) const;

    // A leaf that shares the value but not the graph.
    Var detach() const { return Var(value(), false); }

    const std::shared_ptr<Node>& node() const { return node_; }

private:
    void run_backward(const Tensor& grad_out, const LeafGradReady* ready) const;
    std::shared_ptr<Node> node_;
};

// Whether ops record the graph on this thread.
bool grad_enabled();

class NoGradGuard {
public:
    NoGradGuard();
    ~NoGradGuard();
    NoGradGuard(const NoGradGuard&) = delete;
    NoGradGuard& operator=(const NoGradGuard&) = delete;

private:
    bool prev_;
};

// Records a new op: `value` is the output, `inputs` its differentiable inputs. When no input
// requires a gradient (or gradients are disabled) the result is a plain leaf and `backward` is
// dropped.
Var make_op(const char* name, Tensor value, std::vector<Var> inputs, BackwardFn backward);

}  // namespace flowlab
