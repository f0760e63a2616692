// Shape ops (reshape, slice, concat, gather, transpose) with their backward rules.
#include "flowlab/ops/shape.hpp"

#include <cstring>

#include "backend/gemm_avx512.hpp"
#include "ops/ops_internal.hpp"

namespace flowlab {

using detail::Split3;
using detail::split_at;

namespace {

// dst[o, 0:len] (row length dst_n) = src[o, start:start+len] (row length src_n), rows of
// `inner` elements each.
void copy_blocks(const Tensor& src, std::int64_t src_n, std::int64_t src_start, Tensor& dst, std::int64_t dst_n,
                 std::int64_t dst_start, std::int64_t len, std::int64_t outer, std::int64_t inner) {
    const std::size_t es = dtype_size(src.dtype());
    const char* s = static_cast<const char*>(src.raw());
    char* d = static_cast<char*>(dst.raw());
    const std::size_t bytes = static_cast<std::size_t>(len * inner) * es;
    if (bytes == 0) return;
    for (std::int64_t o = 0; o < outer; ++o)
        std::memcpy(d + ((o * dst_n + dst_start) * inner) * es, s + ((o * src_n + src_start) * inner) * es, bytes);
}

// dst[o, start:start+len] += src[o, :]
void add_blocks(Tensor& dst, std::int64_t dst_n, std::int64_t start, const Tensor& src, std::int64_t len,
                std::int64_t outer, std::int64_t inner) {
    detail::dispatch(dst.dtype(), [&](auto t) {
        using T = decltype(t);
        T* d = dst.data<T>();
        const T* s = src.data<T>();
        const std::int64_t row = len * inner;
        for (std::int64_t o = 0; o < outer; ++o) {
            T* dr = d + (o * dst_n + start) * inner;
            const T* sr = s + o * row;
            #pragma omp simd
            for (std::int64_t j = 0; j < row; ++j) dr[j] += sr[j];
        }
    });
}

void check_slice(const char* op, const Tensor& a, std::int64_t d, std::int64_t start, std::int64_t length) {
    const std::int64_t n = a.shape()[d];
    if (start < 0 || length < 0 || start + length > n)
        throw ShapeError(std::string(op) + ": range [" + std::to_string(start) + ", " +
                         std::to_string(start + length) + ") out of range for dimension " + std::to_string(d) +
                         " of shape " + shape_str(a.shape()));
}

}  // namespace

namespace detail {

Tensor transpose_kernel(const Tensor& a) {
    if (a.dim() != 2) throw ShapeError("transpose2d: needs a 2-d tensor, got " + shape_str(a.shape()));
    const std::int64_t m = a.size(0), n = a.size(1);
    Tensor out = Tensor::empty({n, m}, a.dtype());
    // Glow's conv_stack transposes its 128 x 128 weights at every call: 31 us a call in the
    // scalar loops below, about 1 in registers.
    if (a.dtype() == DType::f32 && backend::avx512::available()) {
        backend::avx512::transpose(a.f32(), m, n, out.f32());
        return out;
    }
    detail::dispatch(a.dtype(), [&](auto t) {
        using T = decltype(t);
        const T* s = a.data<T>();
        T* d = out.data<T>();
        constexpr std::int64_t kB = 32;  // tiles keep both sides in cache
        for (std::int64_t i0 = 0; i0 < m; i0 += kB)
            for (std::int64_t j0 = 0; j0 < n; j0 += kB) {
                const std::int64_t i1 = std::min(m, i0 + kB), j1 = std::min(n, j0 + kB);
                for (std::int64_t i = i0; i < i1; ++i)
                    for (std::int64_t j = j0; j < j1; ++j) d[j * m + i] = s[i * n + j];
            }
    });
    return out;
}

}  // namespace detail

using detail::transpose_kernel;

namespace kern {

Tensor slice(const Tensor& a, std::int64_t dim, std::int64_t start, std::int64_t length) {
    detail::check_defined("slice", a);
    const std::int64_t d = detail::norm_dim("slice", dim, a.dim());
    check_slice("slice", a, d, start, length);
    const Split3 q = split_at(a.shape(), d);
    Shape s = a.shape();
    s[d] = length;
    Tensor out = Tensor::empty(s, a.dtype());
    copy_blocks(a, q.n, start, out, length, 0, length, q.outer, q.inner);
    return out;
}

Tensor concat(const std::vector<Tensor>& parts, std::int64_t dim) {
    if (parts.empty()) throw ShapeError("concat: no tensors");
    const Tensor& first = parts[0];
    detail::check_defined("concat", first);
    const std::int64_t d = detail::norm_dim("concat", dim, first.dim());
    Shape s = first.shape();
    std::int64_t total = 0;
    for (const auto& p : parts) {
        detail::check_dtypes("concat", first, p);
        bool ok = p.dim() == first.dim();
        for (std::int64_t i = 0; ok && i < p.dim(); ++i) ok = i == d || p.shape()[i] == s[i];
        if (!ok) detail::shape_error("concat", first.shape(), p.shape(), "incompatible along dimension " + std::to_string(d));
        total += p.shape()[d];
    }
    s[d] = total;
    Tensor out = Tensor::empty(s, first.dtype());
    const Split3 q = split_at(s, d);
    std::int64_t at = 0;
    for (const auto& p : parts) {
        const std::int64_t len = p.shape()[d];
        copy_blocks(p, len, 0, out, total, at, len, q.outer, q.inner);
        at += len;
    }
    return out;
}

}  // namespace kern

Var reshape(const Var& a, Shape shape) {
    return make_op("reshape", a.value().reshape(std::move(shape)), {a},
                   [a](const Tensor& gy, const Tensor&, GradSink& g) { g.add(0, gy.reshape(a.shape())); });
}

Var slice(const Var& a, std::int64_t dim, std::int64_t start, std::int64_t length) {
    Tensor y = kern::slice(a.value(), dim, start, length);
    const std::int64_t d = detail::norm_dim("slice", dim, a.value().dim());
    const Split3 q = split_at(a.value().shape(), d);
    return make_op("slice", std::move(y), {a}, [q, start, length](const Tensor& gy, const Tensor&, GradSink& g) {
        add_blocks(g.buffer(0), q.n, start, gy, length, q.outer, q.inner);
    });
}

Var concat(const std::vector<Var>& parts, std::int64_t dim) {
    std::vector<Tensor> vals;
    vals.reserve(parts.size());
    for (const auto& p : parts) vals.push_back(p.value());
    Tensor y = kern::concat(vals, dim);
    const std::int64_t d = detail::norm_dim("concat", dim, y.dim());
    std::vector<std::int64_t> lens;
    lens.reserve(parts.size());
    for (const auto& v : vals) lens.push_back(v.shape()[d]);
    return make_op("concat", std::move(y), parts, [d, lens](const Tensor& gy, const Tensor&, GradSink& g) {
        std::int64_t at = 0;
        for (std::size_t i = 0; i < lens.size(); ++i) {
            if (g.needs(i)) g.add(i, kern::slice(gy, d, at, lens[i]));
            at += lens[i];
        }
    });
}

Var gather(const Var& a, const std::vector<std::int64_t>& index, std::int64_t dim) {
    const Tensor& x = a.value();
    detail::check_defined("gather", x);
    const std::int64_t d = detail::norm_dim("gather", dim, x.dim());
    const Split3 q = split_at(x.shape(), d);
    for (auto i : index)
        if (i < 0 || i >= q.n)
            throw ShapeError("gather: index " + std::to_string(i) + " out of range for dimension " + std::to_string(d) +
                             " of shape " + shape_str(x.shape()));
    Shape s = x.shape();
    const auto m = static_cast<std::int64_t>(index.size());
    s[d] = m;
    Tensor y = Tensor::empty(s, x.dtype());
    detail::dispatch(x.dtype(), [&](auto t) {
        using T = decltype(t);
        const T* src = x.data<T>();
        T* dst = y.data<T>();
        for (std::int64_t o = 0; o < q.outer; ++o)
            for (std::int64_t i = 0; i < m; ++i)
                std::memcpy(dst + (o * m + i) * q.inner, src + (o * q.n + index[i]) * q.inner,
                            static_cast<std::size_t>(q.inner) * sizeof(T));
    });
    return make_op("gather", std::move(y), {a}, [q, index, m](const Tensor& gy, const Tensor&, GradSink& g) {
        Tensor& buf = g.buffer(0);
        detail::dispatch(buf.dtype(), [&](auto t) {
            using T = decltype(t);
            T* dst = buf.data<T>();
            const T* src = gy.data<T>();
            for (std::int64_t o = 0; o < q.outer; ++o)
                for (std::int64_t i = 0; i < m; ++i) {
                    T* dr = dst + (o * q.n + index[i]) * q.inner;
                    const T* sr = src + (o * m + i) * q.inner;
                    #pragma omp simd
                    for (std::int64_t j = 0; j < q.inner; ++j) dr[j] += sr[j];
                }
        });
    });
}

Var transpose2d(const Var& a) {
    detail::check_defined("transpose2d", a.value());
    return make_op("transpose2d", transpose_kernel(a.value()), {a},
                   [](const Tensor& gy, const Tensor&, GradSink& g) { g.add(0, transpose_kernel(gy)); });
}

}  // namespace flowlab
