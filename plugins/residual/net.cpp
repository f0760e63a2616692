// The Lipschitz network g of a residual block: spectral normalisation by power iteration, the
// primal pass, and products with its Jacobian (J t by forward-mode propagation through the
// layers, J^T g by the reverse sweep).
//
// Forward-mode J t is written with ordinary differentiable ops: t_{i+1} = sigma'(h_i) * (W_i t_i).
// Its graph therefore carries second derivatives (through sigma'(h(x)) and W), which is what the
// log-det's gradient needs, without a second-order autodiff.
#include <cmath>
#include <utility>

#include "residual.hpp"

namespace flowlab::residual {

namespace {

// t / |t|; false (t untouched) when t is zero: a zero map keeps its previous vectors instead
// of turning them into NaN.
bool normalize(Tensor& t) {
    const double n = std::sqrt(kern::sq_norm(t));
    if (!(n > 1e-30) || !std::isfinite(n)) return false;
    kern::scale_inplace(t, 1.0 / n);
    return true;
}

// The slope LipSwish starts with: softplus(raw) = 1.
const double kBetaRawInit = std::log(std::exp(1.0) - 1.0);

// h * d with d [B, ...] and h [B * k, ...] (k tangents per sample, sample-major).
Var scale_tangents(const Var& h, const Var& d, std::int64_t k) {
    if (k == 1) return h * d;
    const std::int64_t B = d.size(0), per = d.value().numel() / std::max<std::int64_t>(1, B);
    return reshape(reshape(h, {B, k, per}) * reshape(d, {B, 1, per}), h.shape());
}

}  // namespace

Tensor adjoint_kernel(const Tensor& w) {
    if (w.dim() != 4 || w.size(2) != w.size(3))
        throw ShapeError("adjoint_kernel: expected a square kernel [O, C, k, k], got " + shape_str(w.shape()));
    const std::int64_t O = w.size(0), C = w.size(1), k = w.size(2);
    Tensor t = Tensor::empty({C, O, k, k}, w.dtype());
    dispatch(w.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* src = w.data<T>();
        T* dst = t.data<T>();
        for (std::int64_t o = 0; o < O; ++o)
            for (std::int64_t c = 0; c < C; ++c)
                for (std::int64_t i = 0; i < k; ++i)
                    for (std::int64_t j = 0; j < k; ++j)
                        dst[((c * O + o) * k + i) * k + j] = src[((o * C + c) * k + (k - 1 - i)) * k + (k - 1 - j)];
    });
    return t;
}

double max_abs(const Tensor& t) {
    double m = 0.0;
    dispatch(t.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* p = t.data<T>();
        for (std::int64_t i = 0; i < t.numel(); ++i) {
            const double a = std::fabs(static_cast<double>(p[i]));
            if (!(a <= m)) m = a;  // a NaN wins, so it is never hidden
        }
    });
    return m;
}

LipschitzNet::LipschitzNet(NetSpec spec, Rng& rng) : spec_(std::move(spec)) {
    const bool conv = spec_.kind == NetKind::conv;
    dim_ = numel(spec_.event);
    if (conv && spec_.event.size() != 3)
        throw ShapeError(spec_.who + ": needs an image event [C, H, W] (load the data with flatten = false)");
    std::vector<std::int64_t> widths = {conv ? spec_.event[0] : dim_};
    widths.insert(widths.end(), spec_.hidden.begin(), spec_.hidden.end());
    widths.push_back(widths.front());
    const std::size_t m = widths.size() - 1;
    if (conv && spec_.kernels.size() != m)
        throw ConfigError(spec_.who + ": " + std::to_string(spec_.kernels.size()) + " kernel sizes for " +
                          std::to_string(m) + " convolutions");
    for (std::size_t l = 0; l < m; ++l) {
        const std::int64_t in = widths[l], out = widths[l + 1];
        Layer L;
        Tensor w, b = Tensor::zeros({out});
        Shape u_shape{out}, v_shape{in};
        if (conv) {
            const std::int64_t k = spec_.kernels[l];
            w = Tensor::zeros({out, in, k, k});
            init_fan_in_uniform(w, b, in * k * k, false, rng);
            L.geom.pad = k / 2;
            L.geom.in_layout = l == 0 || !spec_.channels_last ? ConvLayout::nchw : ConvLayout::nhwc;
            L.geom.out_layout = l + 1 == m || !spec_.channels_last ? ConvLayout::nchw : ConvLayout::nhwc;
            u_shape = {out, spec_.event[1], spec_.event[2]};
            v_shape = {in, spec_.event[1], spec_.event[2]};
        } else {
            w = Tensor::zeros({in, out});
            init_fan_in_uniform(w, b, in, false, rng);
        }
        const std::string name = (conv ? "conv" : "linear") + std::to_string(l);
        L.weight = add_parameter(name + ".weight", std::move(w));
        L.bias = add_parameter(name + ".bias", std::move(b));
        Tensor u = Tensor::empty(u_shape), v = Tensor::empty(v_shape);
        rng.fill_normal(u);
        rng.fill_normal(v);
        normalize(u);
        normalize(v);
        // Converged at build, so that the first step starts from a tight estimate.
        power_iterate(layers_.size(), L.weight.value(), u, v, spec_.eval_iterations, true, &L);
        L.u = add_buffer(name + ".u", u);
        L.v = add_buffer(name + ".v", v);
        layers_.push_back(std::move(L));
    }
    if (spec_.activation == Activation::lipswish)
        for (std::size_t l = 0; l + 1 < m; ++l)
            beta_raw_.push_back(add_parameter("act" + std::to_string(l) + ".beta", Tensor::full({1}, kBetaRawInit)));
}

int LipschitzNet::power_iterate(std::size_t i, const Tensor& w, Tensor& u, Tensor& v, int iterations,
                                bool until_converged, const Layer* building) const {
    NoGradGuard no_grad;
    const Layer& L = building ? *building : layers_[i];
    const bool conv = spec_.kind == NetKind::conv;
    Tensor wt = conv ? adjoint_kernel(w) : Tensor();
    // A v and A^T u: the layer's linear map (without bias) on one input, and its adjoint.
    auto map = [&](const Tensor& x) -> Tensor {
        if (!conv) return kern::matmul(x.reshape({1, x.numel()}), w).reshape({w.size(1)});
        const Shape& s = x.shape();
        return conv2d(Var(x.reshape({1, s[0], s[1], s[2]})), Var(w), Var(), 1, L.geom.pad).value().reshape(
            {w.size(0), s[1], s[2]});
    };
    auto adjoint = [&](const Tensor& y) -> Tensor {
        if (!conv) return kern::matmul(y.reshape({1, y.numel()}), w, false, true).reshape({w.size(0)});
        const Shape& s = y.shape();
        return conv2d(Var(y.reshape({1, s[0], s[1], s[2]})), Var(wt), Var(), 1, L.geom.pad).value().reshape(
            {w.size(1), s[1], s[2]});
    };
    // ||A v|| rises towards sigma as the iteration converges; `until_converged` stops once it
    // moves by less than `tolerance` relative (after two iterations at least, to have a change to
    // compare). A convolution's spectrum is nearly degenerate at the top: the vectors may keep
    // turning inside it while sigma, all the normalisation uses, has settled. Training runs its
    // fixed count instead: a slow creep of the estimate is not convergence, and the weights move
    // between steps, so the stored vectors are always a little behind.
    double sigma_prev = -1.0;
    for (int it = 0; it < iterations; ++it) {
        Tensor v_new = adjoint(u);
        if (!normalize(v_new)) return it;
        Tensor u_new = map(v_new);
        const double sigma = std::sqrt(kern::sq_norm(u_new));
        if (!normalize(u_new)) return it;
        u = std::move(u_new);
        v = std::move(v_new);
        if (until_converged && sigma_prev >= 0.0 && std::fabs(sigma - sigma_prev) <= spec_.tolerance * sigma)
            return it + 1;
        sigma_prev = sigma;
    }
    return iterations;
}

Weights LipschitzNet::weights() {
    Weights out;
    const bool update = training() && grad_enabled();
    const bool conv = spec_.kind == NetKind::conv;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
        Layer& L = layers_[i];
        const Tensor& wv = L.weight.value();
        Tensor u = L.u.to(wv.dtype()).clone(), v = L.v.to(wv.dtype()).clone();
        power_iterate(i, wv, u, v, update ? spec_.train_iterations : spec_.eval_iterations, !update);
        if (update) {
            L.u.copy_from(u.to(L.u.dtype()));
            L.v.copy_from(v.to(L.v.dtype()));
        }
        // sigma = <u, A v> with u and v constants: its gradient in W is the outer product of the
        // singular vectors, the derivative of the largest singular value.
        Var sigma;
        if (conv) {
            const Shape& s = v.shape();
            Var av = conv2d(Var(v.reshape({1, s[0], s[1], s[2]})), L.weight, Var(), 1, L.geom.pad);
            sigma = sum_all(av * Var(u.reshape({1, u.size(0), s[1], s[2]})));
        } else {
            sigma = sum_all(L.weight * Var(kern::matmul(v.reshape({v.numel(), 1}), u.reshape({1, u.numel()}))));
        }
        // W / max(1, sigma / coeff): only a weight whose norm exceeds coeff is scaled down.
        Var factor = relu(sigma * (1.0 / spec_.coeff) - 1.0) + 1.0;
        out.w.push_back(L.weight / factor);
        out.b.push_back(L.bias);
    }
    for (const Var& raw : beta_raw_) out.beta.push_back(softplus(raw));
    return out;
}

Var LipschitzNet::apply(const Var& a, const Var& w, const Var& b, std::size_t i) const {
    if (spec_.kind == NetKind::dense) return linear(a, w, b);
    const LayerGeom& g = layers_[i].geom;
    Conv2dOptions o;
    o.padding = g.pad;
    o.in_layout = g.in_layout;
    o.out_layout = g.out_layout;
    return conv2d(a, w, b, o);
}

Primal LipschitzNet::primal(const Var& x, const Weights& w, bool derivs) const {
    const bool dense = spec_.kind == NetKind::dense;
    Var a = dense ? reshape(x, {x.size(0), dim_}) : x;
    Primal p;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
        Var h = apply(a, w.w[i], w.b[i], i);
        if (i + 1 == layers_.size()) {
            p.out = dense ? reshape(h, x.shape()) : h;
            break;
        }
        Activated act = spec_.activation == Activation::elu ? elu_activation(h, derivs) : lipswish(h, w.beta[i], derivs);
        a = act.a;
        if (derivs) p.deriv.push_back(act.d);
    }
    return p;
}

Var LipschitzNet::jvp(const Var& t, std::int64_t k, const Weights& w, const Primal& p) const {
    const bool dense = spec_.kind == NetKind::dense;
    Var h = dense ? reshape(t, {t.size(0), dim_}) : t;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
        h = apply(h, w.w[i], Var(), i);
        if (i + 1 < layers_.size()) h = scale_tangents(h, p.deriv[i], k);
    }
    return dense ? reshape(h, t.shape()) : h;
}

Linearization LipschitzNet::linearization(const Weights& w, const Primal& p) const {
    Linearization lin;
    lin.kind = spec_.kind;
    lin.event = spec_.event;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
        lin.geom.push_back(layers_[i].geom);
        lin.w.push_back(spec_.kind == NetKind::conv ? adjoint_kernel(w.w[i].value()) : w.w[i].value());
    }
    for (const Var& d : p.deriv) lin.deriv.push_back(d.value());
    return lin;
}

Tensor Linearization::vjp(const Tensor& g) const {
    NoGradGuard no_grad;
    const bool dense = kind == NetKind::dense;
    const std::int64_t n = g.size(0);
    Var d(dense ? g.reshape({n, numel(event)}) : g);
    for (std::size_t i = w.size(); i-- > 0;) {
        if (dense) {
            d = matmul(d, Var(w[i]), false, true);  // (x W)^T: g W^T
        } else {
            Conv2dOptions o;
            o.padding = geom[i].pad;
            o.in_layout = geom[i].out_layout;  // the adjoint runs the layer backwards
            o.out_layout = geom[i].in_layout;
            d = conv2d(d, Var(w[i]), Var(), o);  // w holds the adjoint kernels
        }
        if (i > 0) d = d * Var(deriv[i - 1]);
    }
    return d.value().reshape(g.shape());
}

}  // namespace flowlab::residual
