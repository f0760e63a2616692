// Private to the residual plugin: the Lipschitz-constrained network g of a residual block, its
// spectral normalisation, its Jacobian products, and the log-determinant pieces the blocks share.
//
// g is a chain of linear maps (dense, or stride-1 "same" convolutions with odd kernels) with a
// 1-Lipschitz activation between them. Every weight is divided by max(1, sigma / coeff), sigma
// its operator norm estimated by power iteration, so Lip(g) <= coeff^layers < 1.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <flowlab/conv.hpp>
#include <flowlab/errors.hpp>
#include <flowlab/kernels.hpp>
#include <flowlab/module.hpp>
#include <flowlab/ops.hpp>
#include <flowlab/registry.hpp>
#include <flowlab/rng.hpp>

namespace flowlab::residual {

void register_blocks(Registry& reg);  // block.cpp: residual, conv_residual

enum class NetKind { dense, conv };
enum class Activation { elu, lipswish };

struct NetSpec {
    NetKind kind = NetKind::dense;
    Shape event;                        // the block's event shape (dense: flattened)
    std::vector<std::int64_t> hidden;   // hidden widths (dense) or channels (conv)
    std::vector<std::int64_t> kernels;  // conv only: one odd kernel size per layer
    Activation activation = Activation::lipswish;
    bool channels_last = true;          // conv only: hidden activations kept [B, H, W, C]
    double coeff = 0.97;                // bound on each layer's operator norm
    int train_iterations = 5;           // power iterations per training call
    int eval_iterations = 200;          // the most at build and outside training
    double tolerance = 1e-4;            // stop when the estimate of sigma moves less than this, relative
    std::string who;                    // for messages: "conv_residual [4, 14, 14]"
};

// The linear maps of g for one call, normalised, and what the Jacobian products need.
struct Weights {
    std::vector<Var> w, b;  // normalised weights (differentiable in the raw ones), biases
    std::vector<Var> beta;  // LipSwish slopes softplus(raw) > 0, one per activation
};

// The primal pass at x: g(x) and the activations' derivatives, sigma'(h_i), one per activation
// (in the layer's output layout), which define the Jacobian J = W_m D_{m-1} ... D_1 W_1 at x.
struct Primal {
    Var out;  // [B, event...]
    std::vector<Var> deriv;
};

// The layer geometry that products with J^T need after the forward pass (captured by value in
// backward rules, which may outlive nothing but must not reach into the module).
struct LayerGeom {
    std::int64_t pad = 0;
    ConvLayout in_layout = ConvLayout::nchw, out_layout = ConvLayout::nchw;
};

// J at one point, as values: enough to apply J^T without the module (the fixed-point adjoint).
struct Linearization {
    NetKind kind = NetKind::dense;
    Shape event;
    std::vector<LayerGeom> geom;
    std::vector<Tensor> w;      // normalised weights (dense) or their adjoint kernels (conv)
    std::vector<Tensor> deriv;  // sigma'(h_i) (values)
    // J^T g for g [N, event...]: values only.
    Tensor vjp(const Tensor& g) const;
};

class LipschitzNet final : public Module {
public:
    LipschitzNet(NetSpec spec, Rng& rng);

    // The normalised weights for one call. In training mode with gradients on (a training step)
    // the power iteration runs `train_iterations` steps from the stored vectors and stores the
    // result; otherwise it runs up to `eval_iterations`, until converged, on copies, so
    // evaluation, sampling and the trainer's layer checks change no state.
    Weights weights();
    // g(x) for x [N, event...]; `derivs` also keeps sigma'(h_i) (the Jacobian's factors).
    Primal primal(const Var& x, const Weights& w, bool derivs = true) const;
    // J t for tangents t [B * k, event...], k per sample (sample-major), at the primal's point.
    Var jvp(const Var& t, std::int64_t k, const Weights& w, const Primal& p) const;
    Linearization linearization(const Weights& w, const Primal& p) const;

    const NetSpec& spec() const { return spec_; }
    std::size_t num_layers() const { return layers_.size(); }

private:
    struct Layer {
        Var weight, bias;
        Tensor u, v;  // buffers: unit vectors in the map's output and input space
        LayerGeom geom;
    };
    Var apply(const Var& a, const Var& w, const Var& b, std::size_t i) const;
    // Power iteration on layer i's weight value from (u, v), in place; returns the iterations
    // run. `building` is the layer while the constructor has not stored it yet.
    int power_iterate(std::size_t i, const Tensor& w, Tensor& u, Tensor& v, int iterations, bool until_converged,
                      const Layer* building = nullptr) const;

    NetSpec spec_;
    std::int64_t dim_ = 0;  // values per sample
    std::vector<Layer> layers_;
    std::vector<Var> beta_raw_;
};

// The flipped, channel-transposed kernel: a stride-1 "same" convolution with it is the adjoint
// (backward data) of the convolution with w, for odd kernels.
Tensor adjoint_kernel(const Tensor& w);

// An activation's value and, when asked, its derivative sigma'(h), as fused ops whose backward
// rules carry the second derivative (activation.cpp). beta is LipSwish's slope, one value.
struct Activated {
    Var a, d;
};
Activated lipswish(const Var& h, const Var& beta, bool derivative);
Activated elu_activation(const Var& h, bool derivative);

// log|det A| per matrix for A [B, D, D], by LU with partial pivoting in double; the backward is
// g A^-T. The exact log-det mode's last step.
Var log_abs_det(const Var& a);

// max |t| over all elements (0 for an empty tensor).
double max_abs(const Tensor& t);

}  // namespace flowlab::residual
