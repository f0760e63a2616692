// Coupling layers: affine_coupling (RealNVP) and additive_coupling (NICE).
//
// The event is seen as D flat features, split by a mask into a transformed set and a
// conditioning set. The conditioner maps the conditioning features (plus the flow's context)
// to `raw`, and the transformed features are updated from it:
//   affine, inverse (x -> z): z_t = x_t * exp(s) + t, log_det = sum s
//   affine, forward (z -> x): x_t = (z_t - t) * exp(-s), log_det = -sum s
//   additive: z_t = x_t + t, log_det = 0
// with raw = [s_raw (d_t columns), t (d_t columns)] and s = c * tanh(s_raw / c) (c = scale_clamp;
// c = 0 means s = s_raw).
//
// The update is one fused op over the whole [B, D] input: it writes the transformed features and
// copies the others, so the layer needs no slice/concat or gather/scatter on the output, only
// one slice (or gather) for the conditioner's input. The log-det is a second op whose value the
// same kernel computes; both backward rules accumulate into raw's gradient buffer in place,
// from factors the forward kernel kept (no tanh or exp of their own).
#include <cmath>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include <flowlab/ops.hpp>
#include <flowlab/parallel.hpp>

#include "standard.hpp"

namespace flowlab::standard {
namespace {

// Which of the D flat features are transformed (the toolkit's coupling split).
using Mask = CouplingSplit;

std::shared_ptr<const Mask> make_mask(const std::string& kind, std::int64_t parity, std::int64_t dim,
                                      const char* layer) {
    return std::make_shared<const Mask>(coupling_split(kind, parity, dim, layer));
}

template <class T>
struct SoftClamp {
    T c;  // 0 = identity
    T s(T raw) const { return c > T(0) ? c * std::tanh(raw / c) : raw; }
    // ds/draw from s itself: 1 - tanh^2 = 1 - (s/c)^2.
    T ds(T s) const {
        if (c <= T(0)) return T(1);
        T u = s / c;
        return T(1) - u * u;
    }
};

// ------------------------------------------------------------------------------------ affine

// out and log_det for rows [r0, r1). inverse: data -> latent. With `aux` (rows of 2 * d_t, when
// a backward pass will follow): ds/draw and the update's factor e (exp(s) inverse, exp(-s)
// forward) of each transformed column, so that the two backward rules need no tanh or exp of
// their own (they were two thirds of the layer's transcendental calls).
template <class T>
void affine_fwd_kernel(const T* x, const T* raw, T* out, T* ld, T* aux, std::int64_t r0, std::int64_t r1,
                       const Mask& m, SoftClamp<T> clamp, bool inverse) {
    const std::int64_t D = m.dim, dt = m.d_trans();
    const std::int32_t* slot = m.slot.data();
    for (std::int64_t b = r0; b < r1; ++b) {
        const T* xr = x + b * D;
        const T* rr = raw + b * 2 * dt;
        T* orow = out + b * D;
        T* ar = aux ? aux + b * 2 * dt : nullptr;
        T acc = T(0);
        for (std::int64_t j = 0; j < D; ++j) {
            const std::int32_t k = slot[j];
            if (k < 0) {
                orow[j] = xr[j];
                continue;
            }
            const T s = clamp.s(rr[k]);
            const T t = rr[dt + k];
            const T e = std::exp(inverse ? s : -s);
            orow[j] = inverse ? xr[j] * e + t : (xr[j] - t) * e;
            if (ar) {
                ar[k] = clamp.ds(s);
                ar[dt + k] = e;
            }
            acc += s;
        }
        ld[b] = inverse ? acc : -acc;
    }
}

// Gradients of the update for rows [r0, r1), accumulated into gx and graw (either may be null).
// Uses the op's output instead of its input: inverse: x*e^s = out - t; forward: d out/ds = -out.
template <class T>
void affine_bwd_kernel(const T* gy, const T* out, const T* raw, const T* aux, T* gx, T* graw, std::int64_t r0,
                       std::int64_t r1, const Mask& m, bool inverse) {
    const std::int64_t D = m.dim, dt = m.d_trans();
    const std::int32_t* slot = m.slot.data();
    for (std::int64_t b = r0; b < r1; ++b) {
        const T* g = gy + b * D;
        const T* o = out + b * D;
        const T* rr = raw + b * 2 * dt;
        const T* ar = aux + b * 2 * dt;
        T* gxr = gx ? gx + b * D : nullptr;
        T* grr = graw ? graw + b * 2 * dt : nullptr;
        for (std::int64_t j = 0; j < D; ++j) {
            const std::int32_t k = slot[j];
            if (k < 0) {
                if (gxr) gxr[j] += g[j];
                continue;
            }
            const T t = rr[dt + k];
            const T ds = ar[k], e = ar[dt + k];
            if (gxr) gxr[j] += g[j] * e;
            if (grr) {
                if (inverse) {
                    grr[k] += g[j] * (o[j] - t) * ds;
                    grr[dt + k] += g[j];
                } else {
                    grr[k] -= g[j] * o[j] * ds;
                    grr[dt + k] -= g[j] * e;
                }
            }
        }
    }
}

// d log_det / d raw: +-ds/draw on the s columns.
template <class T>
void affine_logdet_bwd_kernel(const T* gld, const T* aux, T* graw, std::int64_t r0, std::int64_t r1, std::int64_t dt,
                              bool inverse) {
    for (std::int64_t b = r0; b < r1; ++b) {
        const T g = inverse ? gld[b] : -gld[b];
        const T* ar = aux + b * 2 * dt;
        T* grr = graw + b * 2 * dt;
        for (std::int64_t k = 0; k < dt; ++k) grr[k] += g * ar[k];
    }
}

FlowResult affine_update(const Var& x, const Var& raw, const std::shared_ptr<const Mask>& mask, double clamp,
                         bool inverse) {
    const Tensor& rv = raw.value();
    // The backward rules' factors, only when a backward pass can follow.
    Tensor aux;
    if (grad_enabled() && (x.requires_grad() || raw.requires_grad())) aux = Tensor::empty(rv.shape(), rv.dtype());
    // Per transformed feature an exp, and a tanh when clamped: without the weight, a 2-d flow's
    // 10,000-row sampling batch ran on one thread (a tenth of its time).
    const std::int64_t calls = clamp > 0.0 ? 2 : 1;
    OutAndLogDet fwd = rows_with_log_det(
        x.value(), rv, row_grain(mask->dim + kTranscendentalCost * calls * mask->d_trans()),
        [&](const auto* xp, const auto* rp, auto* op, auto* lp, std::int64_t r0, std::int64_t r1) {
            using T = std::remove_pointer_t<decltype(op)>;
            affine_fwd_kernel<T>(xp, rp, op, lp, aux.defined() ? aux.data<T>() : nullptr, r0, r1, *mask,
                                 SoftClamp<T>{static_cast<T>(clamp)}, inverse);
        });
    Var out_v = make_op(inverse ? "affine_coupling_inverse" : "affine_coupling_forward", std::move(fwd.out), {x, raw},
                        [rv, aux, mask, inverse](const Tensor& gy, const Tensor& y, GradSink& sink) {
                            with_grad_buffers(sink, y.dtype(), [&](auto tag, auto* gx, auto* gr) {
                                using T = decltype(tag);
                                const T* gp = gy.data<T>();
                                const T* yp = y.data<T>();
                                const T* rp = rv.data<T>();
                                const T* ap = aux.data<T>();
                                parallel_for(y.size(0), row_grain(mask->dim), [&](std::int64_t r0, std::int64_t r1) {
                                    affine_bwd_kernel<T>(gp, yp, rp, ap, gx, gr, r0, r1, *mask, inverse);
                                });
                            });
                        });
    Var ld_v = make_op("affine_coupling_log_det", std::move(fwd.log_det), {raw},
                       [aux, dt = mask->d_trans(), inverse](const Tensor& gld, const Tensor&, GradSink& sink) {
                           with_grad_buffer(sink, aux.dtype(), [&](auto tag, auto* gr) {
                               using T = decltype(tag);
                               const T* gp = gld.data<T>();
                               const T* ap = aux.data<T>();
                               parallel_for(aux.size(0), row_grain(2 * dt), [&](std::int64_t r0, std::int64_t r1) {
                                   affine_logdet_bwd_kernel<T>(gp, ap, gr, r0, r1, dt, inverse);
                               });
                           });
                       });
    return {out_v, ld_v};
}

// ---------------------------------------------------------------------------------- additive

template <class T>
void additive_kernel(const T* x, const T* raw, T* out, std::int64_t r0, std::int64_t r1, const Mask& m, T sign) {
    const std::int64_t D = m.dim, dt = m.d_trans();
    const std::int32_t* slot = m.slot.data();
    for (std::int64_t b = r0; b < r1; ++b) {
        const T* xr = x + b * D;
        const T* rr = raw + b * dt;
        T* orow = out + b * D;
        for (std::int64_t j = 0; j < D; ++j) {
            const std::int32_t k = slot[j];
            orow[j] = k < 0 ? xr[j] : xr[j] + sign * rr[k];
        }
    }
}

template <class T>
void additive_bwd_kernel(const T* gy, T* gx, T* graw, std::int64_t r0, std::int64_t r1, const Mask& m, T sign) {
    const std::int64_t D = m.dim, dt = m.d_trans();
    const std::int32_t* slot = m.slot.data();
    for (std::int64_t b = r0; b < r1; ++b) {
        const T* g = gy + b * D;
        if (gx) {
            T* gxr = gx + b * D;
            for (std::int64_t j = 0; j < D; ++j) gxr[j] += g[j];
        }
        if (graw) {
            T* grr = graw + b * dt;
            for (std::int64_t j = 0; j < D; ++j)
                if (slot[j] >= 0) grr[slot[j]] += sign * g[j];
        }
    }
}

Var additive_update(const Var& x, const Var& raw, const std::shared_ptr<const Mask>& mask, bool inverse) {
    const Tensor& xv = x.value();
    const Tensor& rv = raw.value();
    Tensor out = Tensor::empty(xv.shape(), xv.dtype());
    dispatch(xv.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* xp = xv.data<T>();
        const T* rp = rv.data<T>();
        T* op = out.data<T>();
        parallel_for(xv.size(0), row_grain(mask->dim), [&](std::int64_t r0, std::int64_t r1) {
            additive_kernel<T>(xp, rp, op, r0, r1, *mask, inverse ? T(1) : T(-1));
        });
    });
    return make_op(inverse ? "additive_coupling_inverse" : "additive_coupling_forward", std::move(out), {x, raw},
                   [mask, inverse](const Tensor& gy, const Tensor&, GradSink& sink) {
                       with_grad_buffers(sink, gy.dtype(), [&](auto tag, auto* gx, auto* gr) {
                           using T = decltype(tag);
                           const T* gp = gy.data<T>();
                           parallel_for(gy.size(0), row_grain(mask->dim), [&](std::int64_t r0, std::int64_t r1) {
                               additive_bwd_kernel<T>(gp, gx, gr, r0, r1, *mask, inverse ? T(1) : T(-1));
                           });
                       });
                   });
}

// ------------------------------------------------------------------------------------- layer

class Coupling final : public Bijector {
public:
    Coupling(const Params& p, const BuildContext& c, bool affine, const char* name)
        : affine_(affine), name_(name), clamp_(affine ? p.get_number("scale_clamp") : 0.0) {
        set_event_shape(c.event_shape);
        const std::int64_t dim = numel(c.event_shape);
        flat_ = c.event_shape.size() != 1;
        mask_ = make_mask(p.get_string("mask"), p.get_int("parity"), dim, name);
        Rng fallback(0);
        net_ = make_coupling_conditioner(p, c, *mask_, (affine ? 2 : 1) * mask_->d_trans(), c.rng ? *c.rng : fallback,
                                         name);
        add_child("conditioner", net_.get());
    }

protected:
    FlowResult do_inverse(const Var& x, const Var& context) override { return apply(x, context, true); }
    FlowResult do_forward(const Var& z, const Var& context) override { return apply(z, context, false); }

private:
    FlowResult apply(const Var& in, const Var& context, bool inverse) {
        const std::int64_t B = in.size(0);
        Var x = flat_ ? reshape(in, {B, mask_->dim}) : in;
        Var raw = coupling_conditioner(*net_, x, context, *mask_, (affine_ ? 2 : 1) * mask_->d_trans(), name_);
        check_same_dtype(x.value(), raw.value(), name_.c_str());
        FlowResult r;
        if (affine_) {
            r = affine_update(x, raw, mask_, clamp_, inverse);
        } else {
            r.out = additive_update(x, raw, mask_, inverse);
            r.log_det = Var(Tensor::zeros({B}, x.dtype()));
        }
        if (flat_) r.out = reshape(r.out, in.shape());
        return r;
    }

    bool affine_;
    std::string name_;
    double clamp_;
    bool flat_ = false;
    std::shared_ptr<const Mask> mask_;
    std::unique_ptr<Conditioner> net_;
};

Schema coupling_schema(bool affine) {
    Schema s = coupling_split_params();
    s.push_back(param_object("conditioner", R"({"type": "mlp"})",
                             std::string("network from the conditioning features (and context) to ") +
                                 (affine ? "(s_raw, t), d_t columns each" : "the shift t")));
    if (affine)
        s.push_back(param_number("scale_clamp", 1.0, "soft clamp c of the log-scale: s = c*tanh(s_raw/c); 0 = none")
                        .min(0.0));
    return s;
}

ConformanceHints coupling_hints() {
    ConformanceHints h;
    h.shapes = {{2}, {5}};
    h.params_json = R"({"conditioner": {"type": "mlp", "hidden": [16, 16]}})";
    return h;
}

}  // namespace

void register_couplings(Registry& reg) {
    reg.add_bijector({"affine_coupling",
                      "RealNVP affine coupling: z_t = x_t*exp(s) + t with (s, t) from the other features",
                      coupling_schema(true),
                      [](const Params& p, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<Coupling>(p, c, true, "affine_coupling");
                      },
                      coupling_hints()});
    reg.add_bijector({"additive_coupling", "NICE additive coupling: z_t = x_t + t with t from the other features",
                      coupling_schema(false),
                      [](const Params& p, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<Coupling>(p, c, false, "additive_coupling");
                      },
                      coupling_hints()});
}

}  // namespace flowlab::standard
