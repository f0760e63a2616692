// Convolutions in plain loops: the f64 path of the numerical checks, kern::conv2d_reference,
// and the direct small-channel 1x1 convolution (conv1x1).
#include "ops/conv_internal.hpp"

namespace flowlab {

using detail::dispatch;

namespace conv_detail {

// Any layout pair, in plain loops: the f64 path of the numerical checks.
Var conv2d_loops(const Var& x, const Var& w, const Var& b, const Conv2dOptions& opt, const ConvCall& call) {
    const Tensor& X = x.value();
    const Tensor& W = w.value();
    const Tensor* B = b.defined() ? &b.value() : nullptr;
    Tensor y = call.new_output(opt.out_layout, X.dtype());
    conv_fwd_loop<double>(X.data<double>(), W.data<double>(), B ? B->data<double>() : nullptr, y.data<double>(),
                          call.gi, opt.in_layout, call.go, opt.out_layout, call.kh, call.kw, opt.stride, opt.padding,
                          opt.relu);
    std::vector<Var> inputs = {x, w};
    if (b.defined()) inputs.push_back(b);
    return make_op("conv2d", std::move(y), std::move(inputs),
                   [x, w, call, opt](const Tensor& gy, const Tensor& yv, GradSink& g) {
                       const Tensor gm = opt.relu ? relu_mask<double>(gy, yv) : gy;
                       Tensor gx, gw, gb;
                       if (g.needs(0)) gx = Tensor::zeros(x.shape(), DType::f64);
                       if (g.needs(1)) gw = Tensor::zeros(w.shape(), DType::f64);
                       if (call.key.bias && g.needs(2)) gb = Tensor::zeros({call.go.c}, DType::f64);
                       conv_bwd_loop<double>(x.value().data<double>(), w.value().data<double>(),
                                             gm.data<double>(), gx.defined() ? gx.data<double>() : nullptr,
                                             gw.defined() ? gw.data<double>() : nullptr,
                                             gb.defined() ? gb.data<double>() : nullptr, call.gi, opt.in_layout,
                                             call.go, opt.out_layout, call.kh, call.kw, opt.stride, opt.padding);
                       if (gx.defined()) g.add(0, std::move(gx));
                       if (gw.defined()) g.add(1, std::move(gw));
                       if (gb.defined()) g.add(2, std::move(gb));
                   });
}

}  // namespace conv_detail

using namespace conv_detail;

namespace kern {

Tensor conv2d_reference(const Tensor& x, const Tensor& w, const Tensor& b, std::int64_t stride, std::int64_t padding) {
    Conv2dOptions opt;
    opt.stride = stride;
    opt.padding = padding;
    const ConvCall call = check_conv(x, w, b.defined() ? &b : nullptr, opt);
    Tensor y = Tensor::empty({call.go.b, call.go.c, call.go.h, call.go.w}, x.dtype());
    dispatch(x.dtype(), [&](auto tag_) {
        using T = decltype(tag_);
        conv_fwd_loop<T>(x.data<T>(), w.data<T>(), b.defined() ? b.data<T>() : nullptr, y.data<T>(), call.gi,
                         ConvLayout::nchw, call.go, ConvLayout::nchw, call.kh, call.kw, stride, padding, false);
    });
    return y;
}

}  // namespace kern

// ---------------------------------------------------------------------------------- conv1x1

namespace {

// y[n, o, :] = sum_c w[o, c] x[n, c, :] for samples [n0, n1).
template <class T>
void mix_fwd(const T* x, const T* w, T* y, std::int64_t n0, std::int64_t n1, std::int64_t C, std::int64_t O,
             std::int64_t P) {
    for (std::int64_t n = n0; n < n1; ++n) {
        const T* xn = x + n * C * P;
        T* yn = y + n * O * P;
        for (std::int64_t o = 0; o < O; ++o) {
            T* yo = yn + o * P;
            const T w0 = w[o * C];
#pragma omp simd
            for (std::int64_t q = 0; q < P; ++q) yo[q] = w0 * xn[q];
            for (std::int64_t c = 1; c < C; ++c) {
                const T wc = w[o * C + c];
                const T* xc = xn + c * P;
#pragma omp simd
                for (std::int64_t q = 0; q < P; ++q) yo[q] += wc * xc[q];
            }
        }
    }
}

}  // namespace

Var conv1x1(const Var& x, const Var& w) {
    const Tensor& X = x.value();
    const Tensor& W = w.value();
    detail::check_dtypes("conv1x1", X, W);
    const bool w_ok = (W.dim() == 2) || (W.dim() == 4 && W.size(2) == 1 && W.size(3) == 1);
    if (X.dim() != 4 || !w_ok || W.size(1) != X.size(1))
        throw ShapeError("conv1x1: input " + shape_str(X.shape()) + " and weights " + shape_str(W.shape()) +
                         " do not fit (want x [B, C, H, W] and w [O, C] or [O, C, 1, 1])");
    const std::int64_t N = X.size(0), C = X.size(1), O = W.size(0), P = X.size(2) * X.size(3);
    Tensor y = Tensor::empty({N, O, X.size(2), X.size(3)}, X.dtype());
    dispatch(X.dtype(), [&](auto tag_) {
        using T = decltype(tag_);
        const T* xp = X.data<T>();
        const T* wp = W.data<T>();
        T* yp = y.data<T>();
        // A sample's work is its O P outputs of C multiply-adds each (counted as outputs only,
        // Glow's 64 images of 4 x 196 stayed on one thread).
        parallel_samples(N, O * P * C, [&](std::int64_t n0, std::int64_t n1) { mix_fwd<T>(xp, wp, yp, n0, n1, C, O, P); });
    });
    return make_op("conv1x1", std::move(y), {x, w}, [x, w, N, C, O, P](const Tensor& gy, const Tensor&, GradSink& g) {
        dispatch(gy.dtype(), [&](auto tag_) {
            using T = decltype(tag_);
            const T* gp = gy.data<T>();
            const T* wp = w.value().template data<T>();
            if (g.needs(0)) {
                // gx = w^T gy: the same mixing with the transposed matrix.
                std::vector<T> wt(static_cast<std::size_t>(O * C));
                for (std::int64_t o = 0; o < O; ++o)
                    for (std::int64_t c = 0; c < C; ++c) wt[static_cast<std::size_t>(c * O + o)] = wp[o * C + c];
                Tensor gx = Tensor::empty(x.shape(), gy.dtype());
                T* gxp = gx.template data<T>();
                parallel_samples(N, C * P * O, [&](std::int64_t n0, std::int64_t n1) {
                    mix_fwd<T>(gp, wt.data(), gxp, n0, n1, O, C, P);
                });
                g.add(0, std::move(gx));
            }
            if (g.needs(1)) {
                // gw[o, c] = sum over samples and pixels of gy[n, o, :] x[n, c, :], in double:
                // each entry over the samples in order, the entries side by side on the threads.
                const T* xp = x.value().template data<T>();
                Tensor gw = Tensor::empty(w.shape(), gy.dtype());
                T* gwp = gw.template data<T>();
                parallel_for(O * C, std::max<std::int64_t>(1, kElementwiseGrain / std::max<std::int64_t>(1, N * P)),
                             [&](std::int64_t i0, std::int64_t i1) {
                                 for (std::int64_t i = i0; i < i1; ++i) {
                                     const std::int64_t o = i / C, c = i % C;
                                     double acc = 0.0;
                                     for (std::int64_t n = 0; n < N; ++n) {
                                         const T* go = gp + (n * O + o) * P;
                                         const T* xc = xp + (n * C + c) * P;
                                         T s = T(0);
#pragma omp simd reduction(+ : s)
                                         for (std::int64_t q = 0; q < P; ++q) s += go[q] * xc[q];
                                         acc += static_cast<double>(s);
                                     }
                                     gwp[i] = static_cast<T>(acc);
                                 }
                             });
                g.add(1, std::move(gw));
            }
        });
    });
}

}  // namespace flowlab
