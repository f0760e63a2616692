#include "backend/onednn.hpp"

#include "flowlab/errors.hpp"

namespace flowlab::backend {

Context::Context() : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {}

Context& Context::get() {
    static Context* c = new Context();
    return *c;
}

namespace {

struct GemmPrimitive {
    dnnl::matmul prim;
    dnnl::memory::desc a, b, c, bias;
};

GemmPrimitive make_gemm(const Gemm& g, const dnnl::engine& engine) {
    using dt = dnnl::memory::data_type;
    using dims = dnnl::memory::dims;
    GemmPrimitive p;
    p.a = dnnl::memory::desc({g.m, g.k}, dt::f32, g.trans_a ? dims{1, g.m} : dims{g.k, 1});
    p.b = dnnl::memory::desc({g.k, g.n}, dt::f32, g.trans_b ? dims{1, g.k} : dims{g.n, 1});
    p.c = dnnl::memory::desc({g.m, g.n}, dt::f32, dims{g.n, 1});
    if (g.bias) p.bias = dnnl::memory::desc({1, g.n}, dt::f32, dims{g.n, 1});
    dnnl::primitive_attr attr;
    if (g.alpha != 1.0f) attr.set_output_scales(0, {g.alpha});
    dnnl::post_ops po;
    if (g.beta != 0.0f) po.append_sum(g.beta);
    if (g.relu) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    attr.set_post_ops(po);
    try {
        dnnl::matmul::desc d = g.bias ? dnnl::matmul::desc(p.a, p.b, p.bias, p.c) : dnnl::matmul::desc(p.a, p.b, p.c);
        p.prim = dnnl::matmul(dnnl::matmul::primitive_desc(d, attr, engine));
    } catch (const dnnl::error& e) {
        throw Error("oneDNN cannot build a " + std::to_string(g.m) + "x" + std::to_string(g.k) + "x" +
                    std::to_string(g.n) + " GEMM: " + e.what());
    }
    return p;
}

}  // namespace

void sgemm(const Gemm& g, const float* a, const float* b, float* c, const float* bias) {
    Context& ctx = Context::get();
    CacheKey key("gemm");
    key.add(g.m).add(g.n).add(g.k).add(g.trans_a).add(g.trans_b).add(g.bias).add(g.relu).add(g.alpha).add(g.beta);
    const GemmPrimitive& p = ctx.cached<GemmPrimitive>(key, [&] { return make_gemm(g, ctx.engine()); });
    const dnnl::engine& e = ctx.engine();
    dnnl::memory am(p.a, e, const_cast<float*>(a)), bm(p.b, e, const_cast<float*>(b)), cm(p.c, e, c);
    if (g.bias) {
        dnnl::memory biasm(p.bias, e, const_cast<float*>(bias));
        p.prim.execute(ctx.stream(), {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_BIAS, biasm}, {DNNL_ARG_DST, cm}});
    } else {
        p.prim.execute(ctx.stream(), {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    }
    ctx.stream().wait();
}

}  // namespace flowlab::backend
