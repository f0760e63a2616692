// The activations of g with their derivatives, as fused ops. The derivative sigma'(h) is a node
// of the graph itself (the Jacobian's factors), so its backward needs sigma''(h): written here by
// hand, together with the activation's, in one pass over the elements each instead of the
// half-dozen element-wise ops (and one exp per op) that composing them costs.
//
//   LipSwish  a = h s(u) / 1.1 with u = beta h, s the logistic sigmoid;
//             a' = (s + u s (1 - s)) / 1.1,   d a'/du = s (1 - s) (2 + u (1 - 2 s)) / 1.1
//   ELU       a' = 1 for h > 0, e^h below;     a'' = 0 above, e^h below
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "residual.hpp"

namespace flowlab::residual {

namespace {

constexpr double kScale = 1.0 / 1.1;

// e^x for x <= 0 in float by Cephes' range reduction and polynomial (about one ulp): std::exp
// does not vectorise, and the sigmoid's exp was most of a LipSwish layer's time.
inline float exp_nonpositive(float x) {
    x = std::max(x, -87.0f);
    const float n = std::floor(x * 1.44269504088896341f + 0.5f);
    x = x - n * 0.693359375f + n * 2.12194440e-4f;
    const float z = x * x;
    float y = 1.9875691500e-4f;
    y = y * x + 1.3981999507e-3f;
    y = y * x + 8.3334519073e-3f;
    y = y * x + 4.1665795894e-2f;
    y = y * x + 1.6666665459e-1f;
    y = y * x + 5.0000001201e-1f;
    y = y * z + x + 1.0f;
    const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

// The logistic sigmoid without overflow and without a branch the vectoriser cannot take.
template <class T>
inline T sigmoid_of(T u) {
    if constexpr (std::is_same_v<T, float>) {
        const float e = exp_nonpositive(-std::fabs(u));
        const float r = 1.0f / (1.0f + e);
        return u >= 0.0f ? r : e * r;
    } else {
        return stable_sigmoid(u);
    }
}

// Runs fn(begin, end, chunk) over [0, n) in fixed chunks (the same on any thread count), so that
// per-chunk partial sums add up in one order: results do not depend on the threads.
template <class Fn>
std::int64_t chunked(std::int64_t n, Fn&& fn) {
    const std::int64_t grain = kElementwiseGrain;
    const std::int64_t chunks = std::max<std::int64_t>(1, (n + grain - 1) / grain);
    parallel_for(chunks, 1, [&](std::int64_t c0, std::int64_t c1) {
        for (std::int64_t c = c0; c < c1; ++c) fn(c * grain, std::min(n, (c + 1) * grain), c);
    });
    return chunks;
}

// The sum of the partials, accumulated into element 0 of input i's gradient buffer.
template <class T>
void add_partials(GradSink& sink, std::size_t i, const std::vector<double>& partials) {
    double s = 0.0;
    for (double p : partials) s += p;
    T* g = sink.buffer(i).template data<T>();
    g[0] += static_cast<T>(s);
}

// The backward rule of an element-wise function of (h, beta) with a scalar beta: step(g, h, s,
// b) gives one element's {gradient of h, term of beta's gradient} from its output gradient g,
// h, the sigmoid s of beta h and beta; beta's terms are summed chunk by chunk in double and
// scaled by beta_scale.
template <class Step>
BackwardFn scalar_beta_rule(const Var& h, const Var& beta, const Tensor& sig, std::int64_t n, double beta_scale,
                            Step step) {
    return [h, beta, sig, n, beta_scale, step](const Tensor& g, const Tensor&, GradSink& sink) {
        if (!sink.needs(0) && !sink.needs(1)) return;
        dispatch(g.dtype(), [&](auto tag) {
            using T = decltype(tag);
            const T* hp = h.value().template data<T>();
            const T* sp = sig.template data<T>();
            const T* gp = g.data<T>();
            const T b = beta.value().template data<T>()[0];
            T* gh = sink.needs(0) ? sink.buffer(0).template data<T>() : nullptr;
            const bool need_beta = sink.needs(1);
            std::vector<double> partials(static_cast<std::size_t>((n + kElementwiseGrain - 1) / kElementwiseGrain + 1), 0.0);
            chunked(n, [&](std::int64_t i0, std::int64_t i1, std::int64_t c) {
                double acc = 0.0;
                for (std::int64_t i = i0; i < i1; ++i) {
                    const auto [dh, db] = step(gp[i], hp[i], sp[i], b);
                    if (gh) gh[i] += dh;
                    if (need_beta) acc += static_cast<double>(db);
                }
                partials[static_cast<std::size_t>(c)] = beta_scale == 1.0 ? acc : acc * beta_scale;
            });
            if (need_beta) add_partials<T>(sink, 1, partials);
        });
    };
}

}  // namespace

Activated lipswish(const Var& h, const Var& beta, bool derivative) {
    const Tensor& hv = h.value();
    if (beta.value().numel() != 1 || beta.dtype() != hv.dtype())
        throw ShapeError("lipswish: beta must be one value of the input's dtype, got " + shape_str(beta.shape()) + " " +
                         dtype_name(beta.dtype()));
    const std::int64_t n = hv.numel();
    Tensor a = Tensor::empty(hv.shape(), hv.dtype());
    Tensor d = derivative ? Tensor::empty(hv.shape(), hv.dtype()) : Tensor();
    // The sigmoid is kept for the backward rules when they will run: one exp per element.
    const bool recorded = grad_enabled() && (h.requires_grad() || beta.requires_grad());
    Tensor sig = recorded ? Tensor::empty(hv.shape(), hv.dtype()) : Tensor();
    dispatch(hv.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* hp = hv.data<T>();
        const T b = beta.value().data<T>()[0];
        T* ap = a.data<T>();
        T* dp = derivative ? d.data<T>() : nullptr;
        T* sp = recorded ? sig.data<T>() : nullptr;
        chunked(n, [&](std::int64_t i0, std::int64_t i1, std::int64_t) {
            // One vectorisable loop per set of outputs.
            auto run = [&](auto with_d, auto with_s) {
#pragma omp simd
                for (std::int64_t i = i0; i < i1; ++i) {
                    const T u = b * hp[i], s = sigmoid_of(u);
                    ap[i] = hp[i] * s * T(kScale);
                    if constexpr (decltype(with_d)::value) dp[i] = (s + u * s * (T(1) - s)) * T(kScale);
                    if constexpr (decltype(with_s)::value) sp[i] = s;
                }
            };
            if (dp && sp) run(std::true_type{}, std::true_type{});
            else if (dp) run(std::true_type{}, std::false_type{});
            else if (sp) run(std::false_type{}, std::true_type{});
            else run(std::false_type{}, std::false_type{});
        });
    });
    Activated out;
    // d a / d h is the derivative itself; d a / d beta = h^2 s (1 - s) / 1.1.
    out.a = make_op("lipswish", std::move(a), {h, beta},
                    scalar_beta_rule(h, beta, sig, n, kScale, [](auto g, auto hv, auto s, auto b) {
                        using T = decltype(g);
                        const T u = b * hv, s1 = s * (T(1) - s);
                        return std::pair<T, T>{g * (s + u * s1) * T(kScale), g * hv * hv * s1};
                    }));
    // d^2 a / d h^2 = beta s (1 - s) (2 + u (1 - 2 s)) / 1.1 and d (da/dh) / d beta = h times
    // the same factor.
    if (derivative)
        out.d = make_op("lipswish_derivative", std::move(d), {h, beta},
                        scalar_beta_rule(h, beta, sig, n, 1.0, [](auto g, auto hv, auto s, auto b) {
                            using T = decltype(g);
                            const T u = b * hv;
                            const T dd = s * (T(1) - s) * (T(2) + u * (T(1) - T(2) * s)) * T(kScale);
                            return std::pair<T, T>{g * b * dd, g * hv * dd};
                        }));
    return out;
}

Activated elu_activation(const Var& h, bool derivative) {
    Activated out;
    out.a = elu(h);
    if (!derivative) return out;
    const Tensor& hv = h.value();
    const std::int64_t n = hv.numel();
    Tensor d = Tensor::empty(hv.shape(), hv.dtype());
    dispatch(hv.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* hp = hv.data<T>();
        T* dp = d.data<T>();
        chunked(n, [&](std::int64_t i0, std::int64_t i1, std::int64_t) {
            for (std::int64_t i = i0; i < i1; ++i) dp[i] = hp[i] > T(0) ? T(1) : std::exp(hp[i]);
        });
    });
    out.d = make_op("elu_derivative", d, {h}, [h, d, n](const Tensor& g, const Tensor&, GradSink& sink) {
        if (!sink.needs(0)) return;
        dispatch(g.dtype(), [&](auto tag) {
            using T = decltype(tag);
            const T* gp = g.data<T>();
            const T* dp = d.data<T>();
            const T* hp = h.value().template data<T>();
            T* gh = sink.buffer(0).template data<T>();
            // The second derivative is e^h = d at and below 0, and 0 above.
            chunked(n, [&](std::int64_t i0, std::int64_t i1, std::int64_t) {
                for (std::int64_t i = i0; i < i1; ++i)
                    if (!(hp[i] > T(0))) gh[i] += gp[i] * dp[i];
            });
        });
    });
    return out;
}

}  // namespace flowlab::residual
