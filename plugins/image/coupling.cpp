// `conv_affine_coupling`: the affine coupling of Glow and RealNVP on images, with a
// convolutional conditioner (by default `cnn`).
//
// The channels (mask "channel") or the pixels (mask "checkerboard") are split into a
// conditioning part a and a transformed part b. The conditioner maps a (plus the flow's
// context) to h = [shift, scale_raw] (for the checkerboard, x with the transformed pixels zeroed
// goes in, and h holds a shift and scale_raw for every channel). Glow's update:
//   inverse (data -> latent): z_b = (x_b + shift) * sigmoid(scale_raw + 2),
//                             log-det = sum log sigmoid(scale_raw + 2)
//   forward (latent -> data): x_b = z_b / sigmoid(scale_raw + 2) - shift
// With "additive": true h is the shift alone and z_b = x_b + shift (log-det 0).
//
// The update is one fused op that writes the whole output (copying the conditioning part), and
// the log-det a second op; both accumulate into h's gradient in place.
#include <cmath>
#include <memory>

#include "image.hpp"

namespace flowlab::image {
namespace {

struct Plan {
    std::int64_t C = 0, P = 0;    // channels, pixels per channel
    std::int64_t t0 = 0, ct = 0;  // transformed channels [t0, t0 + ct); h has ct shift (+ ct raw) channels
    std::vector<std::uint8_t> pix;  // checkerboard: 1 where a pixel is transformed; empty = all
    bool additive = false;
    double offset = 2.0;            // added to scale_raw before the sigmoid
    std::int64_t h_channels() const { return additive ? ct : 2 * ct; }
};

template <class T>
inline T log_sigmoid(T u) {  // stable log(1 / (1 + e^-u))
    return u >= T(0) ? -std::log1p(std::exp(-u)) : u - std::log1p(std::exp(u));
}

// Rows [n0, n1): out and log-det. With `sv` ([B, ct, P], when a backward pass can follow): each
// transformed element's sigmoid, which the backward rules use instead of recomputing it.
template <class T>
void update_fwd(const T* x, const T* h, T* out, T* ld, T* sv, std::int64_t n0, std::int64_t n1, const Plan& p,
                bool inverse) {
    const std::int64_t C = p.C, P = p.P, hc = p.h_channels();
    const T off = static_cast<T>(p.offset);
    for (std::int64_t n = n0; n < n1; ++n) {
        T acc = T(0);
        for (std::int64_t c = 0; c < C; ++c) {
            const T* xr = x + (n * C + c) * P;
            T* orow = out + (n * C + c) * P;
            const std::int64_t k = c - p.t0;
            if (k < 0 || k >= p.ct) {
                std::copy(xr, xr + P, orow);
                continue;
            }
            const T* sh = h + (n * hc + k) * P;
            const T* raw = p.additive ? nullptr : h + (n * hc + p.ct + k) * P;
            T* srow = sv ? sv + (n * p.ct + k) * P : nullptr;
            for (std::int64_t q = 0; q < P; ++q) {
                if (!p.pix.empty() && !p.pix[static_cast<std::size_t>(q)]) {
                    orow[q] = xr[q];
                    continue;
                }
                if (p.additive) {
                    orow[q] = inverse ? xr[q] + sh[q] : xr[q] - sh[q];
                    continue;
                }
                const T u = raw[q] + off;
                const T s = T(1) / (T(1) + std::exp(-u));
                orow[q] = inverse ? (xr[q] + sh[q]) * s : xr[q] / s - sh[q];
                if (srow) srow[q] = s;
                acc += log_sigmoid(u);
            }
        }
        ld[n] = inverse ? acc : -acc;
    }
}

// Gradients of out (gy) and of the log-det (gld, may be null) for rows [n0, n1); sv is the
// forward pass's sigmoids (affine couplings).
template <class T>
void update_bwd(const T* gy, const T* gld, const T* out, const T* h, const T* sv, T* gx, T* gh, std::int64_t n0,
                std::int64_t n1, const Plan& p, bool inverse) {
    const std::int64_t C = p.C, P = p.P, hc = p.h_channels();
    for (std::int64_t n = n0; n < n1; ++n) {
        const T gl = gld ? (inverse ? gld[n] : -gld[n]) : T(0);
        for (std::int64_t c = 0; c < C; ++c) {
            const T* g = gy ? gy + (n * C + c) * P : nullptr;
            T* gxr = gx ? gx + (n * C + c) * P : nullptr;
            const std::int64_t k = c - p.t0;
            if (k < 0 || k >= p.ct) {
                if (gxr && g)
                    for (std::int64_t q = 0; q < P; ++q) gxr[q] += g[q];
                continue;
            }
            const T* o = out ? out + (n * C + c) * P : nullptr;  // additive couplings pass no output
            const T* sh = h + (n * hc + k) * P;
            const T* srow = p.additive ? nullptr : sv + (n * p.ct + k) * P;
            T* gsh = gh ? gh + (n * hc + k) * P : nullptr;
            T* graw = gh && !p.additive ? gh + (n * hc + p.ct + k) * P : nullptr;
            for (std::int64_t q = 0; q < P; ++q) {
                const bool trans = p.pix.empty() || p.pix[static_cast<std::size_t>(q)];
                if (!trans) {
                    if (gxr && g) gxr[q] += g[q];
                    continue;
                }
                if (p.additive) {
                    if (!g) continue;
                    if (gxr) gxr[q] += g[q];
                    if (gsh) gsh[q] += inverse ? g[q] : -g[q];
                    continue;
                }
                const T s = srow[q];
                // d log sigmoid(u) / du = 1 - s; the log-det's sign is folded into gl.
                T dr = gl * (T(1) - s);
                if (g) {
                    if (inverse) {  // out = (x + shift) s
                        if (gxr) gxr[q] += g[q] * s;
                        if (gsh) gsh[q] += g[q] * s;
                        dr += g[q] * o[q] * (T(1) - s);
                    } else {  // out = x / s - shift, d(1/s)/du = -(1 - s)/s
                        if (gxr) gxr[q] += g[q] / s;
                        if (gsh) gsh[q] -= g[q];
                        dr -= g[q] * (o[q] + sh[q]) * (T(1) - s);
                    }
                }
                if (graw) graw[q] += dr;
            }
        }
    }
}

FlowResult coupling_update(const Var& x, const Var& h, const std::shared_ptr<const Plan>& plan, bool inverse) {
    const Tensor& xv = x.value();
    const Tensor& hv = h.value();
    if (xv.dtype() != hv.dtype())
        throw ShapeError("conv_affine_coupling: the conditioner's output dtype differs from the input's");
    const std::int64_t B = xv.size(0);
    if (hv.numel() != B * plan->h_channels() * plan->P)
        throw ShapeError("conv_affine_coupling: conditioner output " + shape_str(hv.shape()) + " does not hold " +
                         std::to_string(plan->h_channels()) + " channels per sample");
    Tensor out = Tensor::empty(xv.shape(), xv.dtype());
    Tensor ld = Tensor::empty({B}, xv.dtype());
    // The sigmoids for the backward rules, only when a backward pass can follow.
    Tensor sv;
    if (!plan->additive && grad_enabled() && (x.requires_grad() || h.requires_grad()))
        sv = Tensor::empty({B, plan->ct, plan->P}, xv.dtype());
    const std::int64_t per_sample = plan->C * plan->P;
    // The work per sample in element-wise units, forward and backward alike: a transformed
    // element costs an exponential, a division and a logarithm forward, and backward (from the
    // stored sigmoid) reads five tensors and writes two, so a Glow-sized batch (64 x 4 x 196) is
    // split across the threads rather than run on one. (At one unit per element the backward
    // ran on one thread: W3's couplings 1.0 ms a step against 0.65 split.)
    const std::int64_t work_per_sample = 4 * per_sample;
    dispatch(xv.dtype(), [&](auto tag) {
        using T = decltype(tag);
        T* sp = sv.defined() ? sv.data<T>() : nullptr;
        parallel_samples(B, work_per_sample, [&](std::int64_t n0, std::int64_t n1) {
            update_fwd<T>(xv.data<T>(), hv.data<T>(), out.data<T>(), ld.data<T>(), sp, n0, n1, *plan, inverse);
        });
    });
    Var out_v = make_op(inverse ? "conv_coupling_inverse" : "conv_coupling_forward", std::move(out), {x, h},
                        [hv, sv, plan, inverse, work_per_sample](const Tensor& gy, const Tensor& y, GradSink& g) {
                            if (!g.needs(0) && !g.needs(1)) return;
                            dispatch(y.dtype(), [&](auto tag) {
                                using T = decltype(tag);
                                T* gx = g.needs(0) ? g.buffer(0).template data<T>() : nullptr;
                                T* gh = g.needs(1) ? g.buffer(1).template data<T>() : nullptr;
                                parallel_samples(y.size(0), work_per_sample, [&](std::int64_t n0, std::int64_t n1) {
                                    update_bwd<T>(gy.data<T>(), nullptr, y.data<T>(), hv.data<T>(),
                                                  sv.defined() ? sv.data<T>() : nullptr, gx, gh, n0, n1, *plan,
                                                  inverse);
                                });
                            });
                        });
    if (plan->additive) return {out_v, Var(Tensor::zeros({B}, xv.dtype()))};
    Var ld_v = make_op("conv_coupling_log_det", std::move(ld), {h},
                       [hv, sv, plan, inverse, per_sample, B](const Tensor& gld, const Tensor&, GradSink& g) {
                           if (!g.needs(0)) return;
                           dispatch(hv.dtype(), [&](auto tag) {
                               using T = decltype(tag);
                               T* gh = g.buffer(0).template data<T>();
                               parallel_samples(B, per_sample, [&](std::int64_t n0, std::int64_t n1) {
                                   update_bwd<T>(nullptr, gld.data<T>(), nullptr, hv.data<T>(), sv.data<T>(), nullptr,
                                                 gh, n0, n1, *plan, inverse);
                               });
                           });
                       });
    return {out_v, ld_v};
}

class ConvCoupling final : public Bijector {
public:
    ConvCoupling(const Params& p, const BuildContext& ctx) {
        const Shape& in = ctx.event_shape;
        require_image(in, "conv_affine_coupling");
        auto plan = std::make_shared<Plan>();
        plan->C = in[0];
        plan->P = in[1] * in[2];
        plan->additive = p.get_bool("additive");
        plan->offset = p.get_number("scale_offset");
        const std::int64_t parity = p.get_int("parity");
        checker_ = p.get_string("mask") == "checkerboard";
        Shape cond_in;
        if (checker_) {
            plan->t0 = 0;
            plan->ct = in[0];
            plan->pix.resize(static_cast<std::size_t>(plan->P));
            mask_ = Tensor::empty({1, in[1], in[2]}, DType::f64);  // 1 on conditioning pixels
            for (std::int64_t i = 0; i < in[1]; ++i)
                for (std::int64_t j = 0; j < in[2]; ++j) {
                    const bool trans = (i + j) % 2 != parity;
                    plan->pix[static_cast<std::size_t>(i * in[2] + j)] = trans ? 1 : 0;
                    mask_.set_item(i * in[2] + j, trans ? 0.0 : 1.0);
                }
            cond_in = in;
        } else {
            if (in[0] < 2 || in[0] % 2 != 0)
                throw ShapeError("conv_affine_coupling: the channel mask needs an even number of channels, got " +
                                 shape_str(in) + " (squeeze first, or use \"mask\": \"checkerboard\")");
            const std::int64_t half = in[0] / 2;
            plan->ct = half;
            plan->t0 = parity == 0 ? half : 0;
            cond0_ = parity == 0 ? 0 : half;
            cond_len_ = half;
            cond_in = {half, in[1], in[2]};
        }
        plan_ = plan;
        if (!ctx.registry || !ctx.rng) throw ConfigError("conv_affine_coupling: needs a registry and an rng to build its conditioner");
        ConditionerSpec spec{cond_in, {plan->h_channels(), in[1], in[2]}, ctx.context_shape, true};
        spec.networks = ctx.networks;
        conditioner_ = ctx.registry->make_conditioner(p.get_object("conditioner"), spec, *ctx.rng);
        add_child("conditioner", conditioner_.get());
    }

protected:
    FlowResult do_inverse(const Var& x, const Var& context) override {
        return coupling_update(x, params_of(x, context), plan_, true);
    }
    FlowResult do_forward(const Var& z, const Var& context) override {
        // The conditioning part passes through unchanged, so it is read from z.
        return coupling_update(z, params_of(z, context), plan_, false);
    }

private:
    Var params_of(const Var& x, const Var& context) {
        if (checker_) {
            if (mask_.dtype() != x.dtype()) mask_ = mask_.to(x.dtype());
            return (*conditioner_)(x * Var(mask_), context);
        }
        return (*conditioner_)(slice(x, 1, cond0_, cond_len_), context);
    }

    std::shared_ptr<const Plan> plan_;
    bool checker_ = false;
    Tensor mask_;
    std::int64_t cond0_ = 0, cond_len_ = 0;
    std::unique_ptr<Conditioner> conditioner_;
};

Schema coupling_schema(bool additive) {
    return {
        param_object("conditioner", R"({"type": "cnn"})", "network from the conditioning part to [shift, scale_raw]"),
        param_bool("additive", additive, "z_b = x_b + shift (NICE/Glow additive coupling, log-det 0)"),
        param_string("mask", "channel", "what conditions: the first half of the channels, or a checkerboard of pixels")
            .choices({"channel", "checkerboard"}),
        param_int("parity", 0, "channel: 0 conditions on the first half, 1 on the second; checkerboard: the "
                               "squares with (h + w) % 2 == parity condition")
            .range(0, 1),
        param_number("scale_offset", 2.0, "added to scale_raw before the sigmoid (2 starts the scale near 0.88)"),
    };
}

std::unique_ptr<Bijector> make_coupling(const Params& p, const BuildContext& c) {
    return std::make_unique<ConvCoupling>(p, c);
}

}  // namespace

void register_couplings(Registry& reg) {
    BijectorEntry affine{
        "conv_affine_coupling",
        "Glow/RealNVP affine coupling on images: z_b = (x_b + shift) sigmoid(scale_raw + 2), [shift, scale_raw] = NN(x_a)",
        coupling_schema(false), make_coupling};
    affine.hints.shapes = {{4, 4, 4}, {2, 3, 3}};
    affine.hints.params_json = R"({"conditioner": {"type": "cnn", "hidden": 8}})";
    reg.add_bijector(std::move(affine));

    // The same layer with "additive" on by default; its conformance runs the checkerboard mask.
    BijectorEntry additive{"conv_additive_coupling",
                           "additive coupling on images: z_b = x_b + shift, shift = NN(x_a) (log-det 0)",
                           coupling_schema(true), make_coupling};
    additive.hints.shapes = {{1, 4, 4}, {2, 3, 3}};
    additive.hints.params_json = R"({"mask": "checkerboard", "conditioner": {"type": "cnn", "hidden": 8}})";
    reg.add_bijector(std::move(additive));
}

}  // namespace flowlab::image
