// Convolutions through oneDNN's convolution primitives (forward, backward data, backward
// weights), cached per geometry in the shared oneDNN context; the OIHW weights are reordered
// per call into the layout oneDNN picked.
#include <algorithm>
#include <mutex>
#include <unordered_map>

#include "backend/onednn.hpp"
#include "ops/conv_internal.hpp"

namespace flowlab::conv_detail {

namespace {

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

// The primitives of one convolution geometry. The backward ones are made on first use
// (evaluation never needs them).
struct ConvPrims {
    memory::desc src, dst, w_user, bias;
    dnnl::convolution_forward::primitive_desc fwd_pd;
    dnnl::convolution_forward fwd;
    // Every primitive here takes its scratchpad from the executing thread (Context::scratchpad):
    // with the library's own, a primitive made on one thread and run on another - replicas
    // sharing the cache - wrote into the first thread's buffer.
    memory::desc fwd_scratch, w_to_fwd_scratch, bwd_data_scratch, w_to_bwd_scratch, bwd_weights_scratch,
        dw_to_user_scratch;
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

memory::dims dims_of(std::initializer_list<std::int64_t> v) { return memory::dims(v.begin(), v.end()); }

std::string describe(const ConvKey& k) {
    return "conv2d [" + std::to_string(k.b) + ", " + std::to_string(k.c) + ", " + std::to_string(k.h) + ", " +
           std::to_string(k.w) + "] (" + layout_name(k.li) + ") -> " + std::to_string(k.o) + " channels (" +
           layout_name(k.lo) + "), kernel " + std::to_string(k.kh) + "x" + std::to_string(k.kw);
}

dnnl::primitive_attr user_scratchpad() {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return attr;
}

// A reorder from `from` to `to` whose scratchpad the caller passes (`scratch` its size).
dnnl::reorder make_reorder(const memory::desc& from, const memory::desc& to, const dnnl::engine& engine,
                           memory::desc& scratch) {
    const dnnl::reorder::primitive_desc pd(engine, from, engine, to, user_scratchpad());
    scratch = pd.scratchpad_desc();
    return dnnl::reorder(pd);
}

// The calling thread's scratchpad as the memory argument for a primitive wanting `d`.
memory scratch_arg(backend::Context& ctx, const memory::desc& d) {
    return memory(d, ctx.engine(), backend::Context::scratchpad(std::max<std::size_t>(d.get_size(), 64)));
}

ConvPrims build_conv(const ConvKey& k, const dnnl::engine& engine) {
    using dt = memory::data_type;
    const std::int64_t oh = (k.h + 2 * k.pad - k.kh) / k.stride + 1, ow = (k.w + 2 * k.pad - k.kw) / k.stride + 1;
    ConvPrims p;
    p.src = memory::desc(dims_of({k.b, k.c, k.h, k.w}), dt::f32, dnnl_tag(k.li));
    p.dst = memory::desc(dims_of({k.b, k.o, oh, ow}), dt::f32, dnnl_tag(k.lo));
    p.w_user = memory::desc(dims_of({k.o, k.c, k.kh, k.kw}), dt::f32, tag::oihw);
    memory::desc w_any(dims_of({k.o, k.c, k.kh, k.kw}), dt::f32, tag::any);
    if (k.bias) p.bias = memory::desc(dims_of({k.o}), dt::f32, tag::x);
    const memory::dims st = dims_of({k.stride, k.stride}), pad = dims_of({k.pad, k.pad});
    dnnl::convolution_forward::desc fd =
        k.bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                                 p.src, w_any, p.bias, p.dst, st, pad, pad)
               : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                                 p.src, w_any, p.dst, st, pad, pad);
    dnnl::primitive_attr attr = user_scratchpad();
    if (k.relu) {
        dnnl::post_ops po;
        po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
        attr.set_post_ops(po);
    }
    p.fwd_pd = dnnl::convolution_forward::primitive_desc(fd, attr, engine);
    p.fwd = dnnl::convolution_forward(p.fwd_pd);
    p.fwd_scratch = p.fwd_pd.scratchpad_desc();
    p.w_fwd = p.fwd_pd.weights_desc();
    if (p.w_fwd != p.w_user) p.w_to_fwd = make_reorder(p.w_user, p.w_fwd, engine, p.w_to_fwd_scratch);
    return p;
}

// The cached primitives of `k`'s geometry, made on first use.
ConvPrims& conv_prims(const ConvKey& k) {
    backend::Context& ctx = backend::Context::get();
    backend::CacheKey key("conv2d");
    key.add(k.b).add(k.c).add(k.h).add(k.w).add(k.o).add(k.kh).add(k.kw).add(k.stride).add(k.pad).add(k.li).add(k.lo)
        .add(k.relu).add(k.bias);
    return ctx.cached<ConvPrims>(key, [&] {
        try {
            return build_conv(k, ctx.engine());
        } catch (const dnnl::error& e) {
            throw Error(describe(k) + ": oneDNN cannot build the convolution: " + e.what());
        }
    });
}

void build_backward(const ConvKey& k, ConvPrims& p, const dnnl::engine& engine) {
    using dt = memory::data_type;
    memory::desc w_any(dims_of({k.o, k.c, k.kh, k.kw}), dt::f32, tag::any);
    const memory::dims st = dims_of({k.stride, k.stride}), pad = dims_of({k.pad, k.pad});
    dnnl::convolution_backward_data::desc bdd(dnnl::algorithm::convolution_direct, p.src, w_any, p.dst, st, pad, pad);
    dnnl::convolution_backward_data::primitive_desc bd_pd(bdd, user_scratchpad(), engine, p.fwd_pd);
    p.bwd_data = dnnl::convolution_backward_data(bd_pd);
    p.bwd_data_scratch = bd_pd.scratchpad_desc();
    p.w_bwd = bd_pd.weights_desc();
    if (p.w_bwd != p.w_fwd && p.w_bwd != p.w_user) p.w_to_bwd = make_reorder(p.w_user, p.w_bwd, engine, p.w_to_bwd_scratch);
    dnnl::convolution_backward_weights::desc bwd =
        k.bias ? dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, p.src, w_any, p.bias,
                                                          p.dst, st, pad, pad)
               : dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, p.src, w_any, p.dst,
                                                          st, pad, pad);
    dnnl::convolution_backward_weights::primitive_desc bw_pd(bwd, user_scratchpad(), engine, p.fwd_pd);
    p.bwd_weights = dnnl::convolution_backward_weights(bw_pd);
    p.bwd_weights_scratch = bw_pd.scratchpad_desc();
    p.dw = bw_pd.diff_weights_desc();
    if (p.dw != p.w_user) p.dw_to_user = make_reorder(p.dw, p.w_user, engine, p.dw_to_user_scratch);
    p.has_bwd = true;
}

// The backward primitives are made on first use (evaluation never needs them); the caller
// holds the context's mutex while they are made, not while they run.
void make_backward(const ConvKey& k, ConvPrims& p, const dnnl::engine& engine) {
    if (p.has_bwd) return;
    try {
        build_backward(k, p, engine);
    } catch (const dnnl::error& e) {
        throw Error(describe(k) + ": oneDNN cannot build the convolution's backward: " + e.what());
    }
}

// A scratch tensor big enough for `d` (oneDNN's padded size), as f32.
Tensor scratch_for(const memory::desc& d) {
    return Tensor::empty({static_cast<std::int64_t>((d.get_size() + 3) / 4)}, DType::f32);
}

// The weights in the layout `want`: the parameter itself when it already is, else a reorder.
memory weights_as(backend::Context& ctx, const ConvPrims& p, const Tensor& w, const memory::desc& want,
                  const dnnl::reorder& re, const memory::desc& re_scratch, Tensor& holder) {
    memory user(p.w_user, ctx.engine(), const_cast<void*>(w.raw()));
    if (want == p.w_user) return user;
    holder = scratch_for(want);
    memory out(want, ctx.engine(), holder.raw());
    re.execute(ctx.stream(), {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, out}, {DNNL_ARG_SCRATCHPAD, scratch_arg(ctx, re_scratch)}});
    return out;
}

}  // namespace

// oneDNN's convolution, the activations in the caller's layout and the weights in oneDNN's.
Var conv2d_onednn(const Var& x, const Var& w, const Var& b, const Conv2dOptions& opt, const ConvCall& call) {
    const Tensor& X = x.value();
    const Tensor& W = w.value();
    const Tensor* B = b.defined() ? &b.value() : nullptr;
    Tensor y = call.new_output(opt.out_layout, X.dtype());

    backend::Context& ctx = backend::Context::get();
    ConvPrims& p = conv_prims(call.key);  // throws Error if oneDNN has no implementation
    // No lock while running: with the scratchpads the caller's, primitives run on several
    // threads at once (replicas).
    Tensor w_held;
    memory wm = weights_as(ctx, p, W, p.w_fwd, p.w_to_fwd, p.w_to_fwd_scratch, w_held);
    memory xm(p.src, ctx.engine(), const_cast<void*>(X.raw()));
    memory ym(p.dst, ctx.engine(), y.raw());
    if (B) {
        memory bm(p.bias, ctx.engine(), const_cast<void*>(B->raw()));
        p.fwd.execute(ctx.stream(), {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_BIAS, bm}, {DNNL_ARG_DST, ym},
                                     {DNNL_ARG_SCRATCHPAD, scratch_arg(ctx, p.fwd_scratch)}});
    } else {
        p.fwd.execute(ctx.stream(), {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym},
                                     {DNNL_ARG_SCRATCHPAD, scratch_arg(ctx, p.fwd_scratch)}});
    }
    ctx.stream().wait();

    std::vector<Var> inputs = {x, w};
    if (b.defined()) inputs.push_back(b);
    // The reordered forward weights are kept for the backward-data pass when it wants the same
    // layout (it usually does), saving a second reorder.
    return make_op("conv2d", std::move(y), std::move(inputs),
                   [x, w, call, opt, w_held](const Tensor& gy, const Tensor& yv, GradSink& g) {
                       const bool need_x = g.needs(0), need_w = g.needs(1), need_b = call.key.bias && g.needs(2);
                       if (!need_x && !need_w && !need_b) return;
                       const Tensor gm = opt.relu ? relu_mask<float>(gy, yv) : gy;
                       backend::Context& c = backend::Context::get();
                       ConvPrims& pr = conv_prims(call.key);
                       {
                           std::lock_guard<std::mutex> guard(c.mutex());
                           make_backward(call.key, pr, c.engine());
                       }
                       memory gym(pr.dst, c.engine(), const_cast<void*>(gm.raw()));
                       if (need_x) {
                           Tensor gx = Tensor::empty(x.shape(), DType::f32);
                           Tensor held;
                           memory wm2 = pr.w_bwd == pr.w_fwd && w_held.defined()
                                            ? memory(pr.w_fwd, c.engine(), const_cast<void*>(w_held.raw()))
                                            : weights_as(c, pr, w.value(), pr.w_bwd,
                                                         pr.w_bwd == pr.w_fwd ? pr.w_to_fwd : pr.w_to_bwd,
                                                         pr.w_bwd == pr.w_fwd ? pr.w_to_fwd_scratch : pr.w_to_bwd_scratch,
                                                         held);
                           memory gxm(pr.src, c.engine(), gx.raw());
                           pr.bwd_data.execute(c.stream(),
                                               {{DNNL_ARG_DIFF_DST, gym}, {DNNL_ARG_WEIGHTS, wm2}, {DNNL_ARG_DIFF_SRC, gxm},
                                                {DNNL_ARG_SCRATCHPAD, scratch_arg(c, pr.bwd_data_scratch)}});
                           c.stream().wait();
                           g.add(0, std::move(gx));
                       }
                       if (need_w || need_b) {
                           Tensor gw = Tensor::empty(w.shape(), DType::f32);
                           Tensor gw_raw = pr.dw == pr.w_user ? gw : scratch_for(pr.dw);
                           memory dwm(pr.dw, c.engine(), gw_raw.raw());
                           memory xm2(pr.src, c.engine(), const_cast<void*>(x.value().raw()));
                           Tensor gb;
                           std::unordered_map<int, memory> args = {
                               {DNNL_ARG_SRC, xm2}, {DNNL_ARG_DIFF_DST, gym}, {DNNL_ARG_DIFF_WEIGHTS, dwm},
                               {DNNL_ARG_SCRATCHPAD, scratch_arg(c, pr.bwd_weights_scratch)}};
                           if (call.key.bias) {
                               gb = Tensor::empty({call.go.c}, DType::f32);
                               args.insert({DNNL_ARG_DIFF_BIAS, memory(pr.bias, c.engine(), gb.raw())});
                           }
                           pr.bwd_weights.execute(c.stream(), args);
                           if (pr.dw != pr.w_user) {
                               memory user(pr.w_user, c.engine(), gw.raw());
                               pr.dw_to_user.execute(c.stream(), {{DNNL_ARG_FROM, dwm}, {DNNL_ARG_TO, user},
                                                                  {DNNL_ARG_SCRATCHPAD, scratch_arg(c, pr.dw_to_user_scratch)}});
                           }
                           c.stream().wait();
                           if (need_w) g.add(1, std::move(gw));
                           if (need_b) g.add(2, std::move(gb));
                       }
                   });
}

}  // namespace flowlab::conv_detail
