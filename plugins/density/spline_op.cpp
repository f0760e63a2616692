// The fused spline op. The output and the log-det are two graph nodes (the flow uses them
// separately), but they share one backward kernel: the log-det node depends on the output node,
// so its rule runs first and only parks its gradient; the output node's rule then does the
// whole element-wise backward once, for both.
#include "spline_op.hpp"

#include <flowlab/ops.hpp>
#include <flowlab/parallel.hpp>

#include "density.hpp"

namespace flowlab::density {

SplineLayout SplineLayout::blocked(std::int64_t dim, int params) {
    SplineLayout l;
    l.dim = dim;
    l.slot.resize(static_cast<std::size_t>(dim));
    for (std::int64_t j = 0; j < dim; ++j) l.slot[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(j);
    l.raw_cols = dim * params;
    l.stride_dim = 1;
    l.stride_param = dim;
    return l;
}

SplineLayout SplineLayout::per_feature(std::vector<std::int32_t> slot, std::int64_t n_trans, int params) {
    SplineLayout l;
    l.dim = static_cast<std::int64_t>(slot.size());
    l.slot = std::move(slot);
    l.raw_cols = n_trans * params;
    l.stride_dim = params;
    l.stride_param = 1;
    return l;
}

// Named (not anonymous) so that the unit tests can compile this file into their binary
// without -Wsubobject-linkage noise; the plugin's symbols are hidden anyway.
namespace spline_detail {

struct Parked {
    Tensor g_log_det;  // set by the log-det node's rule, consumed by the output node's rule
};

template <class T>
void spline_fwd_rows(const T* in, const T* raw, T* out, T* ld, std::int64_t r0, std::int64_t r1,
                     const SplineLayout& L, const rqs::SplineConfig& cfg, bool forward_dir) {
    for (std::int64_t b = r0; b < r1; ++b) {
        const T* xr = in + b * L.dim;
        const T* rr = raw + b * L.raw_cols;
        T* orow = out + b * L.dim;
        T acc = 0;
        for (std::int64_t j = 0; j < L.dim; ++j) {
            const std::int32_t k = L.slot[static_cast<std::size_t>(j)];
            if (k < 0) {
                orow[j] = xr[j];
                continue;
            }
            const rqs::Knots<T> kn(cfg, rr + k * L.stride_dim, L.stride_param);
            T y, l;
            rqs::transform(kn, forward_dir, xr[j], y, l);
            orow[j] = y;
            acc += l;
        }
        ld[b] = acc;
    }
}

template <class T>
void spline_bwd_rows(const T* in, const T* raw, const T* gy, const T* gld, T* gin, T* graw, std::int64_t r0,
                     std::int64_t r1, const SplineLayout& L, const rqs::SplineConfig& cfg, bool forward_dir) {
    const int P = cfg.num_params();
    T scratch[3 * rqs::kMaxBins];
    for (std::int64_t b = r0; b < r1; ++b) {
        const T* xr = in + b * L.dim;
        const T* rr = raw + b * L.raw_cols;
        const T gl = gld ? gld[b] : T(0);
        for (std::int64_t j = 0; j < L.dim; ++j) {
            const std::int32_t k = L.slot[static_cast<std::size_t>(j)];
            const T g = gy ? gy[b * L.dim + j] : T(0);
            if (k < 0) {
                if (gin) gin[b * L.dim + j] += g;
                continue;
            }
            const rqs::Knots<T> kn(cfg, rr + k * L.stride_dim, L.stride_param);
            // graw may be null (only the input needs a gradient): accumulate into scratch.
            T* gr = graw ? graw + b * L.raw_cols + k * L.stride_dim : scratch;
            const std::int64_t gs = graw ? L.stride_param : 1;
            if (!graw) std::fill(scratch, scratch + P, T(0));
            const T gx = forward_dir ? rqs::forward_backward(kn, xr[j], g, gl, gr, gs)
                                     : rqs::inverse_backward(kn, xr[j], g, gl, gr, gs);
            if (gin) gin[b * L.dim + j] += gx;
        }
    }
}

}  // namespace spline_detail
using namespace spline_detail;

FlowResult spline_transform(const Var& in, const Var& raw, const std::shared_ptr<const SplineLayout>& layout,
                            const rqs::SplineConfig& cfg, bool forward_dir) {
    const Tensor& xv = in.value();
    const Tensor& rv = raw.value();
    const SplineLayout& L = *layout;
    const std::int64_t B = xv.size(0);
    if (xv.dim() != 2 || xv.size(1) != L.dim)
        throw ShapeError("spline: input " + shape_str(xv.shape()) + ", expected [B, " + std::to_string(L.dim) + "]");
    if (rv.shape() != Shape{B, L.raw_cols})
        throw ShapeError("spline: raw parameters " + shape_str(rv.shape()) + ", expected " +
                         shape_str({B, L.raw_cols}));
    check_same_dtype(xv, rv, "spline");
    if (cfg.bins < 1 || cfg.bins > rqs::kMaxBins) throw ConfigError("spline: bins must lie in [1, 64]");
    OutAndLogDet fwd = rows_with_log_det(
        xv, rv, row_grain(L.raw_cols * 8),
        [&](const auto* xp, const auto* rp, auto* op, auto* lp, std::int64_t r0, std::int64_t r1) {
            spline_fwd_rows(xp, rp, op, lp, r0, r1, L, cfg, forward_dir);
        });
    auto parked = std::make_shared<Parked>();
    Var out_v = make_op(
        forward_dir ? "spline_forward" : "spline_inverse", std::move(fwd.out), {in, raw},
        [xv, rv, layout, cfg, forward_dir, parked](const Tensor& gy, const Tensor&, GradSink& sink) {
            Tensor gld = std::move(parked->g_log_det);
            parked->g_log_det = Tensor();
            with_grad_buffers(sink, xv.dtype(), [&](auto tag, auto* gin, auto* gr) {
                using T = decltype(tag);
                const T* gyp = gy.data<T>();
                const T* glp = gld.defined() ? gld.data<T>() : nullptr;
                const T* xp = xv.data<T>();
                const T* rp = rv.data<T>();
                parallel_for(xv.size(0), row_grain(layout->raw_cols * 16), [&](std::int64_t r0, std::int64_t r1) {
                    spline_bwd_rows<T>(xp, rp, gyp, glp, gin, gr, r0, r1, *layout, cfg, forward_dir);
                });
            });
        });
    Var ld_v = make_op(forward_dir ? "spline_forward_log_det" : "spline_inverse_log_det", std::move(fwd.log_det), {out_v},
                       [parked](const Tensor& gld, const Tensor&, GradSink& sink) {
                           parked->g_log_det = gld.clone();
                           // The output node's rule does the work; it runs only if its gradient
                           // exists, so make sure it does.
                           if (sink.needs(0)) sink.buffer(0);
                       });
    return {out_v, ld_v};
}

}  // namespace flowlab::density
