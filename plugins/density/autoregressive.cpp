// Autoregressive layers on MADE: `maf` (Gaussian MADE, affine) and `spline_autoregressive`
// (rational-quadratic spline per feature).
//
// Both have a fast map from the side MADE reads (a) to the other side (b):
//   affine: b_i = (a_i - mu_i) * exp(-alpha_i), log|db/da| = -sum alpha, (mu, alpha) = MADE(a)
//   spline: b_i = spline(a_i; theta_i),           theta = MADE(a)
// and a slow inverse that solves a from b degree by degree (made.hpp: about one network pass,
// not D). `direction` places them: "maf" reads the data (inverse, i.e. density, is fast;
// sampling is the slow solve), "iaf" reads the latent (sampling is fast; density is the solve).
// An iaf layer is exactly the inverse bijector of the maf layer with the same parameters.
//
// The slow direction is differentiable: its value comes from the solver, and gradients follow
// the implicit function theorem. With F(a) = fast map, a = F^-1(b): db flows back as
// lambda = (dF/da)^-T g (made_solve_adjoint, one more sweep) and the parameters receive -lambda
// through one ordinary fast pass at the (detached) solution. The log-det is then recomputed by
// a second fast pass from the solution node, so its dependence on a is included.
#include <cmath>
#include <memory>
#include <string>

#include <flowlab/ops.hpp>
#include <flowlab/parallel.hpp>

#include "density.hpp"
#include "made.hpp"
#include "spline_op.hpp"

namespace flowlab::density {
namespace {

// ---------------------------------------------------------------- fused affine (fast) map

template <class T>
void affine_rows(const T* a, const T* u, T* out, T* ld, std::int64_t r0, std::int64_t r1, std::int64_t D) {
    for (std::int64_t r = r0; r < r1; ++r) {
        const T* ar = a + r * D;
        const T* mu = u + r * 2 * D;
        const T* al = mu + D;
        T* o = out + r * D;
        T acc = 0;
        for (std::int64_t i = 0; i < D; ++i) {
            o[i] = (ar[i] - mu[i]) * std::exp(-al[i]);
            acc += al[i];
        }
        ld[r] = -acc;
    }
}

// b = (a - mu) * exp(-alpha), log_det = -sum alpha, with u = [mu | alpha] of shape [B, 2D].
FlowResult affine_fast(const Var& a, const Var& u) {
    const Tensor& av = a.value();
    const Tensor& uv = u.value();
    const std::int64_t B = av.size(0), D = av.size(1);
    if (uv.shape() != Shape{B, 2 * D})
        throw ShapeError("maf: MADE output " + shape_str(uv.shape()) + ", expected " + shape_str({B, 2 * D}));
    check_same_dtype(av, uv, "maf");
    OutAndLogDet fwd = rows_with_log_det(
        av, uv, row_grain(D), [&](const auto* ap, const auto* up, auto* op, auto* lp, std::int64_t r0, std::int64_t r1) {
            affine_rows(ap, up, op, lp, r0, r1, D);
        });
    Var out_v = make_op("maf_affine", std::move(fwd.out), {a, u}, [uv, D](const Tensor& gy, const Tensor& y, GradSink& sink) {
        with_grad_buffers(sink, y.dtype(), [&](auto tag, auto* ga, auto* gu) {
            using T = decltype(tag);
            const T* gp = gy.data<T>();
            const T* yp = y.data<T>();
            const T* up = uv.data<T>();
            parallel_for(y.size(0), row_grain(D), [&](std::int64_t r0, std::int64_t r1) {
                for (std::int64_t r = r0; r < r1; ++r)
                    for (std::int64_t i = 0; i < D; ++i) {
                        const T g = gp[r * D + i];
                        const T e = std::exp(-up[r * 2 * D + D + i]);
                        if (ga) ga[r * D + i] += g * e;
                        if (gu) {
                            gu[r * 2 * D + i] -= g * e;
                            gu[r * 2 * D + D + i] -= g * yp[r * D + i];
                        }
                    }
            });
        });
    });
    Var ld_v = make_op("maf_log_det", std::move(fwd.log_det), {u}, [D](const Tensor& gld, const Tensor&, GradSink& sink) {
        with_grad_buffer(sink, gld.dtype(), [&](auto tag, auto* gu) {
            using T = decltype(tag);
            const T* gp = gld.data<T>();
            const std::int64_t B = gld.size(0);
            for (std::int64_t r = 0; r < B; ++r)
                for (std::int64_t i = 0; i < D; ++i) gu[r * 2 * D + D + i] -= gp[r];
        });
    });
    return {out_v, ld_v};
}

// ------------------------------------------------------------------------------- the layer

class Autoregressive final : public Bijector {
public:
    Autoregressive(const Params& p, const BuildContext& c, bool spline) : spline_(spline) {
        set_event_shape(c.event_shape);
        dim_ = numel(c.event_shape);
        if (c.event_shape.empty() || dim_ < 1)
            throw ShapeError(std::string(name()) + ": needs an event with at least one feature, got " +
                             shape_str(c.event_shape));
        iaf_ = p.get_string("direction") == "iaf";
        naive_ = p.get_string("inverse_method") == "naive";
        if (spline) {
            cfg_ = spline_config(p);
            layout_ = std::make_shared<const SplineLayout>(SplineLayout::blocked(dim_, cfg_.num_params()));
        }
        Rng rng = init_rng(c);
        MadeConfig mc;
        mc.dim = dim_;
        mc.context = c.context_shape.empty() ? 0 : numel(c.context_shape);
        mc.hidden = p.get_int_list("hidden");
        mc.params_per_dim = spline ? cfg_.num_params() : 2;
        mc.order = p.get_string("order");
        const std::int64_t seed = p.get_int("seed");
        mc.order_seed = seed >= 0 ? static_cast<std::uint64_t>(seed) : rng.next_u64();
        mc.activation = p.get_string("activation");
        mc.zero_init_last = true;
        made_ = std::make_unique<Made>(mc, rng);
        add_child("made", made_.get());
    }

protected:
    FlowResult do_inverse(const Var& x, const Var& context) override {
        return iaf_ ? slow(x, context) : fast(x, context);
    }
    FlowResult do_forward(const Var& z, const Var& context) override {
        return iaf_ ? fast(z, context) : slow(z, context);
    }

private:
    const char* name() const { return spline_ ? "spline_autoregressive" : "maf"; }

    Var flat(const Var& v) const { return v.value().dim() == 2 ? v : reshape(v, {v.size(0), dim_}); }
    Var unflat(const Var& v) const { return event_shape().size() == 1 ? v : reshape(v, with_batch(v.size(0), event_shape())); }

    // b = F(a) with MADE reading a.
    FlowResult fast_map(const Var& a, const Var& context) const {
        Var u = (*made_)(a, context);
        return spline_ ? spline_transform(a, u, layout_, cfg_, true) : affine_fast(a, u);
    }

    FlowResult fast(const Var& in, const Var& context) {
        FlowResult r = fast_map(flat(in), context);
        return {unflat(r.out), r.log_det};
    }

    template <class T>
    ElementTransform<T> element() const {
        ElementTransform<T> tr;
        tr.params = static_cast<int>(made_->params_per_dim());
        if (spline_) {
            const rqs::SplineConfig cfg = cfg_;
            tr.invert = [cfg](T b, const T* u, std::int64_t stride, T& a) {
                T ld;
                rqs::transform(rqs::Knots<T>(cfg, u, stride), false, b, a, ld);
                return ld;
            };
            tr.partials = [cfg](T a, const T* u, std::int64_t stride, T* du, std::int64_t dstride) {
                return rqs::forward_partials(rqs::Knots<T>(cfg, u, stride), a, T(1), du, dstride);
            };
        } else {
            tr.invert = [](T b, const T* u, std::int64_t stride, T& a) {
                const T alpha = u[stride];
                a = b * std::exp(alpha) + u[0];
                return alpha;
            };
            tr.partials = [](T a, const T* u, std::int64_t stride, T* du, std::int64_t dstride) {
                const T e = std::exp(-u[stride]);
                du[0] += -e;
                du[dstride] += -(a - u[0]) * e;
                return e;
            };
        }
        return tr;
    }

    FlowResult slow(const Var& in, const Var& context) {
        Var b = flat(in);
        const Tensor& bv = b.value();
        const Tensor cv = context.defined() ? context.value() : Tensor();
        Tensor a, ld;
        dispatch(bv.dtype(), [&](auto tag) {
            using T = decltype(tag);
            const ElementTransform<T> tr = element<T>();
            a = naive_ ? made_solve_naive<T>(*made_, bv, cv, tr, ld) : made_solve<T>(*made_, bv, cv, tr, ld);
        });
        if (!grad_enabled()) return {unflat(Var(a)), Var(ld)};

        // Differentiable: see the file comment.
        Var a_det(a);
        FlowResult at_solution = fast_map(a_det, context);
        const Made* made = made_.get();
        auto self = this;
        Var a_v = make_op(spline_ ? "spline_autoregressive_solve" : "maf_solve", a, {b, at_solution.out},
                          [made, self, a, cv](const Tensor& g, const Tensor&, GradSink& sink) {
                              Tensor lambda;
                              dispatch(g.dtype(), [&](auto tag) {
                                  using T = decltype(tag);
                                  lambda = made_solve_adjoint<T>(*made, a, cv, self->template element<T>(), g);
                              });
                              if (sink.needs(1)) sink.add(1, kern::neg(lambda));
                              if (sink.needs(0)) sink.add(0, lambda);
                          });
        FlowResult again = fast_map(a_v, context);
        return {unflat(a_v), -again.log_det};
    }

    bool spline_;
    bool iaf_ = false, naive_ = false;
    std::int64_t dim_ = 0;
    rqs::SplineConfig cfg_;
    std::shared_ptr<const SplineLayout> layout_;
    std::unique_ptr<Made> made_;
};

Schema common_schema(std::vector<std::int64_t> hidden) {
    Schema s = made_schema(std::move(hidden));
    s.push_back(param_string("direction", "maf",
                             "maf: density (inverse) is one pass, sampling solves degree by degree; "
                             "iaf: the reverse (the layer is the inverse of the maf one)")
                    .choices({"maf", "iaf"}));
    s.push_back(param_string("inverse_method", "incremental",
                             "how the slow direction solves: incremental (about one network pass) or "
                             "naive (D full passes; for tests and benchmarks)")
                    .choices({"incremental", "naive"}));
    return s;
}

ConformanceHints ar_hints(const char* params) {
    ConformanceHints h;
    h.shapes = {{1}, {6}, {2, 3}};
    h.params_json = params;
    return h;
}

}  // namespace

void register_autoregressive(Registry& reg) {
    reg.add_bijector({"maf",
                      "masked autoregressive flow layer: z = (x - mu(x)) * exp(-alpha(x)) with (mu, alpha) from MADE",
                      common_schema({128, 128}),
                      [](const Params& p, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<Autoregressive>(p, c, false);
                      },
                      ar_hints(R"({"hidden": [16, 16], "order": "random", "seed": 2})")});
    Schema ss = common_schema({128, 128});
    for (auto& ps : spline_schema_params()) ss.push_back(ps);
    reg.add_bijector({"spline_autoregressive",
                      "rational-quadratic spline per feature, its 3K-1 parameters from MADE on the preceding features",
                      ss,
                      [](const Params& p, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<Autoregressive>(p, c, true);
                      },
                      ar_hints(R"({"hidden": [16], "bins": 4, "tail_bound": 2.5})")});
}

}  // namespace flowlab::density
