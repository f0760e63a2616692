// The fused logistic-mixture CDF transform (mixture_op.hpp).
//
// Per value, with t_k = (x - mu_k) / s_k, the transform needs three logs:
//   lc  = log F(x)       = log sum_k pi_k sigmoid(t_k)
//   lcc = log(1 - F(x))  = log sum_k pi_k sigmoid(-t_k)
//   lf  = log F'(x)      = log sum_k pi_k sigmoid(t_k) sigmoid(-t_k) / s_k
// so that y = logit(F(x)) = lc - lcc and log dy/dx = lf - lc - lcc (the logit's derivative
// 1 / (F (1 - F)) taken as -lc - lcc). 1 - F is never formed by subtracting F from 1: it is a
// mixture of the components' upper tails, sigmoid(-t) = 1 - sigmoid(t), each computed from
// e^-|t| without cancellation, so neither log can round to log 0 and no clamp of F away from 0
// and 1 is needed (Flow++ computes F itself, whose logit overflows in f32 once F rounds to 1,
// about 17 scales above the top component). The sums are taken directly (one exp per
// component), and in log space with logsumexp only when one of them nears underflow (x far in a
// tail). The logit of a mixture lies between its components' logits, min_k t_k <= y <=
// max_k t_k, which brackets the numerical inverse exactly: x in [min_k (mu_k + s_k u),
// max_k (mu_k + s_k u)] for target u.
//
// Gradients (per value; a scalar Q = alpha lc + beta lcc + gamma lf):
//   dQ/dt_k = alpha wA_k (1 - sig_k) - beta wB_k sig_k + gamma wC_k (1 - 2 sig_k) =: G_k
//   with wA, wB, wC each sum's terms over the sum and sig_k = sigmoid(t_k);
//   dQ/dx = sum_k G_k / s_k, dQ/dmu_k = -G_k / s_k, dQ/dlog s_k = -G_k t_k - gamma wC_k,
//   dQ/dlogit_j = alpha (wA_j - pi_j) + beta (wB_j - pi_j) + gamma (wC_j - pi_j).
// The inverse direction is Q with (alpha, beta, gamma) from the output's and the log-det's
// incoming gradients; the solved direction adds the implicit function theorem's dx/du = 1/y'(x),
// dx/dtheta = -(dy/dtheta) / y'(x) (as the spline's inverse does).
//
// The output and the log-det are two graph nodes sharing one backward kernel: the log-det node
// depends on the output node, so its rule runs first and parks its gradient for the output's.
#include "mixture_op.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <mutex>
#include <type_traits>

#include <flowlab/kernels.hpp>
#include <flowlab/parallel.hpp>

namespace flowlab::image {

// Named (not anonymous) so that the unit tests can compile this file into their binary
// without -Wsubobject-linkage noise; the plugin's symbols are hidden anyway.
namespace mixture_detail {

constexpr int kMaxK = kMaxMixtureComponents;

template <class T>
inline T lse(const T* v, int n) {
    T m = v[0];
    for (int k = 1; k < n; ++k) m = std::max(m, v[k]);
    if (!std::isfinite(m)) return m;
    T s = 0;
    for (int k = 0; k < n; ++k) s += std::exp(v[k] - m);
    return m + std::log(s);
}

// One value's mixture and affine parameters, read from its slot of a raw row.
template <class T>
struct Mixture {
    int K = 0;
    T pi[kMaxK], logpi[kMaxK], mu[kMaxK], ls[kMaxK], inv_s[kMaxK];
    bool floored[kMaxK];  // log-scale at its floor: no gradient (Flow++'s max)
    T a = 0, ea = 1, b = 0, da = 1;  // a = c tanh(a_raw / c), da = da / da_raw

    Mixture(const T* r, std::int64_t stride, const MixturePlan& p) {
        K = p.components;
        const T c = static_cast<T>(p.scale_clamp);
        const T th = std::tanh(r[0] / c);
        a = c * th;
        da = T(1) - th * th;
        ea = std::exp(a);
        b = r[stride];
        T m = r[2 * stride];
        for (int k = 1; k < K; ++k) m = std::max(m, r[(2 + k) * stride]);
        T z = 0;
        for (int k = 0; k < K; ++k) z += (pi[k] = std::exp(r[(2 + k) * stride] - m));
        const T log_z = std::log(z), inv_z = T(1) / z;
        const T floor = static_cast<T>(p.min_log_scale);
        const T spread = K > 1 ? static_cast<T>(2.0 * p.mean_spread / (K - 1)) : T(0);
        for (int k = 0; k < K; ++k) {
            logpi[k] = r[(2 + k) * stride] - m - log_z;
            pi[k] *= inv_z;
            mu[k] = r[(2 + K + k) * stride] + (spread * T(k) - (K > 1 ? static_cast<T>(p.mean_spread) : T(0)));
            const T raw_ls = r[(2 + 2 * K + k) * stride];
            floored[k] = raw_ls < floor;
            ls[k] = floored[k] ? floor : raw_ls;
            inv_s[k] = std::exp(-ls[k]);
        }
    }
};

// The three logs at x, and (for the backward) the per-component terms: t_k, sigmoid(t_k) and the
// weights of the three sums (each term over its sum). The sums are formed directly, pi_k
// sigmoid(t_k) and so on, unless one of them comes within a few orders of magnitude of underflow
// (x far in a tail, where F or 1 - F or F' is below 1e-25 in f32), where they are taken in log
// space with logsumexp.
template <class T>
struct Eval {
    T lc = 0, lcc = 0, lf = 0;
    T t[kMaxK], sig[kMaxK], sigc[kMaxK], wa[kMaxK], wb[kMaxK], wc[kMaxK];

    Eval(const Mixture<T>& m, T x) {
        // Far enough above the smallest normal number that a sum above it is accurate, also when
        // a component's weight pi_k underflowed to 0 (its term is then below 1e-35 in f32).
        constexpr T kTiny = std::is_same_v<T, float> ? T(1e-25) : T(1e-280);
        const int K = m.K;
        T F = 0, Fc = 0, f = 0;
        for (int k = 0; k < K; ++k) {
            const T tk = (x - m.mu[k]) * m.inv_s[k];
            const T e = std::exp(-std::fabs(tk));
            const T inv = T(1) / (T(1) + e);
            const T sg = tk >= T(0) ? inv : e * inv, sgc = tk >= T(0) ? e * inv : inv;  // sigmoid(t), sigmoid(-t)
            t[k] = tk;
            sig[k] = sg;
            sigc[k] = sgc;
            F += (wa[k] = m.pi[k] * sg);
            Fc += (wb[k] = m.pi[k] * sgc);
            f += (wc[k] = m.pi[k] * sg * sgc * m.inv_s[k]);
        }
        if (F > kTiny && Fc > kTiny && f > kTiny) {
            lc = std::log(F);
            lcc = std::log(Fc);
            lf = std::log(f);
            const T iF = T(1) / F, iFc = T(1) / Fc, i_f = T(1) / f;
            for (int k = 0; k < K; ++k) {
                wa[k] *= iF;
                wb[k] *= iFc;
                wc[k] *= i_f;
            }
            return;
        }
        // Log space: log sigmoid(+-t) = -(log1p(e^-|t|) + max(-+t, 0)).
        T A[kMaxK], Bc[kMaxK], C[kMaxK];
        for (int k = 0; k < K; ++k) {
            const T tk = t[k];
            const T l1 = std::log1p(std::exp(-std::fabs(tk)));
            const T lsg = tk >= T(0) ? -l1 : tk - l1, lsgn = tk >= T(0) ? -tk - l1 : -l1;
            A[k] = m.logpi[k] + lsg;
            Bc[k] = m.logpi[k] + lsgn;
            C[k] = m.logpi[k] - m.ls[k] + lsg + lsgn;
        }
        lc = lse(A, K);
        lcc = lse(Bc, K);
        lf = lse(C, K);
        for (int k = 0; k < K; ++k) {
            wa[k] = std::exp(A[k] - lc);
            wb[k] = std::exp(Bc[k] - lcc);
            wc[k] = std::exp(C[k] - lf);
        }
    }
    T logit() const { return lc - lcc; }
    T log_slope() const { return lf - lc - lcc; }  // log dy/dx of y = logit(F(x))
};

// The gradient of Q = alpha lc + beta lcc + gamma lf: accumulated into the value's raw
// parameters (graw, strided like the raw row; may be null) and returned for x.
template <class T>
T mixture_backward(const Mixture<T>& m, const Eval<T>& e, T alpha, T beta, T gamma, T* graw, std::int64_t stride) {
    const int K = m.K;
    T gx = 0;
    for (int k = 0; k < K; ++k) {
        const T wa = e.wa[k], wb = e.wb[k], wc = e.wc[k];
        const T sg = e.sig[k], sgc = e.sigc[k];  // 1 - sg exactly, also where sg rounds to 1
        const T G = alpha * wa * sgc - beta * wb * sg + gamma * wc * (sgc - sg);
        gx += G * m.inv_s[k];
        if (!graw) continue;
        const T pi = m.pi[k];
        graw[(2 + k) * stride] += alpha * (wa - pi) + beta * (wb - pi) + gamma * (wc - pi);
        graw[(2 + K + k) * stride] -= G * m.inv_s[k];
        if (!m.floored[k]) graw[(2 + 2 * K + k) * stride] += -G * e.t[k] - gamma * wc;
    }
    return gx;
}

// x with logit(F(x)) = u: Newton's method safeguarded by bisection (a step that leaves the
// bracket, or does not at least halve the previous step, bisects instead), stopped per value
// when a step is below tol * max(1, |x|). A stop on a bisection step takes one more Newton step
// when it stays in the bracket, so that the result is as precise as a Newton stop. Sets `failed`
// when max_iterations pass first.
template <class T>
T solve(const Mixture<T>& m, T u, T tol, int max_iterations, bool& failed) {
    if (!std::isfinite(u)) return u;  // NaN stays NaN; +-inf is the limit of the map
    T lo = std::numeric_limits<T>::infinity(), hi = -lo, x0 = 0;
    for (int k = 0; k < m.K; ++k) {
        const T v = m.mu[k] + u / m.inv_s[k];
        lo = std::min(lo, v);
        hi = std::max(hi, v);
        x0 += m.pi[k] * v;
    }
    if (!(hi > lo)) return lo;  // the components agree at u: that point is the root
    T x = std::clamp(x0, lo, hi);
    T step_old = hi - lo, step = step_old;
    for (int it = 0; it < max_iterations; ++it) {
        const Eval<T> e(m, x);
        const T f = e.logit() - u;
        if (f == T(0)) return x;
        if (f < T(0))
            lo = x;
        else
            hi = x;
        const T slope = std::exp(e.log_slope());
        const bool newton = std::isfinite(slope) && slope > T(0) &&
                            ((x - hi) * slope - f) * ((x - lo) * slope - f) <= T(0) &&
                            std::fabs(T(2) * f) <= std::fabs(step_old * slope);
        step_old = step;
        T xn;
        if (newton) {
            step = f / slope;
            xn = x - step;
        } else {
            step = (hi - lo) / T(2);
            xn = lo + step;
        }
        if (std::fabs(step) <= tol * std::max(T(1), std::fabs(xn))) {
            if (!newton) {
                const Eval<T> p(m, xn);
                const T s = std::exp(p.log_slope());
                const T polished = xn - (p.logit() - u) / s;
                if (std::isfinite(polished) && polished >= lo && polished <= hi) xn = polished;
            }
            return xn;
        }
        x = xn;
    }
    failed = true;
    return x;
}

// The first value whose solve failed, for the error message.
struct Failure {
    std::atomic<bool> any{false};
    std::mutex mutex;
    std::int64_t row = 0, value = 0;
    double target = 0.0;
    void record(std::int64_t r, std::int64_t v, double u) {
        std::lock_guard<std::mutex> lock(mutex);
        if (any.load()) return;
        row = r;
        value = v;
        target = u;
        any.store(true);
    }
};

template <class T>
T effective_tolerance(const MixturePlan& p) {
    return std::max(static_cast<T>(p.tolerance), T(4) * std::numeric_limits<T>::epsilon());
}

template <class T>
void forward_rows(const T* in, const T* raw, T* out, T* ld, std::int64_t r0, std::int64_t r1, const MixturePlan& p,
                  bool inverse, Failure& fail) {
    const std::int64_t D = p.dim, S = p.slots, R = p.raw_cols();
    const T tol = effective_tolerance<T>(p);
    for (std::int64_t n = r0; n < r1; ++n) {
        const T* xr = in + n * D;
        const T* rr = raw + n * R;
        T* orow = out + n * D;
        T acc = 0;
        for (std::int64_t j = 0; j < D; ++j) {
            const std::int32_t s = p.slot[static_cast<std::size_t>(j)];
            if (s < 0) {
                orow[j] = xr[j];
                continue;
            }
            const Mixture<T> m(rr + s, S, p);
            if (inverse) {
                const Eval<T> e(m, xr[j]);
                orow[j] = e.logit() * m.ea + m.b;
                acc += e.log_slope() + m.a;
            } else {
                const T u = (xr[j] - m.b) / m.ea;
                bool failed = false;
                const T x = solve(m, u, tol, p.max_iterations, failed);
                if (failed) fail.record(n, j, static_cast<double>(u));
                const Eval<T> e(m, x);
                orow[j] = x;
                acc -= e.log_slope() + m.a;
            }
        }
        ld[n] = acc;
    }
}

// gy: the output's gradient; gld: the log-det's (may be null); in: the op's input; out: its
// output (the solved x in the forward direction). Accumulates into gin and graw (either null).
template <class T>
void backward_rows(const T* gy, const T* gld, const T* in, const T* out, const T* raw, T* gin, T* graw,
                   std::int64_t r0, std::int64_t r1, const MixturePlan& p, bool inverse) {
    const std::int64_t D = p.dim, S = p.slots, R = p.raw_cols();
    for (std::int64_t n = r0; n < r1; ++n) {
        const T gl = gld ? gld[n] : T(0);
        const T* rr = raw + n * R;
        T* gr = graw ? graw + n * R : nullptr;
        for (std::int64_t j = 0; j < D; ++j) {
            const std::int64_t i = n * D + j;
            const T g = gy ? gy[i] : T(0);
            const std::int32_t s = p.slot[static_cast<std::size_t>(j)];
            if (s < 0) {
                if (gin) gin[i] += g;
                continue;
            }
            const Mixture<T> m(rr + s, S, p);
            T* grs = gr ? gr + s : nullptr;
            if (inverse) {
                // out = y e^a + b, log-det = (lf - lc - lcc) + a
                const Eval<T> e(m, in[i]);
                const T ge = g * m.ea;
                const T gx = mixture_backward(m, e, ge - gl, -ge - gl, gl, grs, S);
                if (gin) gin[i] += gx;
                if (grs) {
                    grs[0] += (g * e.logit() * m.ea + gl) * m.da;
                    grs[S] += g;
                }
            } else {
                // x = y^-1(u), u = (z - b) e^-a, log-det = -(lf - lc - lcc)(x) - a
                const T x = out[i];
                const Eval<T> e(m, x);
                const T dlam = mixture_backward<T>(m, e, T(-1), T(-1), T(1), nullptr, S);
                const T G = g - gl * dlam;                  // total gradient on x
                const T coef = G * std::exp(-e.log_slope());  // on u: dx/du = 1 / y'(x)
                if (gin) gin[i] += coef / m.ea;
                if (grs) {
                    const T u = (in[i] - m.b) / m.ea;
                    grs[0] += (-u * coef - gl) * m.da;
                    grs[S] -= coef / m.ea;
                    mixture_backward(m, e, gl - coef, coef + gl, -gl, grs, S);
                }
            }
        }
    }
}

struct Parked {
    Tensor g_log_det;  // set by the log-det node's rule, consumed by the output node's rule
};

}  // namespace mixture_detail
using namespace mixture_detail;

FlowResult mixture_transform(const Var& in, const Var& raw, const std::shared_ptr<const MixturePlan>& plan,
                             bool inverse) {
    const MixturePlan& p = *plan;
    const Tensor& xv = in.value();
    const Tensor& rv = raw.value();
    if (p.components < 1 || p.components > kMaxMixtureComponents)
        throw ConfigError(p.layer + ": components must lie in [1, " + std::to_string(kMaxMixtureComponents) + "]");
    if (xv.dim() != 2 || xv.size(1) != p.dim)
        throw ShapeError(p.layer + ": mixture transform input " + shape_str(xv.shape()) + ", expected [B, " +
                         std::to_string(p.dim) + "]");
    const std::int64_t B = xv.size(0);
    if (rv.shape() != Shape{B, p.raw_cols()})
        throw ShapeError(p.layer + ": the conditioner's output " + shape_str(rv.shape()) + " does not hold the " +
                         std::to_string(p.raw_cols()) + " mixture parameters per sample (expected " +
                         shape_str({B, p.raw_cols()}) + ")");
    check_same_dtype(xv, rv, p.layer);
    // Cost per row: the transformed values times a few transcendental functions per component.
    const std::int64_t work = p.slots * p.components * (inverse ? 8 : 64);
    Failure fail;
    OutAndLogDet fwd = rows_with_log_det(
        xv, rv, row_grain(work), [&](const auto* xp, const auto* rp, auto* op, auto* lp, std::int64_t r0, std::int64_t r1) {
            forward_rows(xp, rp, op, lp, r0, r1, p, inverse, fail);
        });
    if (fail.any.load())
        throw NumericError(p.layer + ": the inverse of the logistic-mixture CDF did not converge within " +
                           std::to_string(p.max_iterations) + " iterations (sample " + std::to_string(fail.row) +
                           ", value " + std::to_string(fail.value) + ", target logit " + std::to_string(fail.target) +
                           "); raise inverse_iterations or loosen inverse_tolerance");
    auto parked = std::make_shared<Parked>();
    const std::int64_t bwd_work = p.slots * p.components * 16;
    Var out_v = make_op(
        inverse ? "mixture_coupling_inverse" : "mixture_coupling_forward", std::move(fwd.out), {in, raw},
        [xv, rv, plan, inverse, parked, bwd_work](const Tensor& gy, const Tensor& y, GradSink& sink) {
            Tensor gld = std::move(parked->g_log_det);
            parked->g_log_det = Tensor();
            with_grad_buffers(sink, xv.dtype(), [&](auto tag, auto* gin, auto* gr) {
                using T = decltype(tag);
                const T* gyp = gy.data<T>();
                const T* glp = gld.defined() ? gld.data<T>() : nullptr;
                parallel_for(xv.size(0), row_grain(bwd_work), [&](std::int64_t r0, std::int64_t r1) {
                    backward_rows<T>(gyp, glp, xv.data<T>(), y.data<T>(), rv.data<T>(), gin, gr, r0, r1, *plan,
                                     inverse);
                });
            });
        });
    Var ld_v = make_op(inverse ? "mixture_coupling_inverse_log_det" : "mixture_coupling_forward_log_det",
                       std::move(fwd.log_det), {out_v}, [parked](const Tensor& gld, const Tensor&, GradSink& sink) {
                           parked->g_log_det = gld.clone();
                           // The output node's rule does the work; it runs only if its gradient
                           // exists, so make sure it does.
                           if (sink.needs(0)) sink.buffer(0);
                       });
    return {out_v, ld_v};
}

}  // namespace flowlab::image
