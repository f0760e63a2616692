// Element-wise ops: broadcasting binary ops, scalar ops and unary functions, with their
// backward rules, and the matching kern:: kernels.
#include "flowlab/ops/elementwise.hpp"

#include <cmath>
#include <type_traits>

#include "ops/fast_exp.hpp"
#include "ops/ops_internal.hpp"

namespace flowlab {

using detail::dispatch;

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
    if (a == b) return a;
    const std::size_t nd = std::max(a.size(), b.size());
    Shape out(nd);
    for (std::size_t i = 0; i < nd; ++i) {
        const std::int64_t da = i < nd - a.size() ? 1 : a[i - (nd - a.size())];
        const std::int64_t db = i < nd - b.size() ? 1 : b[i - (nd - b.size())];
        if (da != db && da != 1 && db != 1) detail::shape_error(op, a, b, "not broadcastable");
        out[i] = da == 1 ? db : da;
    }
    return out;
}

namespace {
// Stable: exp never overflows on the branch taken (the sigmoid is the toolkit's stable_sigmoid).
template <class T>
inline T softplus_of(T x) {
    return x > T(0) ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x));
}

// The logistic function: f64 (the checks) through the library's exp, f32 branch-free through
// fast_exp.hpp's so that the loop vectorises (glibc's scalar expf made the gated convolutions'
// sigmoid ten times slower than its backward). Below -87, where the exponential stops at
// 1.6e-38, it returns 0 (the true value is a denormal or underflows).
template <class T>
inline T sigmoid_of(T x) {
    if constexpr (std::is_same_v<T, float>) {
        const float e = detail::fast_expf(x >= 0.0f ? -x : x);  // e^-|x|, never overflows
        const float r = 1.0f / (1.0f + e);
        return x >= 0.0f ? r : (x < -87.0f ? 0.0f : e * r);
    } else {
        return stable_sigmoid(x);
    }
}

template <class F>
Tensor binary(const char* op, const Tensor& a, const Tensor& b, F f) {
    detail::check_dtypes(op, a, b);
    return dispatch(a.dtype(), [&](auto t) { return detail::broadcast_map<decltype(t)>(op, a, b, f); });
}

template <class F>
Tensor unary(const char* op, const Tensor& a, F f) {
    detail::check_defined(op, a);
    return dispatch(a.dtype(), [&](auto t) {
        using T = decltype(t);
        return detail::map1<T>(a, [&](T x) { return f(x); });
    });
}

// g(i) = f(x[i], y[i]) on equal shapes, both of the same dtype.
template <class F>
Tensor zip(const Tensor& x, const Tensor& y, F f) {
    return dispatch(x.dtype(), [&](auto t) {
        using T = decltype(t);
        return detail::map2<T>(x, y, [&](T u, T v) { return f(u, v); });
    });
}
}  // namespace

// ---------------------------------------------------------------------------------- kern

namespace kern {

Tensor add(const Tensor& a, const Tensor& b) {
    return binary("add", a, b, [](auto x, auto y) { return x + y; });
}
Tensor sub(const Tensor& a, const Tensor& b) {
    return binary("sub", a, b, [](auto x, auto y) { return x - y; });
}
Tensor mul(const Tensor& a, const Tensor& b) {
    return binary("mul", a, b, [](auto x, auto y) { return x * y; });
}
Tensor div(const Tensor& a, const Tensor& b) {
    return binary("div", a, b, [](auto x, auto y) { return x / y; });
}

Tensor scale(const Tensor& a, double s) {
    return unary("scale", a, [s](auto x) { return static_cast<decltype(x)>(x * s); });
}
Tensor add_scalar(const Tensor& a, double s) {
    return unary("add_scalar", a, [s](auto x) { return static_cast<decltype(x)>(x + s); });
}
Tensor exp(const Tensor& a) {
    return unary("exp", a, [](auto x) { return std::exp(x); });
}
Tensor neg(const Tensor& a) {
    return unary("neg", a, [](auto x) { return -x; });
}

void add_inplace(Tensor& dst, const Tensor& src) {
    check_same_shape(dst, src, "add_inplace");
    dispatch(dst.dtype(), [&](auto t) {
        using T = decltype(t);
        T* d = dst.data<T>();
        const T* s = src.data<T>();
        detail::elementwise_for(dst.numel(), [&](std::int64_t b, std::int64_t e) {
            #pragma omp simd
            for (std::int64_t i = b; i < e; ++i) d[i] += s[i];
        });
    });
}

void axpy_inplace(Tensor& dst, double alpha, const Tensor& src) {
    check_same_shape(dst, src, "axpy_inplace");
    dispatch(dst.dtype(), [&](auto t) {
        using T = decltype(t);
        T* d = dst.data<T>();
        const T* s = src.data<T>();
        const T al = static_cast<T>(alpha);
        detail::elementwise_for(dst.numel(), [&](std::int64_t b, std::int64_t e) {
            #pragma omp simd
            for (std::int64_t i = b; i < e; ++i) d[i] += al * s[i];
        });
    });
}

void scale_inplace(Tensor& dst, double s) {
    detail::check_defined("scale_inplace", dst);
    dispatch(dst.dtype(), [&](auto t) {
        using T = decltype(t);
        T* d = dst.data<T>();
        const T k = static_cast<T>(s);
        detail::elementwise_for(dst.numel(), [&](std::int64_t b, std::int64_t e) {
            #pragma omp simd
            for (std::int64_t i = b; i < e; ++i) d[i] *= k;
        });
    });
}

}  // namespace kern

// ---------------------------------------------------------------------------------- binary

using detail::reduce_to;

Var add(const Var& a, const Var& b) {
    return make_op("add", kern::add(a.value(), b.value()), {a, b},
                   [a, b](const Tensor& gy, const Tensor&, GradSink& g) {
                       if (g.needs(0)) g.add(0, reduce_to(gy, a.shape()));
                       if (g.needs(1)) g.add(1, reduce_to(gy, b.shape()));
                   });
}

Var sub(const Var& a, const Var& b) {
    return make_op("sub", kern::sub(a.value(), b.value()), {a, b},
                   [a, b](const Tensor& gy, const Tensor&, GradSink& g) {
                       if (g.needs(1)) {
                           Tensor gb = reduce_to(gy, b.shape());
                           g.add(1, gb.same_storage(gy) ? kern::neg(gb) : (kern::scale_inplace(gb, -1.0), gb));
                       }
                       if (g.needs(0)) g.add(0, reduce_to(gy, a.shape()));
                   });
}

Var mul(const Var& a, const Var& b) {
    return make_op("mul", kern::mul(a.value(), b.value()), {a, b},
                   [a, b](const Tensor& gy, const Tensor&, GradSink& g) {
                       if (g.needs(0)) g.add(0, reduce_to(kern::mul(gy, b.value()), a.shape()));
                       if (g.needs(1)) g.add(1, reduce_to(kern::mul(gy, a.value()), b.shape()));
                   });
}

Var div(const Var& a, const Var& b) {
    return make_op("div", kern::div(a.value(), b.value()), {a, b},
                   [a, b](const Tensor& gy, const Tensor& y, GradSink& g) {
                       if (g.needs(0)) g.add(0, reduce_to(kern::div(gy, b.value()), a.shape()));
                       if (g.needs(1)) {
                           // d(a/b)/db = -y / b
                           Tensor t = zip(gy, y, [](auto u, auto v) { return -u * v; });
                           g.add(1, reduce_to(kern::div(t, b.value()), b.shape()));
                       }
                   });
}

Var add_scalar(const Var& a, double s) {
    return make_op("add_scalar", kern::add_scalar(a.value(), s), {a},
                   [](const Tensor& gy, const Tensor&, GradSink& g) { g.add(0, gy); });
}

Var mul_scalar(const Var& a, double s) {
    return make_op("mul_scalar", kern::scale(a.value(), s), {a},
                   [s](const Tensor& gy, const Tensor&, GradSink& g) { g.add(0, kern::scale(gy, s)); });
}

Var neg(const Var& a) {
    return make_op("neg", kern::neg(a.value()), {a},
                   [](const Tensor& gy, const Tensor&, GradSink& g) { g.add(0, kern::neg(gy)); });
}

// ---------------------------------------------------------------------------------- unary

Var exp(const Var& a) {
    return make_op("exp", kern::exp(a.value()), {a}, [](const Tensor& gy, const Tensor& y, GradSink& g) {
        g.add(0, zip(gy, y, [](auto u, auto v) { return u * v; }));
    });
}

Var log(const Var& a) {
    return make_op("log", unary("log", a.value(), [](auto x) { return std::log(x); }), {a},
                   [a](const Tensor& gy, const Tensor&, GradSink& g) {
                       g.add(0, zip(gy, a.value(), [](auto u, auto x) { return u / x; }));
                   });
}

Var tanh(const Var& a) {
    return make_op("tanh", unary("tanh", a.value(), [](auto x) { return std::tanh(x); }), {a},
                   [](const Tensor& gy, const Tensor& y, GradSink& g) {
                       g.add(0, zip(gy, y, [](auto u, auto v) { return u * (1 - v * v); }));
                   });
}

Var sigmoid(const Var& a) {
    return make_op("sigmoid", unary("sigmoid", a.value(), [](auto x) { return sigmoid_of(x); }), {a},
                   [](const Tensor& gy, const Tensor& y, GradSink& g) {
                       g.add(0, zip(gy, y, [](auto u, auto v) { return u * v * (1 - v); }));
                   });
}

Var softplus(const Var& a) {
    return make_op("softplus", unary("softplus", a.value(), [](auto x) { return softplus_of(x); }), {a},
                   [a](const Tensor& gy, const Tensor&, GradSink& g) {
                       g.add(0, zip(gy, a.value(), [](auto u, auto x) { return u * sigmoid_of(x); }));
                   });
}

Var log_sigmoid(const Var& a) {
    return make_op("log_sigmoid", unary("log_sigmoid", a.value(), [](auto x) { return -softplus_of(-x); }),
                   {a}, [a](const Tensor& gy, const Tensor&, GradSink& g) {
                       g.add(0, zip(gy, a.value(), [](auto u, auto x) { return u * sigmoid_of(-x); }));
                   });
}

Var relu(const Var& a) {
    // x < 0 ? 0 : x keeps NaN visible (a diverged run should not look healthy).
    return make_op("relu", unary("relu", a.value(), [](auto x) { return x < 0 ? decltype(x)(0) : x; }), {a},
                   [](const Tensor& gy, const Tensor& y, GradSink& g) {
                       g.add(0, zip(gy, y, [](auto u, auto v) { return v > 0 ? u : decltype(u)(0); }));
                   });
}

Var elu(const Var& a) {
    // The backward needs only the output: dy/dx = y > 0 ? 1 : y + 1.
    return make_op("elu", unary("elu", a.value(), [](auto x) { return x > 0 ? x : std::expm1(x); }), {a},
                   [](const Tensor& gy, const Tensor& y, GradSink& g) {
                       g.add(0, zip(gy, y, [](auto u, auto v) { return v > 0 ? u : u * (v + 1); }));
                   });
}

Var square(const Var& a) {
    return make_op("square", unary("square", a.value(), [](auto x) { return x * x; }), {a},
                   [a](const Tensor& gy, const Tensor&, GradSink& g) {
                       g.add(0, zip(gy, a.value(), [](auto u, auto x) { return 2 * u * x; }));
                   });
}

Var sqrt(const Var& a) {
    return make_op("sqrt", unary("sqrt", a.value(), [](auto x) { return std::sqrt(x); }), {a},
                   [](const Tensor& gy, const Tensor& y, GradSink& g) {
                       g.add(0, zip(gy, y, [](auto u, auto v) { return u / (2 * v); }));
                   });
}

Var abs(const Var& a) {
    return make_op("abs", unary("abs", a.value(), [](auto x) { return std::abs(x); }), {a},
                   [a](const Tensor& gy, const Tensor&, GradSink& g) {
                       g.add(0, zip(gy, a.value(), [](auto u, auto x) {
                                 return x > 0 ? u : (x < 0 ? -u : decltype(u)(0));
                             }));
                   });
}

}  // namespace flowlab
