// concat_elu: elu(concat(a, -a)) along one dimension (declared in ops/elementwise.hpp), the
// activation of PixelCNN++ and Flow++'s gated convolutions, as one op: one pass, one
// exponential per input value (only one of a and -a can be negative), and a backward from the
// output alone, d elu(u)/du = u > 0 ? 1 : elu(u) + 1. f32 uses fast_exp.hpp's vectorisable
// exponential (e^u - 1 loses relative precision near 0, which an activation does not feel).
#include <type_traits>

#include "flowlab/ops/elementwise.hpp"
#include "ops/fast_exp.hpp"
#include "ops/ops_internal.hpp"

namespace flowlab {

namespace {

using detail::Split3;

template <class T>
inline T elu_of(T u) {
    if constexpr (std::is_same_v<T, float>)
        return u > T(0) ? u : detail::fast_expf(u) - T(1);
    else
        return u > T(0) ? u : std::expm1(u);
}

// Runs fn(o0, o1) over the outer index, on the pool when the tensor is large.
template <class F>
void over_outer(const Split3& q, const F& fn) {
    const std::int64_t per_outer = q.n * q.inner;
    if (q.outer * per_outer <= 2 * kElementwiseGrain || q.outer == 1)
        fn(std::int64_t{0}, q.outer);
    else
        parallel_for(q.outer, std::max<std::int64_t>(1, kElementwiseGrain / per_outer), fn);
}

}  // namespace

Var concat_elu(const Var& a, std::int64_t dim) {
    const Tensor& x = a.value();
    detail::check_defined("concat_elu", x);
    const std::int64_t d = detail::norm_dim("concat_elu", dim, x.dim());
    const Split3 q = detail::split_at(x.shape(), d);
    Shape out_shape = x.shape();
    out_shape[static_cast<std::size_t>(d)] *= 2;
    Tensor y = Tensor::empty(out_shape, x.dtype());
    const std::int64_t m = q.n * q.inner;  // values of one half per outer index
    dispatch(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* px = x.data<T>();
        T* py = y.data<T>();
        over_outer(q, [&](std::int64_t o0, std::int64_t o1) {
            for (std::int64_t o = o0; o < o1; ++o) {
                const T* src = px + o * m;
                T* pos = py + 2 * o * m;
                T* neg = pos + m;
#pragma omp simd
                for (std::int64_t i = 0; i < m; ++i) {
                    pos[i] = elu_of(src[i]);
                    neg[i] = elu_of(-src[i]);
                }
            }
        });
    });
    return make_op("concat_elu", std::move(y), {a}, [q, m](const Tensor& gy, const Tensor& y, GradSink& sink) {
        with_grad_buffer(sink, y.dtype(), [&](auto tag, auto* gx) {
            using T = decltype(tag);
            const T* pg = gy.data<T>();
            const T* py = y.data<T>();
            over_outer(q, [&](std::int64_t o0, std::int64_t o1) {
                for (std::int64_t o = o0; o < o1; ++o) {
                    const T* gp = pg + 2 * o * m;
                    const T* gn = gp + m;
                    const T* yp = py + 2 * o * m;
                    const T* yn = yp + m;
                    T* g = gx + o * m;
                    // y > 0 exactly when its argument is; elu(u) + 1 = e^u below.
#pragma omp simd
                    for (std::int64_t i = 0; i < m; ++i)
                        g[i] += gp[i] * (yp[i] > T(0) ? T(1) : yp[i] + T(1)) -
                                gn[i] * (yn[i] > T(0) ? T(1) : yn[i] + T(1));
                }
            });
        });
    });
}

}  // namespace flowlab
