// MADE (Germain et al. 2015): a masked MLP whose output block for input i depends only on the
// inputs before i in a chosen order.
//
// Degrees: input i has degree deg(i) in 1..D (natural: i+1, reverse: D-i, random: a seeded
// permutation); unit k of every hidden layer has degree (k mod (D-1)) + 1; output unit
// p*D + i (block p, input i: MAF's mu block then alpha block) has the degree of input i.
// A weight is kept where deg(out unit) >= deg(in unit) between hidden layers and
// deg(out) > deg(in) into the output layer, so output i sees only inputs of lower degree.
// A context (conditional flows) enters the first layer as an extra, unmasked input block.
//
// The masks are never stored: an op keeps W projected onto W*M (a read-only scan once the
// weights are masked), and its backward masks the weight gradient in place. The layers run
// through the core's block_sparse_linear on the masks' block structure: with degrees sorted in
// runs (natural or reverse order; hidden units cycle through 1..D-1), most 128-column blocks see
// one or two runs of the previous layer's units, and the GEMMs skip the rest (for W2's MADEs
// they do 66 % of the dense work). A random order leaves no such structure: the layers run dense.
//
// The slow direction of an autoregressive layer solves u = MADE(a), a_i = g^-1(b_i; u_i) for a.
// `made_solve` does it incrementally: it walks the degrees 1..D once and, after fixing input
// degree d, evaluates exactly the hidden units and output rows whose inputs are now all known
// (each weight is used once, so the whole solve costs about one forward pass at any depth),
// instead of D full passes. `made_solve_naive` does the D passes, for tests and benchmarks.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <flowlab/module.hpp>
#include <flowlab/params.hpp>
#include <flowlab/ops.hpp>
#include <flowlab/rng.hpp>

namespace flowlab::density {

struct MadeConfig {
    std::int64_t dim = 0;                 // D
    std::int64_t context = 0;             // flat context features (0 = none)
    std::vector<std::int64_t> hidden;     // widths of the hidden layers (may be empty)
    std::int64_t params_per_dim = 1;      // P: the output has P*D units
    std::string order = "natural";        // natural | reverse | random
    std::uint64_t order_seed = 0;         // for random
    std::string activation = "relu";      // relu | tanh
    bool zero_init_last = true;
};

class Made : public Module {
public:
    Made(const MadeConfig& cfg, Rng& init);

    // x [B, D] (and context [B, C] when built with one) -> [B, P*D].
    Var operator()(const Var& x, const Var& context) const;

    std::int64_t dim() const { return cfg_.dim; }
    std::int64_t params_per_dim() const { return cfg_.params_per_dim; }
    std::int64_t context_dim() const { return cfg_.context; }
    const MadeConfig& config() const { return cfg_; }
    // Number of weight layers (hidden layers + the output layer).
    std::size_t num_layers() const { return weights_.size(); }
    // Degrees of the units of level l: 0 = inputs, 1..L = hidden layers, L+1 = outputs.
    const std::vector<std::int32_t>& degrees(std::size_t level) const { return *degrees_[level]; }
    const Var& weight(std::size_t l) const { return weights_[l]; }  // [in, out]
    const Var& bias(std::size_t l) const { return biases_[l]; }
    const Var& context_weight() const { return ctx_weight_; }      // [C, first layer's out]
    bool tanh_activation() const { return tanh_; }

private:
    MadeConfig cfg_;
    bool tanh_ = false;
    std::vector<std::shared_ptr<const std::vector<std::int32_t>>> degrees_;
    // Where each layer's masked weight can be nonzero, so that its GEMMs skip the zero blocks.
    std::vector<std::shared_ptr<const WeightSupport>> supports_;
    std::vector<Var> weights_, biases_;
    Var ctx_weight_;
};

// The parameters every MADE-based type shares (hidden, order, seed, activation).
Schema made_schema(std::vector<std::int64_t> hidden_default);

// One level's unit degrees, shared between the network and its masked-weight ops (made.cpp) and
// the solvers (made_solver.cpp).
using DegreeVec = std::vector<std::int32_t>;
using DegreePtr = std::shared_ptr<const DegreeVec>;

// W * M from the degree vectors of its input and output units, as one op whose backward masks
// the gradient. strict: keep deg_out > deg_in (output layer), else deg_out >= deg_in.
Var masked_weight(const Var& w, const std::shared_ptr<const std::vector<std::int32_t>>& deg_in,
                  const std::shared_ptr<const std::vector<std::int32_t>>& deg_out, bool strict);

// The element-wise transformer of an autoregressive layer, seen from the solver. For one
// element: the "fast" map b = g(a; u) (u: the P outputs of MADE for that input, read at
// u[p * stride]) and its inverse.
template <class T>
struct ElementTransform {
    int params = 0;
    // a = g^-1(b; u); returns log|da/db|.
    std::function<T(T b, const T* u, std::int64_t stride, T& a)> invert;
    // dg/da at a (returned), and dg/du accumulated into du[p * dstride].
    std::function<T(T a, const T* u, std::int64_t stride, T* du, std::int64_t dstride)> partials;
};

// Solves a (the MADE input side) from b: returns a [B, D] and writes sum_i log|da_i/db_i| to
// log_det ([B]). Works without a graph (values only). context: [B, C] or undefined.
template <class T>
Tensor made_solve(const Made& made, const Tensor& b, const Tensor& context, const ElementTransform<T>& tr,
                  Tensor& log_det);
// The same result by D full passes of the network (the textbook inversion).
template <class T>
Tensor made_solve_naive(const Made& made, const Tensor& b, const Tensor& context, const ElementTransform<T>& tr,
                        Tensor& log_det);

// The adjoint of the solve at its solution a: lambda = (dF/da)^-T g, where F(a) = g(a; MADE(a))
// is the fast map. Costs about one more pass; used by the slow direction's backward.
template <class T>
Tensor made_solve_adjoint(const Made& made, const Tensor& a, const Tensor& context, const ElementTransform<T>& tr,
                          const Tensor& g);

}  // namespace flowlab::density
