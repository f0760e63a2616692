// Convolution ops (conv.hpp): conv2d in f32 as oneDNN GEMMs or oneDNN convolutions (cached
// primitives either way), plain loops for f64, the direct small-channel 1x1 convolution, layout
// moves and masks.
//
// Which f32 path: a stride-1 "same" convolution whose wide side is channels-last and whose
// other side is thin (few channels), or a 1x1 one, is a single GEMM (conv_gemm.cpp explains;
// on this AVX2 oneDNN that is 2-4x faster than its convolution kernels for a coupling network).
// Everything else goes to oneDNN's convolution with the activations in the layout the caller
// names and the weights in the layout oneDNN picks (`any`), the OIHW parameter reordered per
// call through a cached reorder.
#include "flowlab/conv.hpp"

#include <algorithm>

#include "ops/conv_internal.hpp"

namespace flowlab {

namespace conv_detail {

const char* layout_name(ConvLayout l) {
    switch (l) {
        case ConvLayout::nhwc: return "nhwc";
        case ConvLayout::blocked8: return "blocked8";
        case ConvLayout::nchw: break;
    }
    return "nchw";
}

ConvCall check_conv(const Tensor& x, const Tensor& w, const Tensor* b, const Conv2dOptions& opt) {
    detail::check_dtypes("conv2d", x, w);
    if (w.dim() != 4) throw ShapeError("conv2d: weights " + shape_str(w.shape()) + " are not [O, C, kh, kw]");
    Shape xs;
    try {
        xs = nchw_shape(x.shape(), opt.in_layout);
    } catch (const ShapeError& e) {
        throw ShapeError(std::string("conv2d: input: ") + e.what());
    }
    const Geometry gi{xs[0], xs[1], xs[2], xs[3]};
    if (w.size(1) != gi.c)
        throw ShapeError("conv2d: input " + shape_str(x.shape()) + " (" + layout_name(opt.in_layout) + ") has " +
                         std::to_string(gi.c) + " channels, weights " + shape_str(w.shape()) + " expect " +
                         std::to_string(w.size(1)));
    if (opt.stride < 1 || opt.padding < 0)
        throw ShapeError("conv2d: stride must be >= 1 and padding >= 0, got stride " + std::to_string(opt.stride) +
                         " padding " + std::to_string(opt.padding));
    const std::int64_t kh = w.size(2), kw = w.size(3);
    const std::int64_t oh = (gi.h + 2 * opt.padding - kh) / opt.stride + 1;
    const std::int64_t ow = (gi.w + 2 * opt.padding - kw) / opt.stride + 1;
    if (gi.h + 2 * opt.padding < kh || gi.w + 2 * opt.padding < kw)
        throw ShapeError("conv2d: kernel " + shape_str(w.shape()) + " is larger than the padded input " +
                         shape_str(x.shape()));
    const Geometry go{gi.b, w.size(0), oh, ow};
    if (opt.out_layout == ConvLayout::blocked8 && go.c % 8 != 0)
        throw ShapeError("conv2d: the blocked8 layout needs a multiple of 8 output channels, got " +
                         std::to_string(go.c));
    if (b) {
        detail::check_dtypes("conv2d", x, *b);
        if (b->dim() != 1 || b->size(0) != go.c)
            throw ShapeError("conv2d: bias " + shape_str(b->shape()) + " does not match weights " + shape_str(w.shape()));
    }
    ConvCall c;
    c.key = {gi.b, gi.c, gi.h, gi.w, go.c, kh, kw, opt.stride, opt.padding, opt.in_layout, opt.out_layout, opt.relu,
             b != nullptr};
    c.gi = gi;
    c.go = go;
    c.kh = kh;
    c.kw = kw;
    return c;
}

}  // namespace conv_detail

using namespace conv_detail;
using detail::dispatch;

// ---------------------------------------------------------------------------------- layouts

Shape nchw_shape(const Shape& s, ConvLayout l) {
    switch (l) {
        case ConvLayout::nchw:
            if (s.size() != 4) break;
            return s;
        case ConvLayout::nhwc:
            if (s.size() != 4) break;
            return {s[0], s[3], s[1], s[2]};
        case ConvLayout::blocked8:
            if (s.size() != 5 || s[4] != 8) break;
            return {s[0], s[1] * 8, s[2], s[3]};
    }
    static const char* want[] = {"[B, C, H, W]", "[B, H, W, C]", "[B, C/8, H, W, 8]"};
    throw ShapeError("shape " + shape_str(s) + " is not a " + layout_name(l) + " image " +
                     want[static_cast<int>(l)]);
}

Shape layout_shape(const Shape& s, ConvLayout l) {
    if (s.size() != 4) throw ShapeError("shape " + shape_str(s) + " is not an image [B, C, H, W]");
    switch (l) {
        case ConvLayout::nhwc: return {s[0], s[2], s[3], s[1]};
        case ConvLayout::blocked8:
            if (s[1] % 8 != 0)
                throw ShapeError("the blocked8 layout needs a multiple of 8 channels, got " + shape_str(s));
            return {s[0], s[1] / 8, s[2], s[3], 8};
        case ConvLayout::nchw: break;
    }
    return s;
}

namespace {

template <class T>
void move_layout(const T* src, T* dst, const Geometry& g, ConvLayout from, ConvLayout to) {
    parallel_samples(g.b, g.c * g.h * g.w, [&](std::int64_t n0, std::int64_t n1) {
                     for (std::int64_t n = n0; n < n1; ++n)
                         for (std::int64_t c = 0; c < g.c; ++c)
                             for (std::int64_t y = 0; y < g.h; ++y)
                                 for (std::int64_t x = 0; x < g.w; ++x)
                                     dst[offset(to, g, n, c, y, x)] = src[offset(from, g, n, c, y, x)];
                 });
}

Tensor move_layout_tensor(const Tensor& t, ConvLayout from, ConvLayout to) {
    const Shape n = nchw_shape(t.shape(), from);
    const Geometry g{n[0], n[1], n[2], n[3]};
    Tensor out = Tensor::empty(layout_shape(n, to), t.dtype());
    dispatch(t.dtype(), [&](auto tag_) {
        using T = decltype(tag_);
        move_layout<T>(t.data<T>(), out.data<T>(), g, from, to);
    });
    return out;
}

}  // namespace

Var to_layout(const Var& x, ConvLayout from, ConvLayout to) {
    if (from == to) return x;
    Tensor y = move_layout_tensor(x.value(), from, to);
    return make_op("to_layout", std::move(y), {x}, [from, to](const Tensor& gy, const Tensor&, GradSink& g) {
        if (g.needs(0)) g.add(0, move_layout_tensor(gy, to, from));
    });
}

// ---------------------------------------------------------------------------------- conv2d

Var conv2d(const Var& x, const Var& w, const Var& b, const Conv2dOptions& opt) {
    // oneDNN 2.6 has fast kernels only when source and destination share a layout (mixed ones
    // fall to its reference loop), so a layout change becomes an explicit move of the input,
    // or of the output, whichever is smaller.
    if (x.dtype() == DType::f32) {
        const ConvCall call = check_conv(x.value(), w.value(), b.defined() ? &b.value() : nullptr, opt);
        const GemmConv kind = gemm_conv_kind(call, opt);
        if (kind != GemmConv::none) return conv2d_gemm(x, w, b, opt, call, kind);
    }
    if (opt.in_layout != opt.out_layout && x.dtype() == DType::f32) {
        Conv2dOptions same = opt;
        const Shape n = nchw_shape(x.shape(), opt.in_layout);
        const std::int64_t kh = w.value().dim() == 4 ? w.size(2) : 1, kw = w.value().dim() == 4 ? w.size(3) : 1;
        const std::int64_t oh = (n[2] + 2 * opt.padding - kh) / std::max<std::int64_t>(1, opt.stride) + 1;
        const std::int64_t ow = (n[3] + 2 * opt.padding - kw) / std::max<std::int64_t>(1, opt.stride) + 1;
        const bool input_smaller = n[1] * n[2] * n[3] <= w.size(0) * oh * ow;
        // Move the smaller of input and output (e.g. 4 channels in, 128 out: the input).
        if ((input_smaller || (opt.in_layout == ConvLayout::blocked8 && w.size(0) % 8 != 0)) &&
            (opt.out_layout != ConvLayout::blocked8 || n[1] % 8 == 0)) {
            same.in_layout = opt.out_layout;
            return conv2d(to_layout(x, opt.in_layout, opt.out_layout), w, b, same);
        }
        same.out_layout = opt.in_layout;
        return to_layout(conv2d(x, w, b, same), opt.in_layout, opt.out_layout);
    }
    const ConvCall call = check_conv(x.value(), w.value(), b.defined() ? &b.value() : nullptr, opt);
    return x.dtype() == DType::f64 ? conv2d_loops(x, w, b, opt, call) : conv2d_onednn(x, w, b, opt, call);
}

// ---------------------------------------------------------------------------------- masks

Tensor checkerboard_mask(std::int64_t h, std::int64_t w, int parity, DType dt) {
    Tensor m = Tensor::empty({1, h, w}, dt);
    for (std::int64_t i = 0; i < h; ++i)
        for (std::int64_t j = 0; j < w; ++j) m.set_item(i * w + j, ((i + j) % 2) == (parity & 1) ? 1.0 : 0.0);
    return m;
}

Tensor channel_mask(std::int64_t c, int parity, DType dt) {
    Tensor m = Tensor::empty({c, 1, 1}, dt);
    for (std::int64_t i = 0; i < c; ++i) m.set_item(i, ((i < c / 2) == (parity == 0)) ? 1.0 : 0.0);
    return m;
}

}  // namespace flowlab
