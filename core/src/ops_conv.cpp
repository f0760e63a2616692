// Convolution ops (conv.hpp): conv2d in f32 as oneDNN GEMMs or oneDNN convolutions (cached
// primitives either way), plain loops for f64, the direct small-channel 1x1 convolution, layout
// moves and masks.
//
// Which f32 path: a stride-1 "same" convolution whose wide side is channels-last and whose
// other side is thin (few channels), or a 1x1 one, is a single GEMM (see "GEMM convs" below;
// on this AVX2 oneDNN that is 2-4x faster than its convolution kernels for a coupling network).
// Everything else goes to oneDNN's convolution with the activations in the layout the caller
// names and the weights in the layout oneDNN picks (`any`), the OIHW parameter reordered per
// call through a cached reorder.
#include "flowlab/conv.hpp"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include <oneapi/dnnl/dnnl.hpp>

#include "ops_internal.hpp"

namespace flowlab {

namespace {

using detail::dispatch;

// ------------------------------------------------------------------------------ layouts

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

const char* layout_name(ConvLayout l) {
    switch (l) {
        case ConvLayout::nhwc: return "nhwc";
        case ConvLayout::blocked8: return "blocked8";
        case ConvLayout::nchw: break;
    }
    return "nchw";
}

// ------------------------------------------------------------------------------ f64 loops

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
                    for (std::int64_t c = 0; c < gi.c; ++c)
                        for (std::int64_t a = 0; a < kh; ++a) {
                            const std::int64_t yy = i * s - p + a;
                            if (yy < 0 || yy >= gi.h) continue;
                            for (std::int64_t e = 0; e < kw; ++e) {
                                const std::int64_t xx = j * s - p + e;
                                if (xx < 0 || xx >= gi.w) continue;
                                acc += x[offset(li, gi, n, c, yy, xx)] * w[((o * gi.c + c) * kh + a) * kw + e];
                            }
                        }
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
                    for (std::int64_t c = 0; c < gi.c; ++c)
                        for (std::int64_t a = 0; a < kh; ++a) {
                            const std::int64_t yy = i * s - p + a;
                            if (yy < 0 || yy >= gi.h) continue;
                            for (std::int64_t e = 0; e < kw; ++e) {
                                const std::int64_t xx = j * s - p + e;
                                if (xx < 0 || xx >= gi.w) continue;
                                const std::int64_t wi = ((o * gi.c + c) * kh + a) * kw + e;
                                const std::int64_t xi = offset(li, gi, n, c, yy, xx);
                                if (gx) gx[xi] += gv * w[wi];
                                if (gw) gw[wi] += gv * x[xi];
                            }
                        }
                }
}

// g * (y > 0): the relu part of a fused conv's backward.
template <class T>
Tensor relu_mask(const Tensor& gy, const Tensor& y) {
    return detail::map2<T>(gy, y, [](T g, T v) { return v > T(0) ? g : T(0); });
}

// ------------------------------------------------------------------------------ oneDNN

using dnnl::memory;
using tag = memory::format_tag;

tag dnnl_tag(ConvLayout l) {
    switch (l) {
        case ConvLayout::nhwc: return tag::nhwc;
        case ConvLayout::blocked8: return tag::nChw8c;
        case ConvLayout::nchw: break;
    }
    return tag::nchw;
}

struct ConvKey {
    std::int64_t b, c, h, w, o, kh, kw, stride, pad;
    ConvLayout li, lo;
    bool relu, bias;
    bool operator==(const ConvKey&) const = default;
};

struct ConvKeyHash {
    std::size_t operator()(const ConvKey& k) const {
        std::uint64_t h = 0xcbf29ce484222325ull;
        auto mix = [&](std::uint64_t v) { h = (h ^ v) * 0x100000001b3ull; };
        for (std::int64_t v : {k.b, k.c, k.h, k.w, k.o, k.kh, k.kw, k.stride, k.pad}) mix(static_cast<std::uint64_t>(v));
        mix(static_cast<std::uint64_t>(k.li) | static_cast<std::uint64_t>(k.lo) << 8 |
            static_cast<std::uint64_t>(k.relu) << 16 | static_cast<std::uint64_t>(k.bias) << 17);
        return static_cast<std::size_t>(h);
    }
};

// The primitives of one convolution geometry. The backward ones are made on first use
// (evaluation never needs them).
struct ConvPrims {
    memory::desc src, dst, w_user, bias;
    dnnl::convolution_forward::primitive_desc fwd_pd;
    dnnl::convolution_forward fwd;
    memory::desc w_fwd;
    dnnl::reorder w_to_fwd;  // user OIHW -> fwd layout; empty if equal
    bool has_bwd = false;
    dnnl::convolution_backward_data bwd_data;
    memory::desc w_bwd;
    dnnl::reorder w_to_bwd;  // user -> bwd-data layout, when it differs from the forward's
    bool bwd_w_is_fwd = false;
    dnnl::convolution_backward_weights bwd_weights;
    memory::desc dw;
    dnnl::reorder dw_to_user;  // empty if the gradient comes out in OIHW
};

struct ConvContext {
    dnnl::engine engine{dnnl::engine::kind::cpu, 0};
    dnnl::stream stream{engine};
    std::mutex mutex;
    std::unordered_map<ConvKey, ConvPrims, ConvKeyHash> convs;

    static memory::dims dims(std::initializer_list<std::int64_t> v) { return memory::dims(v.begin(), v.end()); }

    ConvPrims& get(const ConvKey& k) {
        auto it = convs.find(k);
        if (it != convs.end()) return it->second;
        try {
            return convs.emplace(k, build(k)).first->second;
        } catch (const dnnl::error& e) {
            throw Error(describe(k) + ": oneDNN cannot build the convolution: " + e.what());
        }
    }

    static std::string describe(const ConvKey& k) {
        return "conv2d [" + std::to_string(k.b) + ", " + std::to_string(k.c) + ", " + std::to_string(k.h) + ", " +
               std::to_string(k.w) + "] (" + layout_name(k.li) + ") -> " + std::to_string(k.o) + " channels (" +
               layout_name(k.lo) + "), kernel " + std::to_string(k.kh) + "x" + std::to_string(k.kw);
    }

    ConvPrims build(const ConvKey& k) {
        using dt = memory::data_type;
        const std::int64_t oh = (k.h + 2 * k.pad - k.kh) / k.stride + 1, ow = (k.w + 2 * k.pad - k.kw) / k.stride + 1;
        ConvPrims p;
        p.src = memory::desc(dims({k.b, k.c, k.h, k.w}), dt::f32, dnnl_tag(k.li));
        p.dst = memory::desc(dims({k.b, k.o, oh, ow}), dt::f32, dnnl_tag(k.lo));
        p.w_user = memory::desc(dims({k.o, k.c, k.kh, k.kw}), dt::f32, tag::oihw);
        memory::desc w_any(dims({k.o, k.c, k.kh, k.kw}), dt::f32, tag::any);
        if (k.bias) p.bias = memory::desc(dims({k.o}), dt::f32, tag::x);
        const memory::dims st = dims({k.stride, k.stride}), pad = dims({k.pad, k.pad});
        dnnl::convolution_forward::desc fd =
            k.bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                                     dnnl::algorithm::convolution_direct, p.src, w_any, p.bias, p.dst,
                                                     st, pad, pad)
                   : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                                     dnnl::algorithm::convolution_direct, p.src, w_any, p.dst, st,
                                                     pad, pad);
        dnnl::primitive_attr attr;
        if (k.relu) {
            dnnl::post_ops po;
            po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
            attr.set_post_ops(po);
        }
        p.fwd_pd = dnnl::convolution_forward::primitive_desc(fd, attr, engine);
        p.fwd = dnnl::convolution_forward(p.fwd_pd);
        p.w_fwd = p.fwd_pd.weights_desc();
        if (p.w_fwd != p.w_user) p.w_to_fwd = dnnl::reorder(memory(p.w_user, engine), memory(p.w_fwd, engine));
        return p;
    }

    void make_backward(const ConvKey& k, ConvPrims& p) {
        if (p.has_bwd) return;
        try {
            build_backward(k, p);
        } catch (const dnnl::error& e) {
            throw Error(describe(k) + ": oneDNN cannot build the convolution's backward: " + e.what());
        }
    }

    void build_backward(const ConvKey& k, ConvPrims& p) {
        using dt = memory::data_type;
        memory::desc w_any(dims({k.o, k.c, k.kh, k.kw}), dt::f32, tag::any);
        const memory::dims st = dims({k.stride, k.stride}), pad = dims({k.pad, k.pad});
        dnnl::convolution_backward_data::desc bdd(dnnl::algorithm::convolution_direct, p.src, w_any, p.dst, st, pad,
                                                  pad);
        dnnl::convolution_backward_data::primitive_desc bd_pd(bdd, engine, p.fwd_pd);
        p.bwd_data = dnnl::convolution_backward_data(bd_pd);
        p.w_bwd = bd_pd.weights_desc();
        if (p.w_bwd != p.w_fwd && p.w_bwd != p.w_user)
            p.w_to_bwd = dnnl::reorder(memory(p.w_user, engine), memory(p.w_bwd, engine));
        dnnl::convolution_backward_weights::desc bwd =
            k.bias ? dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, p.src, w_any,
                                                              p.bias, p.dst, st, pad, pad)
                   : dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, p.src, w_any,
                                                              p.dst, st, pad, pad);
        dnnl::convolution_backward_weights::primitive_desc bw_pd(bwd, engine, p.fwd_pd);
        p.bwd_weights = dnnl::convolution_backward_weights(bw_pd);
        p.dw = bw_pd.diff_weights_desc();
        if (p.dw != p.w_user) p.dw_to_user = dnnl::reorder(memory(p.dw, engine), memory(p.w_user, engine));
        p.has_bwd = true;
    }
};

// Never destroyed: the OpenMP runtime oneDNN runs on may already be gone at static destruction.
ConvContext& conv_context() {
    static ConvContext* c = new ConvContext();
    return *c;
}

// A scratch tensor big enough for `d` (oneDNN's padded size), as f32.
Tensor scratch_for(const memory::desc& d) {
    return Tensor::empty({static_cast<std::int64_t>((d.get_size() + 3) / 4)}, DType::f32);
}

// The weights in the layout `want`: the parameter itself when it already is, else a reorder.
memory weights_as(ConvContext& ctx, const ConvPrims& p, const Tensor& w, const memory::desc& want,
                  const dnnl::reorder& re, Tensor& holder) {
    memory user(p.w_user, ctx.engine, const_cast<void*>(w.raw()));
    if (want == p.w_user) return user;
    holder = scratch_for(want);
    memory out(want, ctx.engine, holder.raw());
    re.execute(ctx.stream, user, out);
    return out;
}

struct ConvCall {
    ConvKey key;
    Geometry gi, go;
    std::int64_t kh, kw;
};

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

}  // namespace

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
// GEMMs and the adjoint expand/reduce of the same thin tensors.

struct MmKey {
    std::int64_t m, n, k;
    bool ta, tb, bias, relu;
    bool accumulate;
    bool operator==(const MmKey&) const = default;
};

struct MmKeyHash {
    std::size_t operator()(const MmKey& k) const {
        std::uint64_t h = 0xcbf29ce484222325ull;
        auto mix = [&](std::uint64_t v) { h = (h ^ v) * 0x100000001b3ull; };
        mix(static_cast<std::uint64_t>(k.m));
        mix(static_cast<std::uint64_t>(k.n));
        mix(static_cast<std::uint64_t>(k.k));
        mix(static_cast<std::uint64_t>(k.ta) | static_cast<std::uint64_t>(k.tb) << 1 |
            static_cast<std::uint64_t>(k.bias) << 2 | static_cast<std::uint64_t>(k.relu) << 3 |
            static_cast<std::uint64_t>(k.accumulate) << 4);
        return static_cast<std::size_t>(h);
    }
};

struct MmPrim {
    dnnl::matmul prim;
    memory::desc a, b, c, bias;
};

struct MmCache {
    std::mutex mutex;
    std::unordered_map<MmKey, MmPrim, MmKeyHash> prims;
};

MmCache& mm_cache() {
    static MmCache* c = new MmCache();
    return *c;
}

// C[m, n] (+)= op(A) op(B) (+ bias[n]) (relu), row-major f32; op = transpose when ta / tb.
void mm(const float* a, bool ta, const float* b, bool tb, float* c, std::int64_t m, std::int64_t n, std::int64_t k,
        const float* bias = nullptr, bool relu = false, bool accumulate = false) {
    ConvContext& ctx = conv_context();
    MmCache& cache = mm_cache();
    std::lock_guard<std::mutex> lock(cache.mutex);
    const MmKey key{m, n, k, ta, tb, bias != nullptr, relu, accumulate};
    auto it = cache.prims.find(key);
    if (it == cache.prims.end()) {
        using dt = memory::data_type;
        using dims = memory::dims;
        MmPrim p;
        p.a = memory::desc({m, k}, dt::f32, ta ? dims{1, m} : dims{k, 1});
        p.b = memory::desc({k, n}, dt::f32, tb ? dims{1, k} : dims{n, 1});
        p.c = memory::desc({m, n}, dt::f32, dims{n, 1});
        if (bias) p.bias = memory::desc({1, n}, dt::f32, dims{n, 1});
        dnnl::primitive_attr attr;
        dnnl::post_ops po;
        if (accumulate) po.append_sum(1.0f);
        if (relu) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
        attr.set_post_ops(po);
        try {
            dnnl::matmul::desc d = bias ? dnnl::matmul::desc(p.a, p.b, p.bias, p.c) : dnnl::matmul::desc(p.a, p.b, p.c);
            p.prim = dnnl::matmul(dnnl::matmul::primitive_desc(d, attr, ctx.engine));
        } catch (const dnnl::error& e) {
            throw Error("conv2d: oneDNN cannot build a " + std::to_string(m) + "x" + std::to_string(k) + "x" +
                        std::to_string(n) + " GEMM: " + e.what());
        }
        it = cache.prims.emplace(key, std::move(p)).first;
    }
    const MmPrim& p = it->second;
    memory am(p.a, ctx.engine, const_cast<float*>(a)), bm(p.b, ctx.engine, const_cast<float*>(b)),
        cm(p.c, ctx.engine, c);
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}};
    if (bias) args.insert({DNNL_ARG_BIAS, memory(p.bias, ctx.engine, const_cast<float*>(bias))});
    p.prim.execute(ctx.stream, args);
    ctx.stream.wait();
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

template <ConvLayout L>
void expand_rows(const float* img, float* cols, const Geometry& g, std::int64_t kh, std::int64_t kw, std::int64_t p,
                 int s, std::int64_t n0, std::int64_t n1) {
    const std::int64_t K = kh * kw * g.c;
    for (std::int64_t n = n0; n < n1; ++n)
        for (std::int64_t y = 0; y < g.h; ++y)
            for (std::int64_t x = 0; x < g.w; ++x) {
                float* row = cols + ((n * g.h + y) * g.w + x) * K;
                for (std::int64_t a = 0; a < kh; ++a) {
                    const std::int64_t yy = y + s * (a - p);
                    for (std::int64_t e = 0; e < kw; ++e) {
                        const std::int64_t xx = x + s * (e - p);
                        float* dst = row + (a * kw + e) * g.c;
                        if (yy < 0 || yy >= g.h || xx < 0 || xx >= g.w) {
                            for (std::int64_t c = 0; c < g.c; ++c) dst[c] = 0.0f;
                        } else {
                            for (std::int64_t c = 0; c < g.c; ++c) dst[c] = img[img_off<L>(g, n, c, yy, xx)];
                        }
                    }
                }
            }
}

template <ConvLayout L>
void reduce_rows(const float* cols, const float* bias, float* img, const Geometry& g, std::int64_t kh, std::int64_t kw,
                 std::int64_t p, int s, bool relu, std::int64_t n0, std::int64_t n1) {
    const std::int64_t K = kh * kw * g.c;
    std::vector<float> acc(static_cast<std::size_t>(g.c));
    for (std::int64_t n = n0; n < n1; ++n)
        for (std::int64_t y = 0; y < g.h; ++y)
            for (std::int64_t x = 0; x < g.w; ++x) {
                for (std::int64_t c = 0; c < g.c; ++c) acc[static_cast<std::size_t>(c)] = bias ? bias[c] : 0.0f;
                for (std::int64_t a = 0; a < kh; ++a) {
                    const std::int64_t yy = y - s * (a - p);
                    if (yy < 0 || yy >= g.h) continue;
                    for (std::int64_t e = 0; e < kw; ++e) {
                        const std::int64_t xx = x - s * (e - p);
                        if (xx < 0 || xx >= g.w) continue;
                        const float* src = cols + ((n * g.h + yy) * g.w + xx) * K + (a * kw + e) * g.c;
                        for (std::int64_t c = 0; c < g.c; ++c) acc[static_cast<std::size_t>(c)] += src[c];
                    }
                }
                for (std::int64_t c = 0; c < g.c; ++c) {
                    const float v = acc[static_cast<std::size_t>(c)];
                    img[img_off<L>(g, n, c, y, x)] = relu && v < 0.0f ? 0.0f : v;
                }
            }
}

Tensor expand(const Tensor& img, ConvLayout l, const Geometry& g, std::int64_t kh, std::int64_t kw, std::int64_t p,
              int s) {
    Tensor cols = Tensor::empty({g.b * g.h * g.w, kh * kw * g.c}, DType::f32);
    parallel_samples(g.b, g.h * g.w * kh * kw * g.c, [&](std::int64_t n0, std::int64_t n1) {
                     if (l == ConvLayout::nhwc)
                         expand_rows<ConvLayout::nhwc>(img.f32(), cols.f32(), g, kh, kw, p, s, n0, n1);
                     else
                         expand_rows<ConvLayout::nchw>(img.f32(), cols.f32(), g, kh, kw, p, s, n0, n1);
                 });
    return cols;
}

Tensor reduce(const Tensor& cols, const float* bias, ConvLayout l, const Geometry& g, std::int64_t kh, std::int64_t kw,
              std::int64_t p, int s, bool relu) {
    Tensor img = Tensor::empty(layout_shape({g.b, g.c, g.h, g.w}, l), DType::f32);
    parallel_samples(g.b, g.h * g.w * kh * kw * g.c, [&](std::int64_t n0, std::int64_t n1) {
                     if (l == ConvLayout::nhwc)
                         reduce_rows<ConvLayout::nhwc>(cols.f32(), bias, img.f32(), g, kh, kw, p, s, relu, n0, n1);
                     else
                         reduce_rows<ConvLayout::nchw>(cols.f32(), bias, img.f32(), g, kh, kw, p, s, relu, n0, n1);
                 });
    return img;
}

// The output gradient masked by the ReLU (when fused) and its per-channel sum (the bias
// gradient), in one pass over the (large) output gradient.
struct MaskedGrad {
    Tensor g;
    Tensor gb;  // [O], when wanted
};

// One channels-last row of C values: out = g masked by y > 0 (when relu), acc += out.
// `omp simd`: -O2 does not vectorise loops of unknown length, and a branchy scalar loop here
// (random signs) cost a fifth of a W3 step.
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

enum class GemmConv { none, pointwise, thin_in, thin_out };

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

}  // namespace

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
    const Tensor& X = x.value();
    const Tensor& W = w.value();
    const Tensor* B = b.defined() ? &b.value() : nullptr;
    const ConvCall call = check_conv(X, W, B, opt);
    const Geometry gi = call.gi, go = call.go;
    Tensor y = Tensor::empty(layout_shape({go.b, go.c, go.h, go.w}, opt.out_layout), X.dtype());

    if (X.dtype() == DType::f64) {
        conv_fwd_loop<double>(X.data<double>(), W.data<double>(), B ? B->data<double>() : nullptr, y.data<double>(),
                              gi, opt.in_layout, go, opt.out_layout, call.kh, call.kw, opt.stride, opt.padding,
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

    ConvContext& ctx = conv_context();
    std::unique_lock<std::mutex> lock(ctx.mutex);
    ConvPrims& p = ctx.get(call.key);  // throws Error if oneDNN has no implementation
    Tensor w_held;
    memory wm = weights_as(ctx, p, W, p.w_fwd, p.w_to_fwd, w_held);
    memory xm(p.src, ctx.engine, const_cast<void*>(X.raw()));
    memory ym(p.dst, ctx.engine, y.raw());
    if (B) {
        memory bm(p.bias, ctx.engine, const_cast<void*>(B->raw()));
        p.fwd.execute(ctx.stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_BIAS, bm}, {DNNL_ARG_DST, ym}});
    } else {
        p.fwd.execute(ctx.stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}});
    }
    ctx.stream.wait();
    lock.unlock();

    std::vector<Var> inputs = {x, w};
    if (b.defined()) inputs.push_back(b);
    // The reordered forward weights are kept for the backward-data pass when it wants the same
    // layout (it usually does), saving a second reorder.
    return make_op("conv2d", std::move(y), std::move(inputs),
                   [x, w, call, opt, w_held](const Tensor& gy, const Tensor& yv, GradSink& g) {
                       const bool need_x = g.needs(0), need_w = g.needs(1), need_b = call.key.bias && g.needs(2);
                       if (!need_x && !need_w && !need_b) return;
                       const Tensor gm = opt.relu ? relu_mask<float>(gy, yv) : gy;
                       ConvContext& c = conv_context();
                       std::lock_guard<std::mutex> guard(c.mutex);
                       ConvPrims& pr = c.get(call.key);
                       c.make_backward(call.key, pr);
                       memory gym(pr.dst, c.engine, const_cast<void*>(gm.raw()));
                       if (need_x) {
                           Tensor gx = Tensor::empty(x.shape(), DType::f32);
                           Tensor held;
                           memory wm2 = pr.w_bwd == pr.w_fwd && w_held.defined()
                                            ? memory(pr.w_fwd, c.engine, const_cast<void*>(w_held.raw()))
                                            : weights_as(c, pr, w.value(), pr.w_bwd,
                                                         pr.w_bwd == pr.w_fwd ? pr.w_to_fwd : pr.w_to_bwd, held);
                           memory gxm(pr.src, c.engine, gx.raw());
                           pr.bwd_data.execute(c.stream,
                                               {{DNNL_ARG_DIFF_DST, gym}, {DNNL_ARG_WEIGHTS, wm2}, {DNNL_ARG_DIFF_SRC, gxm}});
                           c.stream.wait();
                           g.add(0, std::move(gx));
                       }
                       if (need_w || need_b) {
                           Tensor gw = Tensor::empty(w.shape(), DType::f32);
                           Tensor gw_raw = pr.dw == pr.w_user ? gw : scratch_for(pr.dw);
                           memory dwm(pr.dw, c.engine, gw_raw.raw());
                           memory xm2(pr.src, c.engine, const_cast<void*>(x.value().raw()));
                           Tensor gb;
                           std::unordered_map<int, memory> args = {
                               {DNNL_ARG_SRC, xm2}, {DNNL_ARG_DIFF_DST, gym}, {DNNL_ARG_DIFF_WEIGHTS, dwm}};
                           if (call.key.bias) {
                               gb = Tensor::empty({call.go.c}, DType::f32);
                               args.insert({DNNL_ARG_DIFF_BIAS, memory(pr.bias, c.engine, gb.raw())});
                           }
                           pr.bwd_weights.execute(c.stream, args);
                           if (pr.dw != pr.w_user) {
                               memory user(pr.w_user, c.engine, gw.raw());
                               pr.dw_to_user.execute(c.stream, dwm, user);
                           }
                           c.stream.wait();
                           if (need_w) g.add(1, std::move(gw));
                           if (need_b) g.add(2, std::move(gb));
                       }
                   });
}

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
        parallel_samples(N, O * P, [&](std::int64_t n0, std::int64_t n1) { mix_fwd<T>(xp, wp, yp, n0, n1, C, O, P); });
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
                parallel_samples(N, C * P, [&](std::int64_t n0, std::int64_t n1) {
                    mix_fwd<T>(gp, wt.data(), gxp, n0, n1, O, C, P);
                });
                g.add(0, std::move(gx));
            }
            if (g.needs(1)) {
                // gw[o, c] = sum over samples and pixels of gy[n, o, :] x[n, c, :], in double.
                const T* xp = x.value().template data<T>();
                std::vector<double> acc(static_cast<std::size_t>(O * C), 0.0);
                for (std::int64_t n = 0; n < N; ++n)
                    for (std::int64_t o = 0; o < O; ++o) {
                        const T* go = gp + (n * O + o) * P;
                        for (std::int64_t c = 0; c < C; ++c) {
                            const T* xc = xp + (n * C + c) * P;
                            T s = T(0);
#pragma omp simd reduction(+ : s)
                            for (std::int64_t q = 0; q < P; ++q) s += go[q] * xc[q];
                            acc[static_cast<std::size_t>(o * C + c)] += static_cast<double>(s);
                        }
                    }
                Tensor gw = Tensor::empty(w.shape(), gy.dtype());
                T* gwp = gw.template data<T>();
                for (std::int64_t i = 0; i < O * C; ++i) gwp[i] = static_cast<T>(acc[static_cast<std::size_t>(i)]);
                g.add(1, std::move(gw));
            }
        });
    });
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
