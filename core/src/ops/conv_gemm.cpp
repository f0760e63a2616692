// Convolutions that are one GEMM each (see the comment below), through the shared oneDNN
// context's cached matmul primitives.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "backend/onednn.hpp"
#include "ops/conv_internal.hpp"

namespace flowlab::conv_detail {

namespace {

// ---------------------------------------------------------------------------------- GEMM convs
//
// oneDNN 2.6's AVX2 convolutions run the thin convolutions of a coupling network (2 -> 128 and
// 128 -> 4 channels, 3x3) at a few GFLOP/s, and its 1x1 kernels lose to its own GEMM. With the
// wide side channels-last, every such convolution is one GEMM over rows = pixels:
//   1x1:          Y[M, O] = X[M, C] W^T
//   thin input:   Y = expand(X) W',    expand(X)[q, (k, c)] = X[q + (k - p), c]  (im2col of the
//                 thin side only: kh kw C columns)
//   thin output:  T = X W'', Y[q, o] = sum_k T[q - (k - p), (k, o)]  (a shifted sum over the
//                 kh kw O columns)
// with bias and ReLU fused into the GEMM (or into the shifted sum). The backward passes are
// GEMMs and the adjoint expand/reduce of the same thin tensors. Checked again on an AVX-512
// machine, where oneDNN picks its brgemm convolutions: W3 still ran 20% slower through them
// (1 thread, 226 against 285 samples/s).

// C[m, n] (+)= op(A) op(B) (+ bias[n]) (relu), row-major f32; op = transpose when ta / tb.
void mm(const float* a, bool ta, const float* b, bool tb, float* c, std::int64_t m, std::int64_t n, std::int64_t k,
        const float* bias = nullptr, bool relu = false, bool accumulate = false) {
    const backend::Gemm g{.m = m, .n = n, .k = k, .trans_a = ta, .trans_b = tb, .bias = bias != nullptr,
                          .relu = relu, .beta = accumulate ? 1.0f : 0.0f};
    backend::sgemm(g, a, b, c, bias);
}

// The thin side's expand (im2col) and its adjoint. `img` is [B, C, H, W] in layout l (nchw or
// nhwc); cols is [B H W, kh kw C] with column (ki kw + kj) C + c; s = +1 or -1 picks the
// direction of the shift.
//   expand: cols[q, (k, c)] = img[q + s (k - p), c]   (0 outside)
//   reduce: img[q, c] = bias[c] + sum_k cols[q - s (k - p), (k, c)]
template <ConvLayout L>
inline std::int64_t img_off(const Geometry& g, std::int64_t n, std::int64_t c, std::int64_t y, std::int64_t x) {
    if constexpr (L == ConvLayout::nhwc) return ((n * g.h + y) * g.w + x) * g.c + c;
    return ((n * g.c + c) * g.h + y) * g.w + x;
}

// The thin side has 1-8 channels: with the count a compile-time constant (CC > 0; 0 = the
// run-time g.c) the per-tap copies and sums unroll, and the columns in which every tap is
// inside the image (all but p at each edge, "same" convolutions have p = (kw - 1) / 2) run
// without bounds checks. Generic per-tap loops cost W3 8 % of its step.
template <ConvLayout L, int CC>
void expand_rows(const float* img, float* cols, const Geometry& g, std::int64_t kh, std::int64_t kw, std::int64_t p,
                 int s, std::int64_t n0, std::int64_t n1) {
    const std::int64_t C = CC > 0 ? CC : g.c, K = kh * kw * C;
    const std::int64_t cstride = L == ConvLayout::nhwc ? 1 : g.h * g.w;  // between channels of a pixel
    const std::int64_t xstride = L == ConvLayout::nhwc ? C : 1;          // between pixels of a row
    const std::int64_t x_lo = std::min(p, g.w), x_hi = std::max(x_lo, g.w - p);
    for (std::int64_t n = n0; n < n1; ++n)
        for (std::int64_t y = 0; y < g.h; ++y)
            for (std::int64_t a = 0; a < kh; ++a) {
                const std::int64_t yy = y + s * (a - p);
                float* base = cols + (n * g.h + y) * g.w * K + a * kw * C;
                if (yy < 0 || yy >= g.h) {
                    for (std::int64_t x = 0; x < g.w; ++x) std::fill_n(base + x * K, kw * C, 0.0f);
                    continue;
                }
                const float* src = img + img_off<L>(g, n, 0, yy, 0);
                auto tap = [&](std::int64_t x, std::int64_t e) {
                    const std::int64_t xx = x + s * (e - p);
                    float* dst = base + x * K + e * C;
                    if (xx < 0 || xx >= g.w) {
                        for (std::int64_t c = 0; c < C; ++c) dst[c] = 0.0f;
                    } else {
                        const float* sp = src + xx * xstride;
                        for (std::int64_t c = 0; c < C; ++c) dst[c] = sp[c * cstride];
                    }
                };
                for (std::int64_t x = 0; x < x_lo; ++x)
                    for (std::int64_t e = 0; e < kw; ++e) tap(x, e);
                for (std::int64_t x = x_lo; x < x_hi; ++x) {
                    float* row = base + x * K;
                    for (std::int64_t e = 0; e < kw; ++e) {
                        const float* sp = src + (x + s * (e - p)) * xstride;
                        for (std::int64_t c = 0; c < C; ++c) row[e * C + c] = sp[c * cstride];
                    }
                }
                for (std::int64_t x = x_hi; x < g.w; ++x)
                    for (std::int64_t e = 0; e < kw; ++e) tap(x, e);
            }
}

template <ConvLayout L, int CC>
void reduce_rows(const float* cols, const float* bias, float* img, const Geometry& g, std::int64_t kh, std::int64_t kw,
                 std::int64_t p, int s, bool relu, std::int64_t n0, std::int64_t n1) {
    const std::int64_t C = CC > 0 ? CC : g.c, K = kh * kw * C;
    const std::int64_t cstride = L == ConvLayout::nhwc ? 1 : g.h * g.w;
    const std::int64_t x_lo = std::min(p, g.w), x_hi = std::max(x_lo, g.w - p);
    constexpr std::int64_t kMax = CC > 0 ? CC : 1;
    std::vector<float> heap(CC > 0 ? 0 : static_cast<std::size_t>(C));
    float stack[kMax];
    float* acc = CC > 0 ? stack : heap.data();
    for (std::int64_t n = n0; n < n1; ++n)
        for (std::int64_t y = 0; y < g.h; ++y) {
            // The kernel rows that land inside the image, the same for every column.
            std::int64_t a_lo = kh, a_hi = 0;
            for (std::int64_t a = 0; a < kh; ++a) {
                const std::int64_t yy = y - s * (a - p);
                if (yy >= 0 && yy < g.h) a_lo = std::min(a_lo, a), a_hi = std::max(a_hi, a + 1);
            }
            for (std::int64_t x = 0; x < g.w; ++x) {
                const bool inner = x >= x_lo && x < x_hi;
                for (std::int64_t c = 0; c < C; ++c) acc[c] = bias ? bias[c] : 0.0f;
                for (std::int64_t a = a_lo; a < a_hi; ++a) {
                    const std::int64_t yy = y - s * (a - p);
                    const float* row = cols + (n * g.h + yy) * g.w * K + a * kw * C;
                    for (std::int64_t e = 0; e < kw; ++e) {
                        const std::int64_t xx = x - s * (e - p);
                        if (!inner && (xx < 0 || xx >= g.w)) continue;
                        const float* src = row + xx * K + e * C;
                        for (std::int64_t c = 0; c < C; ++c) acc[c] += src[c];
                    }
                }
                float* dst = img + img_off<L>(g, n, 0, y, x);
                for (std::int64_t c = 0; c < C; ++c) dst[c * cstride] = relu && acc[c] < 0.0f ? 0.0f : acc[c];
            }
        }
}

// Calls fn with the channel count as a compile-time constant when it is a common thin one.
template <class Fn>
void with_channels(std::int64_t c, Fn&& fn) {
    switch (c) {
        case 1: fn(std::integral_constant<int, 1>{}); return;
        case 2: fn(std::integral_constant<int, 2>{}); return;
        case 3: fn(std::integral_constant<int, 3>{}); return;
        case 4: fn(std::integral_constant<int, 4>{}); return;
        case 8: fn(std::integral_constant<int, 8>{}); return;
        default: fn(std::integral_constant<int, 0>{}); return;
    }
}

Tensor expand(const Tensor& img, ConvLayout l, const Geometry& g, std::int64_t kh, std::int64_t kw, std::int64_t p,
              int s) {
    Tensor cols = Tensor::empty({g.b * g.h * g.w, kh * kw * g.c}, DType::f32);
    parallel_samples(g.b, g.h * g.w * kh * kw * g.c, [&](std::int64_t n0, std::int64_t n1) {
                     with_channels(g.c, [&](auto cc) {
                         constexpr int C = decltype(cc)::value;
                         if (l == ConvLayout::nhwc)
                             expand_rows<ConvLayout::nhwc, C>(img.f32(), cols.f32(), g, kh, kw, p, s, n0, n1);
                         else
                             expand_rows<ConvLayout::nchw, C>(img.f32(), cols.f32(), g, kh, kw, p, s, n0, n1);
                     });
                 });
    return cols;
}

Tensor reduce(const Tensor& cols, const float* bias, ConvLayout l, const Geometry& g, std::int64_t kh, std::int64_t kw,
              std::int64_t p, int s, bool relu) {
    Tensor img = Tensor::empty(layout_shape({g.b, g.c, g.h, g.w}, l), DType::f32);
    parallel_samples(g.b, g.h * g.w * kh * kw * g.c, [&](std::int64_t n0, std::int64_t n1) {
                     with_channels(g.c, [&](auto cc) {
                         constexpr int C = decltype(cc)::value;
                         if (l == ConvLayout::nhwc)
                             reduce_rows<ConvLayout::nhwc, C>(cols.f32(), bias, img.f32(), g, kh, kw, p, s, relu, n0, n1);
                         else
                             reduce_rows<ConvLayout::nchw, C>(cols.f32(), bias, img.f32(), g, kh, kw, p, s, relu, n0, n1);
                     });
                 });
    return img;
}

}  // namespace

void expand_images(const float* img, float* cols, ConvLayout l, const Geometry& g, std::int64_t kh, std::int64_t kw,
                   std::int64_t p, int s) {
    with_channels(g.c, [&](auto cc) {
        constexpr int C = decltype(cc)::value;
        if (l == ConvLayout::nhwc)
            expand_rows<ConvLayout::nhwc, C>(img, cols, g, kh, kw, p, s, 0, g.b);
        else
            expand_rows<ConvLayout::nchw, C>(img, cols, g, kh, kw, p, s, 0, g.b);
    });
}

void reduce_images(const float* cols, const float* bias, float* img, ConvLayout l, const Geometry& g,
                   std::int64_t kh, std::int64_t kw, std::int64_t p, int s, bool relu) {
    with_channels(g.c, [&](auto cc) {
        constexpr int C = decltype(cc)::value;
        if (l == ConvLayout::nhwc)
            reduce_rows<ConvLayout::nhwc, C>(cols, bias, img, g, kh, kw, p, s, relu, 0, g.b);
        else
            reduce_rows<ConvLayout::nchw, C>(cols, bias, img, g, kh, kw, p, s, relu, 0, g.b);
    });
}

namespace {

// The output gradient masked by the ReLU (when fused) and its per-channel sum (the bias
// gradient), in one pass over the (large) output gradient.
struct MaskedGrad {
    Tensor g;
    Tensor gb;  // [O], when wanted
};

// One NCHW plane: the same, returning the plane's sum.
inline float mask_plane(const float* g, const float* y, float* out, std::int64_t P, bool relu) {
    float t = 0.0f;
    if (relu) {
#pragma omp simd reduction(+ : t)
        for (std::int64_t q = 0; q < P; ++q) {
            const float v = y[q] > 0.0f ? g[q] : 0.0f;
            out[q] = v;
            t += v;
        }
    } else {
#pragma omp simd reduction(+ : t)
        for (std::int64_t q = 0; q < P; ++q) t += g[q];
    }
    return t;
}

MaskedGrad mask_and_sum(const Tensor& gy, const Tensor& y, bool relu, bool want_bias, ConvLayout l, const Geometry& go) {
    MaskedGrad r;
    if (!relu && !want_bias) {
        r.g = gy;
        return r;
    }
    r.g = relu ? Tensor::empty(gy.shape(), DType::f32) : gy;
    const float* gp = gy.f32();
    const float* yp = y.f32();
    float* out = relu ? r.g.f32() : nullptr;
    const std::int64_t C = go.c, P = go.h * go.w;
    // Per-sample float sums (a few thousand terms each), added up in double.
    std::vector<float> per_sample(static_cast<std::size_t>(go.b * C), 0.0f);
    parallel_samples(go.b, C * P, [&](std::int64_t n0, std::int64_t n1) {
        for (std::int64_t n = n0; n < n1; ++n) {
            const std::int64_t base = n * C * P;
            float* acc = per_sample.data() + n * C;
            if (l == ConvLayout::nhwc) {
                float dummy = 0.0f;
                for (std::int64_t q = 0; q < P; ++q)
                    mask_row(gp + base + q * C, yp + base + q * C, relu ? out + base + q * C : &dummy, acc, C, relu);
            } else {
                float dummy = 0.0f;
                for (std::int64_t c = 0; c < C; ++c)
                    acc[c] = mask_plane(gp + base + c * P, yp + base + c * P, relu ? out + base + c * P : &dummy, P, relu);
            }
        }
    });
    if (want_bias) {
        r.gb = Tensor::empty({C}, DType::f32);
        for (std::int64_t c = 0; c < C; ++c) {
            double t = 0.0;
            for (std::int64_t n = 0; n < go.b; ++n) t += per_sample[static_cast<std::size_t>(n * C + c)];
            r.gb.f32()[c] = static_cast<float>(t);
        }
    }
    return r;
}

}  // namespace

GemmConv gemm_conv_kind(const ConvCall& c, const Conv2dOptions& opt) {
    if (opt.stride != 1 || 2 * opt.padding != c.kh - 1 || c.kh != c.kw) return GemmConv::none;  // "same" convs only
    const bool in_rows = opt.in_layout == ConvLayout::nhwc, out_rows = opt.out_layout == ConvLayout::nhwc;
    const bool in_ok = opt.in_layout != ConvLayout::blocked8, out_ok = opt.out_layout != ConvLayout::blocked8;
    if (c.kh == 1 && in_rows && out_rows) return GemmConv::pointwise;
    if (out_rows && in_ok && c.gi.c * c.kh * c.kw <= 72) return GemmConv::thin_in;
    if (in_rows && out_ok && c.go.c * c.kh * c.kw <= 144) return GemmConv::thin_out;
    return GemmConv::none;
}

// W [O, C, kh, kw] as W'[(k, c), o] (thin_in) or W''[c, (k, o)] (thin_out), and back.
Tensor pack_weights(const Tensor& w, bool thin_in) {
    const std::int64_t O = w.size(0), C = w.size(1), K = w.size(2) * w.size(3);
    Tensor out = Tensor::empty(thin_in ? Shape{K * C, O} : Shape{C, K * O}, DType::f32);
    const float* s = w.f32();
    float* d = out.f32();
    for (std::int64_t o = 0; o < O; ++o)
        for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t k = 0; k < K; ++k) {
                const float v = s[(o * C + c) * K + k];
                if (thin_in)
                    d[(k * C + c) * O + o] = v;
                else
                    d[c * K * O + k * O + o] = v;
            }
    return out;
}

Tensor unpack_weights(const Tensor& packed, const Shape& wshape, bool thin_in) {
    const std::int64_t O = wshape[0], C = wshape[1], K = wshape[2] * wshape[3];
    Tensor w = Tensor::empty(wshape, DType::f32);
    const float* s = packed.f32();
    float* d = w.f32();
    for (std::int64_t o = 0; o < O; ++o)
        for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t k = 0; k < K; ++k)
                d[(o * C + c) * K + k] = thin_in ? s[(k * C + c) * O + o] : s[c * K * O + k * O + o];
    return w;
}

Var conv2d_gemm(const Var& x, const Var& w, const Var& b, const Conv2dOptions& opt, const ConvCall& call,
                GemmConv kind) {
    const Tensor& X = x.value();
    const Tensor& W = w.value();
    const float* bias = b.defined() ? b.value().f32() : nullptr;
    const Geometry gi = call.gi, go = call.go;
    const std::int64_t M = gi.b * gi.h * gi.w, kk = call.kh * call.kw, p = opt.padding;
    Tensor y;
    Tensor packed;  // the weights as the GEMM wants them, kept for the backward
    Tensor cols;    // thin_in: the expanded input, kept for the weight gradient
    if (kind == GemmConv::pointwise) {
        y = Tensor::empty(layout_shape({go.b, go.c, go.h, go.w}, ConvLayout::nhwc), DType::f32);
        mm(X.f32(), false, W.f32(), true, y.f32(), M, go.c, gi.c, bias, opt.relu);
    } else if (kind == GemmConv::thin_in) {
        packed = pack_weights(W, true);
        cols = expand(X, opt.in_layout, gi, call.kh, call.kw, p, +1);
        y = Tensor::empty(layout_shape({go.b, go.c, go.h, go.w}, ConvLayout::nhwc), DType::f32);
        mm(cols.f32(), false, packed.f32(), false, y.f32(), M, go.c, kk * gi.c, bias, opt.relu);
    } else {
        packed = pack_weights(W, false);
        Tensor t = Tensor::empty({M, kk * go.c}, DType::f32);
        mm(X.f32(), false, packed.f32(), false, t.f32(), M, kk * go.c, gi.c);
        y = reduce(t, bias, opt.out_layout, go, call.kh, call.kw, p, -1, opt.relu);
    }
    std::vector<Var> inputs = {x, w};
    if (b.defined()) inputs.push_back(b);
    return make_op("conv2d", std::move(y), std::move(inputs),
                   [x, w, opt, call, kind, packed, cols](const Tensor& gy, const Tensor& yv, GradSink& g) {
                       const bool need_x = g.needs(0), need_w = g.needs(1), need_b = call.key.bias && g.needs(2);
                       if (!need_x && !need_w && !need_b) return;
                       const Geometry gi = call.gi, go = call.go;
                       const std::int64_t M = gi.b * gi.h * gi.w, kk = call.kh * call.kw, p = opt.padding;
                       MaskedGrad mg = mask_and_sum(gy, yv, opt.relu, need_b, opt.out_layout, go);
                       const Tensor& X = x.value();
                       if (kind == GemmConv::pointwise) {
                           if (need_x) {
                               Tensor gx = Tensor::empty(X.shape(), DType::f32);
                               mm(mg.g.f32(), false, w.value().f32(), false, gx.f32(), M, gi.c, go.c);
                               g.add(0, std::move(gx));
                           }
                           if (need_w) {
                               Tensor gw = Tensor::empty(w.shape(), DType::f32);
                               mm(mg.g.f32(), true, X.f32(), false, gw.f32(), go.c, gi.c, M);
                               g.add(1, std::move(gw));
                           }
                       } else if (kind == GemmConv::thin_in) {
                           if (need_x) {
                               Tensor gcols = Tensor::empty({M, kk * gi.c}, DType::f32);
                               mm(mg.g.f32(), false, packed.f32(), true, gcols.f32(), M, kk * gi.c, go.c);
                               g.add(0, reduce(gcols, nullptr, opt.in_layout, gi, call.kh, call.kw, p, +1, false));
                           }
                           if (need_w) {
                               Tensor gp = Tensor::empty({kk * gi.c, go.c}, DType::f32);
                               mm(cols.f32(), true, mg.g.f32(), false, gp.f32(), kk * gi.c, go.c, M);
                               g.add(1, unpack_weights(gp, w.shape(), true));
                           }
                       } else {
                           const Tensor gt = expand(mg.g, opt.out_layout, go, call.kh, call.kw, p, -1);
                           if (need_x) {
                               Tensor gx = Tensor::empty(X.shape(), DType::f32);
                               mm(gt.f32(), false, packed.f32(), true, gx.f32(), M, gi.c, kk * go.c);
                               g.add(0, std::move(gx));
                           }
                           if (need_w) {
                               Tensor gp = Tensor::empty({gi.c, kk * go.c}, DType::f32);
                               mm(X.f32(), true, gt.f32(), false, gp.f32(), gi.c, kk * go.c, M);
                               g.add(1, unpack_weights(gp, w.shape(), false));
                           }
                       }
                       if (need_b) g.add(2, std::move(mg.gb));
                   });
}

}  // namespace flowlab::conv_detail
