// softmax along one dimension, with its backward rule (declared in ops/reduce.hpp, next to
// logsumexp, whose normalisation it shares).
//
//   y = exp(x - max) / sum exp(x - max)        dL/dx = y * (g - sum_k g_k y_k)
//
// The backward uses only the output, so nothing else is kept. Rows (the [outer, inner] pairs
// around the dimension) are independent: they run on the pool when there are enough of them.
// Along the last dimension (attention's rows) the loops vectorise, f32 with fast_exp.hpp's
// exponential (within 2 ulp; an exponent under -87 gives 1.6e-38 rather than 0).
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "flowlab/ops/reduce.hpp"
#include "ops/fast_exp.hpp"
#include "ops/ops_internal.hpp"

namespace flowlab {

namespace {

using detail::Split3;

// Runs fn(o0, o1) over the outer index, on the pool when the tensor is large.
template <class F>
void over_outer(const Split3& q, const F& fn) {
    const std::int64_t per_outer = q.n * q.inner;
    if (q.outer * per_outer <= 2 * kElementwiseGrain || q.outer == 1)
        fn(std::int64_t{0}, q.outer);
    else
        parallel_for(q.outer, std::max<std::int64_t>(1, kElementwiseGrain / per_outer), fn);
}

// e^v: the vectorisable f32 version (fast_exp.hpp) in training, the library's in f64 checks.
template <class T>
inline T exp_of(T v) {
    if constexpr (std::is_same_v<T, float>)
        return detail::fast_expf(v);
    else
        return std::exp(v);
}

template <class T>
void softmax_rows(const T* x, T* y, const Split3& q, std::int64_t o0, std::int64_t o1) {
    if (q.inner == 1) {  // contiguous rows (the last dimension): vectorised
        for (std::int64_t o = o0; o < o1; ++o) {
            const T* p = x + o * q.n;
            T* r = y + o * q.n;
            T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
            for (std::int64_t k = 0; k < q.n; ++k) m = std::max(m, p[k]);
            if (!std::isfinite(m)) m = T(0);  // all -inf: NaN either way; +inf: NaN, as exp(inf - inf)
            T s = 0;
#pragma omp simd reduction(+ : s)
            for (std::int64_t k = 0; k < q.n; ++k) {
                const T e = exp_of(p[k] - m);
                r[k] = e;
                s += e;
            }
            const T inv = T(1) / s;
#pragma omp simd
            for (std::int64_t k = 0; k < q.n; ++k) r[k] *= inv;
        }
        return;
    }
    for (std::int64_t o = o0; o < o1; ++o)
        for (std::int64_t i = 0; i < q.inner; ++i) {
            const T* p = x + o * q.n * q.inner + i;
            T* r = y + o * q.n * q.inner + i;
            T m = -std::numeric_limits<T>::infinity();
            for (std::int64_t k = 0; k < q.n; ++k) m = std::max(m, p[k * q.inner]);
            if (!std::isfinite(m)) m = T(0);
            T s = 0;
            for (std::int64_t k = 0; k < q.n; ++k) {
                const T e = exp_of(p[k * q.inner] - m);
                r[k * q.inner] = e;
                s += e;
            }
            const T inv = T(1) / s;
            for (std::int64_t k = 0; k < q.n; ++k) r[k * q.inner] *= inv;
        }
}

// gx += y * (g - <g, y>) per row.
template <class T>
void softmax_backward_rows(const T* g, const T* y, T* gx, const Split3& q, std::int64_t o0, std::int64_t o1) {
    if (q.inner == 1) {
        for (std::int64_t o = o0; o < o1; ++o) {
            const T* gr = g + o * q.n;
            const T* yr = y + o * q.n;
            T* xr = gx + o * q.n;
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (std::int64_t k = 0; k < q.n; ++k) dot += gr[k] * yr[k];
#pragma omp simd
            for (std::int64_t k = 0; k < q.n; ++k) xr[k] += yr[k] * (gr[k] - dot);
        }
        return;
    }
    for (std::int64_t o = o0; o < o1; ++o)
        for (std::int64_t i = 0; i < q.inner; ++i) {
            const std::int64_t base = o * q.n * q.inner + i;
            T dot = 0;
            for (std::int64_t k = 0; k < q.n; ++k) dot += g[base + k * q.inner] * y[base + k * q.inner];
            for (std::int64_t k = 0; k < q.n; ++k) {
                const std::int64_t j = base + k * q.inner;
                gx[j] += y[j] * (g[j] - dot);
            }
        }
}

}  // namespace

Var softmax(const Var& a, std::int64_t dim) {
    const Tensor& x = a.value();
    detail::check_defined("softmax", x);
    const std::int64_t d = detail::norm_dim("softmax", dim, x.dim());
    const Split3 q = detail::split_at(x.shape(), d);
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    dispatch(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* px = x.data<T>();
        T* py = y.data<T>();
        over_outer(q, [&](std::int64_t o0, std::int64_t o1) { softmax_rows<T>(px, py, q, o0, o1); });
    });
    return make_op("softmax", std::move(y), {a}, [q](const Tensor& gy, const Tensor& y, GradSink& sink) {
        with_grad_buffer(sink, y.dtype(), [&](auto tag, auto* gx) {
            using T = decltype(tag);
            const T* pg = gy.data<T>();
            const T* py = y.data<T>();
            over_outer(q, [&](std::int64_t o0, std::int64_t o1) { softmax_backward_rows<T>(pg, py, gx, q, o0, o1); });
        });
    });
}

}  // namespace flowlab
