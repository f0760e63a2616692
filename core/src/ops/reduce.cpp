// Reductions (sum, mean, logsumexp, ...) with their backward rules, and the reduction kernels
// (sum_to, the backward of every broadcast).
#include "flowlab/ops/reduce.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/ops_internal.hpp"

namespace flowlab {

using detail::Split3;
using detail::split_at;

using detail::dispatch;

namespace {


Shape reduced_shape(const Shape& s, std::int64_t d, bool keepdim) {
    Shape r = s;
    if (keepdim)
        r[d] = 1;
    else
        r.erase(r.begin() + d);
    return r;
}

template <class T>
inline T row_sum(const T* p, std::int64_t n) {
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (std::int64_t i = 0; i < n; ++i) s += p[i];
    return s;
}

// out[o, i] = sum_k a[o, k, i]
template <class T>
void sum_mid(const T* a, T* out, const Split3& q) {
    auto body = [&](std::int64_t o0, std::int64_t o1) {
        for (std::int64_t o = o0; o < o1; ++o) {
            const T* src = a + o * q.n * q.inner;
            T* dst = out + o * q.inner;
            if (q.inner == 1) {
                dst[0] = row_sum(src, q.n);
                continue;
            }
            // Strips of kStrip columns summed in a local array the compiler keeps in registers
            // (dst[i] += r[i] through memory reloads and stores dst on every row): a bias
            // gradient over 512 x 128 took 7.9 us, 2.3 this way. The same additions in the same
            // order either way.
            constexpr std::int64_t kStrip = 128;
            std::int64_t i0 = 0;
            for (; i0 + kStrip <= q.inner; i0 += kStrip) {
                T acc[kStrip];
                #pragma omp simd
                for (std::int64_t i = 0; i < kStrip; ++i) acc[i] = src[i0 + i];
                for (std::int64_t k = 1; k < q.n; ++k) {
                    const T* r = src + k * q.inner + i0;
                    #pragma omp simd
                    for (std::int64_t i = 0; i < kStrip; ++i) acc[i] += r[i];
                }
                #pragma omp simd
                for (std::int64_t i = 0; i < kStrip; ++i) dst[i0 + i] = acc[i];
            }
            if (i0 == q.inner) continue;
            #pragma omp simd
            for (std::int64_t i = i0; i < q.inner; ++i) dst[i] = src[i];
            for (std::int64_t k = 1; k < q.n; ++k) {
                const T* r = src + k * q.inner;
                #pragma omp simd
                for (std::int64_t i = i0; i < q.inner; ++i) dst[i] += r[i];
            }
        }
    };
    if (q.outer * q.n * q.inner <= 2 * kElementwiseGrain || q.outer == 1)
        body(0, q.outer);
    else
        parallel_for(q.outer, std::max<std::int64_t>(1, kElementwiseGrain / (q.n * q.inner)), body);
}

// out[o, k, i] = s * g[o, i]: the backward of a sum over the middle dimension.
template <class T>
void expand_mid(const T* g, T* out, const Split3& q, T s) {
    auto body = [&](std::int64_t o0, std::int64_t o1) {
        for (std::int64_t o = o0; o < o1; ++o) {
            const T* src = g + o * q.inner;
            T* dst = out + o * q.n * q.inner;
            if (q.inner == 1) {
                const T v = s * src[0];
                #pragma omp simd
                for (std::int64_t k = 0; k < q.n; ++k) dst[k] = v;
                continue;
            }
            for (std::int64_t k = 0; k < q.n; ++k, dst += q.inner)
                #pragma omp simd
                for (std::int64_t i = 0; i < q.inner; ++i) dst[i] = s * src[i];
        }
    };
    const std::int64_t row = std::max<std::int64_t>(1, q.n * q.inner);
    if (q.outer * row <= 2 * kElementwiseGrain || q.outer == 1)
        body(0, q.outer);
    else
        parallel_for(q.outer, std::max<std::int64_t>(1, kElementwiseGrain / row), body);
}

Tensor expand_grad(const Tensor& g, const Shape& shape, const Split3& q, double s) {
    Tensor out = Tensor::empty(shape, g.dtype());
    dispatch(g.dtype(), [&](auto t) {
        using T = decltype(t);
        expand_mid<T>(g.data<T>(), out.data<T>(), q, static_cast<T>(s));
    });
    return out;
}

// The sum of f(a[i]) over all of a, accumulated in double (a whole-tensor reduction of f32 would
// lose digits).
template <class F>
double sum_in_double(const Tensor& a, const char* what, F f) {
    detail::check_defined(what, a);
    return dispatch(a.dtype(), [&](auto t) {
        using T = decltype(t);
        const T* p = a.data<T>();
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (std::int64_t i = 0; i < a.numel(); ++i) s += f(static_cast<double>(p[i]));
        return s;
    });
}

}  // namespace

// ---------------------------------------------------------------------------------- kern

namespace detail {
void column_sum_block(const float* a, std::int64_t cols, std::int64_t r0, std::int64_t r1, bool first, float* out) {
    // sum_mid's additions for inner = cols, outer = 1, in its order: each column's running sum
    // over the rows, the first row copied rather than added to zero.
    constexpr std::int64_t kStrip = 128;
    for (std::int64_t i0 = 0; i0 < cols; i0 += kStrip) {
        const std::int64_t w = std::min(kStrip, cols - i0);
        float acc[kStrip];
        std::int64_t k = r0;
        const float* start = first ? a + (k++) * cols + i0 : out + i0;
#pragma omp simd
        for (std::int64_t i = 0; i < w; ++i) acc[i] = start[i];
        for (; k < r1; ++k) {
            const float* r = a + k * cols + i0;
#pragma omp simd
            for (std::int64_t i = 0; i < w; ++i) acc[i] += r[i];
        }
#pragma omp simd
        for (std::int64_t i = 0; i < w; ++i) out[i0 + i] = acc[i];
    }
}
}  // namespace detail

namespace kern {

Tensor sum_to(const Tensor& a, const Shape& shape) {
    detail::check_defined("sum_to", a);
    if (broadcast_shapes(shape, a.shape(), "sum_to") != a.shape())
        detail::shape_error("sum_to", a.shape(), shape, "not reducible (the target does not broadcast to the source)");
    if (flowlab::numel(shape) == a.numel()) return a.clone().reshape(shape);
    Tensor out = Tensor::zeros(shape, a.dtype());
    dispatch(a.dtype(), [&](auto t) {
        using T = decltype(t);
        const T* pa = a.data<T>();
        T* po = out.data<T>();
        if (out.numel() == 1) {
            double s = 0;
#pragma omp simd reduction(+ : s)
            for (std::int64_t i = 0; i < a.numel(); ++i) s += pa[i];
            po[0] = static_cast<T>(s);
            return;
        }
        // sa: a's (collapsed) strides, sb: the target's, 0 where it is summed over.
        const detail::Bcast p = detail::make_bcast("sum_to", a.shape(), a.shape(), shape);
        const std::int64_t len = p.n[p.nd - 1];
        const bool inner_kept = p.sb[p.nd - 1] != 0;
        detail::for_rows(p, 0, detail::plan_rows(p), [&](std::int64_t, std::int64_t oa, std::int64_t ob) {
            const T* src = pa + oa;
            T* dst = po + ob;
            if (inner_kept) {
                #pragma omp simd
                for (std::int64_t j = 0; j < len; ++j) dst[j] += src[j];
            } else {
                dst[0] += row_sum(src, len);
            }
        });
    });
    return out;
}

Tensor sum(const Tensor& a, std::int64_t dim, bool keepdim) {
    detail::check_defined("sum", a);
    const std::int64_t d = detail::norm_dim("sum", dim, a.dim());
    const Split3 q = split_at(a.shape(), d);
    Tensor out = Tensor::empty(reduced_shape(a.shape(), d, keepdim), a.dtype());
    if (q.n == 0) {
        out.fill(0.0);
        return out;
    }
    dispatch(a.dtype(), [&](auto t) {
        using T = decltype(t);
        sum_mid<T>(a.data<T>(), out.data<T>(), q);
    });
    return out;
}

double sum_all(const Tensor& a) { return sum_in_double(a, "sum_all", [](double v) { return v; }); }

double sq_norm(const Tensor& a) { return sum_in_double(a, "sq_norm", [](double v) { return v * v; }); }

bool all_finite(const Tensor& a) {
    detail::check_defined("all_finite", a);
    return dispatch(a.dtype(), [&](auto t) {
        using T = decltype(t);
        const T* p = a.data<T>();
        // x - x is 0 for finite x and NaN for inf and NaN: a branch-free test that vectorises.
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (std::int64_t i = 0; i < a.numel(); ++i) acc += p[i] - p[i];
        return acc == T(0);
    });
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
    detail::check_defined("max_abs_diff", a);
    detail::check_defined("max_abs_diff", b);
    if (a.shape() != b.shape()) detail::shape_error("max_abs_diff", a.shape(), b.shape(), "different");
    const Tensor x = a.to(DType::f64), y = b.to(DType::f64);
    const double* px = x.data<double>();
    const double* py = y.data<double>();
    double m = 0;
    for (std::int64_t i = 0; i < x.numel(); ++i) {
        const double d = std::abs(px[i] - py[i]);
        if (std::isnan(d)) return std::numeric_limits<double>::quiet_NaN();
        m = std::max(m, d);
    }
    return m;
}

}  // namespace kern

// ---------------------------------------------------------------------------------- Var ops

namespace {
// y = s * sum of a over the middle of the split q, shaped `out_shape`.
Var sum_impl(const char* name, const Var& a, const Split3& q, Shape out_shape, double s) {
    const Tensor& x = a.value();
    Tensor y = Tensor::empty(std::move(out_shape), x.dtype());
    if (q.n == 0) {
        y.fill(0.0);
    } else {
        dispatch(x.dtype(), [&](auto t) {
            using T = decltype(t);
            sum_mid<T>(x.data<T>(), y.data<T>(), q);
        });
        if (s != 1.0) kern::scale_inplace(y, s);
    }
    return make_op(name, std::move(y), {a}, [a, q, s](const Tensor& gy, const Tensor&, GradSink& g) {
        g.add(0, expand_grad(gy, a.shape(), q, s));
    });
}

Var sum_dim(const char* name, const Var& a, std::int64_t dim, bool keepdim, bool mean) {
    const Tensor& x = a.value();
    detail::check_defined(name, x);
    const std::int64_t d = detail::norm_dim(name, dim, x.dim());
    const Split3 q = split_at(x.shape(), d);
    const double s = mean ? (q.n ? 1.0 / static_cast<double>(q.n) : 0.0) : 1.0;
    return sum_impl(name, a, q, reduced_shape(x.shape(), d, keepdim), s);
}
}  // namespace

Var sum(const Var& a, std::int64_t dim, bool keepdim) { return sum_dim("sum", a, dim, keepdim, false); }

Var mean(const Var& a, std::int64_t dim, bool keepdim) { return sum_dim("mean", a, dim, keepdim, true); }

namespace {
Var sum_all_impl(const char* name, const Var& a, double s) {
    const Tensor& x = a.value();
    return make_op(name, Tensor::scalar(kern::sum_all(x) * s, x.dtype()), {a},
                   [a, s](const Tensor& gy, const Tensor&, GradSink& g) {
                       g.add(0, Tensor::full(a.shape(), gy.item() * s, gy.dtype()));
                   });
}
}  // namespace

Var sum_all(const Var& a) { return sum_all_impl("sum_all", a, 1.0); }

Var mean_all(const Var& a) {
    const std::int64_t n = a.value().numel();
    return sum_all_impl("mean_all", a, n ? 1.0 / static_cast<double>(n) : 0.0);
}

Var sum_per_sample(const Var& a) {
    const Tensor& x = a.value();
    detail::check_defined("sum_per_sample", x);
    if (x.dim() < 1) throw ShapeError("sum_per_sample: needs [batch, ...], got a scalar " + shape_str(x.shape()));
    Split3 q;
    q.outer = x.size(0);
    q.n = q.outer ? x.numel() / q.outer : 0;
    return sum_impl("sum_per_sample", a, q, {x.size(0)}, 1.0);
}

Var logsumexp(const Var& a, std::int64_t dim, bool keepdim) {
    const Tensor& x = a.value();
    const std::int64_t d = detail::norm_dim("logsumexp", dim, x.dim());
    const Split3 q = split_at(x.shape(), d);
    Tensor y = Tensor::empty(reduced_shape(x.shape(), d, keepdim), x.dtype());
    dispatch(x.dtype(), [&](auto t) {
        using T = decltype(t);
        const T* px = x.data<T>();
        T* py = y.data<T>();
        for (std::int64_t o = 0; o < q.outer; ++o)
            for (std::int64_t i = 0; i < q.inner; ++i) {
                const T* p = px + o * q.n * q.inner + i;
                T m = -std::numeric_limits<T>::infinity();
                for (std::int64_t k = 0; k < q.n; ++k) m = std::max(m, p[k * q.inner]);
                T r;
                if (!std::isfinite(m)) {
                    r = m;  // all -inf (or some +inf / NaN): the shift would give NaN
                    for (std::int64_t k = 0; k < q.n; ++k)
                        if (std::isnan(p[k * q.inner])) r = p[k * q.inner];
                } else {
                    T s = 0;
                    for (std::int64_t k = 0; k < q.n; ++k) s += std::exp(p[k * q.inner] - m);
                    r = m + std::log(s);
                }
                py[o * q.inner + i] = r;
            }
    });
    return make_op("logsumexp", std::move(y), {a}, [a, q](const Tensor& gy, const Tensor& y, GradSink& g) {
        const Tensor& x = a.value();
        // d/dx_k = gy * exp(x_k - y): the softmax along dim (zero where y = -inf).
        Tensor gx = Tensor::empty(x.shape(), x.dtype());
        dispatch(x.dtype(), [&](auto t) {
            using T = decltype(t);
            const T* px = x.data<T>();
            const T* py = y.data<T>();
            const T* pg = gy.data<T>();
            T* out = gx.data<T>();
            for (std::int64_t o = 0; o < q.outer; ++o)
                for (std::int64_t k = 0; k < q.n; ++k)
                    for (std::int64_t i = 0; i < q.inner; ++i) {
                        const std::int64_t j = o * q.inner + i;
                        const std::int64_t e = (o * q.n + k) * q.inner + i;
                        out[e] = std::isinf(py[j]) && py[j] < 0 ? T(0) : pg[j] * std::exp(px[e] - py[j]);
                    }
        });
        g.add(0, std::move(gx));
    });
}

}  // namespace flowlab
