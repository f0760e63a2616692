// Internal to the convolution ops. conv.cpp checks a call and dispatches it to one of three
// paths: conv_gemm.cpp (thin and 1x1 "same" convolutions as one oneDNN GEMM each),
// conv_onednn.cpp (oneDNN's convolution primitives) and conv_loops.cpp (plain loops: f64,
// the reference, the direct small-channel 1x1 convolution).
#pragma once

#include <cstdint>

#include "flowlab/conv.hpp"
#include "ops/ops_internal.hpp"

namespace flowlab::conv_detail {

struct Geometry {
    std::int64_t b, c, h, w;
};

// Element offset of (n, c, y, x) in a tensor of geometry g stored in layout l.
inline std::int64_t offset(ConvLayout l, const Geometry& g, std::int64_t n, std::int64_t c, std::int64_t y,
                           std::int64_t x) {
    switch (l) {
        case ConvLayout::nhwc: return ((n * g.h + y) * g.w + x) * g.c + c;
        case ConvLayout::blocked8: return (((n * (g.c / 8) + c / 8) * g.h + y) * g.w + x) * 8 + (c % 8);
        case ConvLayout::nchw: break;
    }
    return ((n * g.c + c) * g.h + y) * g.w + x;
}

const char* layout_name(ConvLayout l);

struct ConvKey {
    std::int64_t b, c, h, w, o, kh, kw, stride, pad;
    ConvLayout li, lo;
    bool relu, bias;
    bool operator==(const ConvKey&) const = default;
};

struct ConvCall {
    ConvKey key;
    Geometry gi, go;
    std::int64_t kh, kw;
    // An uninitialised output of this call in `layout`.
    Tensor new_output(ConvLayout layout, DType dt) const {
        return Tensor::empty(layout_shape({go.b, go.c, go.h, go.w}, layout), dt);
    }
};

// Checks shapes, layouts and options; the ShapeError names both shapes.
ConvCall check_conv(const Tensor& x, const Tensor& w, const Tensor* b, const Conv2dOptions& opt);

// Calls fn(xi, wi) for each tap of output pixel (i, j) of image n and output channel o that
// lands inside the input (padding adds nothing): xi indexes x, wi the [o, c, kh, kw] weights.
// Input channel, then kernel row, then column: the loops below sum in this order.
template <class Fn>
void for_each_tap(const Geometry& gi, ConvLayout li, std::int64_t n, std::int64_t o, std::int64_t i, std::int64_t j,
                  std::int64_t kh, std::int64_t kw, std::int64_t s, std::int64_t p, Fn&& fn) {
    for (std::int64_t c = 0; c < gi.c; ++c)
        for (std::int64_t a = 0; a < kh; ++a) {
            const std::int64_t yy = i * s - p + a;
            if (yy < 0 || yy >= gi.h) continue;
            for (std::int64_t e = 0; e < kw; ++e) {
                const std::int64_t xx = j * s - p + e;
                if (xx < 0 || xx >= gi.w) continue;
                fn(offset(li, gi, n, c, yy, xx), ((o * gi.c + c) * kh + a) * kw + e);
            }
        }
}

// y = conv(x, w) + b, optionally relu'd, for any layout pair; T = double (checks) or float.
template <class T>
void conv_fwd_loop(const T* x, const T* w, const T* bias, T* y, const Geometry& gi, ConvLayout li,
                   const Geometry& go, ConvLayout lo, std::int64_t kh, std::int64_t kw, std::int64_t s,
                   std::int64_t p, bool relu) {
    for (std::int64_t n = 0; n < gi.b; ++n)
        for (std::int64_t o = 0; o < go.c; ++o)
            for (std::int64_t i = 0; i < go.h; ++i)
                for (std::int64_t j = 0; j < go.w; ++j) {
                    T acc = bias ? bias[o] : T(0);
                    for_each_tap(gi, li, n, o, i, j, kh, kw, s, p,
                                 [&](std::int64_t xi, std::int64_t wi) { acc += x[xi] * w[wi]; });
                    y[offset(lo, go, n, o, i, j)] = relu && acc < T(0) ? T(0) : acc;
                }
}

// Accumulates the gradients of conv_fwd_loop for the (already relu-masked) output gradient g.
template <class T>
void conv_bwd_loop(const T* x, const T* w, const T* g, T* gx, T* gw, T* gb, const Geometry& gi, ConvLayout li,
                   const Geometry& go, ConvLayout lo, std::int64_t kh, std::int64_t kw, std::int64_t s,
                   std::int64_t p) {
    for (std::int64_t n = 0; n < gi.b; ++n)
        for (std::int64_t o = 0; o < go.c; ++o)
            for (std::int64_t i = 0; i < go.h; ++i)
                for (std::int64_t j = 0; j < go.w; ++j) {
                    const T gv = g[offset(lo, go, n, o, i, j)];
                    if (gb) gb[o] += gv;
                    for_each_tap(gi, li, n, o, i, j, kh, kw, s, p, [&](std::int64_t xi, std::int64_t wi) {
                        if (gx) gx[xi] += gv * w[wi];
                        if (gw) gw[wi] += gv * x[xi];
                    });
                }
}

// g * (y > 0): the relu part of a fused conv's backward.
template <class T>
Tensor relu_mask(const Tensor& gy, const Tensor& y) {
    return detail::map2<T>(gy, y, [](T g, T v) { return v > T(0) ? g : T(0); });
}

// One channels-last row of C values: out = g masked by y > 0 (when relu), acc += out (out may
// be g). `omp simd`: -O2 does not vectorise loops of unknown length, and a branchy scalar loop
// here (random signs) cost a fifth of a W3 step.
inline void mask_row(const float* g, const float* y, float* out, float* acc, std::int64_t C, bool relu) {
    if (relu) {
#pragma omp simd
        for (std::int64_t c = 0; c < C; ++c) {
            const float v = y[c] > 0.0f ? g[c] : 0.0f;
            out[c] = v;
            acc[c] += v;
        }
    } else {
#pragma omp simd
        for (std::int64_t c = 0; c < C; ++c) acc[c] += g[c];
    }
}

// Which single-GEMM form a call has, if any (see conv_gemm.cpp).
enum class GemmConv { none, pointwise, thin_in, thin_out };
GemmConv gemm_conv_kind(const ConvCall& c, const Conv2dOptions& opt);

// The thin side's expand (im2col) and its adjoint on one thread, over all g.b images of `img`
// (conv_gemm.cpp explains them): cols [g.b g.h g.w, kh kw g.c], s = +1 or -1 the shift's
// direction; reduce adds the bias and applies the ReLU when asked.
void expand_images(const float* img, float* cols, ConvLayout l, const Geometry& g, std::int64_t kh, std::int64_t kw,
                   std::int64_t p, int s);
void reduce_images(const float* cols, const float* bias, float* img, ConvLayout l, const Geometry& g,
                   std::int64_t kh, std::int64_t kw, std::int64_t p, int s, bool relu);

// W [O, C, kh, kw] as the thin-input GEMM's W'[(k, c), o] or the thin-output GEMM's
// W''[c, (k, o)], and back.
Tensor pack_weights(const Tensor& w, bool thin_in);
Tensor unpack_weights(const Tensor& packed, const Shape& wshape, bool thin_in);

Var conv2d_gemm(const Var& x, const Var& w, const Var& b, const Conv2dOptions& opt, const ConvCall& call,
                GemmConv kind);
Var conv2d_onednn(const Var& x, const Var& w, const Var& b, const Conv2dOptions& opt, const ConvCall& call);
Var conv2d_loops(const Var& x, const Var& w, const Var& b, const Conv2dOptions& opt, const ConvCall& call);

}  // namespace flowlab::conv_detail
