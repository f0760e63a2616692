// Private helpers shared by the ops*.cpp files: dtype dispatch, element-wise loops and the
// broadcast plan. Not installed; plugins use the public kern:: kernels instead.
//
// Hot loops carry `#pragma omp simd` (the library builds with OpenMP): at -O2, GCC 12
// vectorizes only loops that need no runtime aliasing check, which none of these would pass
// otherwise; measured, relu forward and backward ran 4-8x slower as scalar code.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "flowlab/errors.hpp"
#include "flowlab/ops.hpp"
#include "flowlab/kernels.hpp"
#include "flowlab/parallel.hpp"

namespace flowlab::detail {

using ::flowlab::dispatch;  // the toolkit's (kernels.hpp)

// The transpose of a 2-d tensor, in cache-sized tiles (shape.cpp).
Tensor transpose_kernel(const Tensor& a);

// A shape viewed as [outer, n, inner] around dimension d (reductions, slices, concatenation).
struct Split3 {
    std::int64_t outer = 1, n = 1, inner = 1;
};
inline Split3 split_at(const Shape& s, std::int64_t d) {
    Split3 r;
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(s.size()); ++i) {
        if (i < d)
            r.outer *= s[i];
        else if (i == d)
            r.n = s[i];
        else
            r.inner *= s[i];
    }
    return r;
}

[[noreturn]] inline void shape_error(const char* op, const Shape& a, const Shape& b,
                                     const std::string& why = "incompatible") {
    throw ShapeError(std::string(op) + ": shapes " + shape_str(a) + " and " + shape_str(b) + " are " + why);
}

inline void check_defined(const char* op, const Tensor& a) {
    if (!a.defined()) throw ShapeError(std::string(op) + ": undefined tensor");
}

inline void check_dtypes(const char* op, const Tensor& a, const Tensor& b) {
    check_defined(op, a);
    check_defined(op, b);
    if (a.dtype() != b.dtype())
        throw ShapeError(std::string(op) + ": dtypes " + dtype_name(a.dtype()) + " and " + dtype_name(b.dtype()) +
                         " differ (shapes " + shape_str(a.shape()) + " and " + shape_str(b.shape()) + ")");
}

// Normalises a possibly negative dimension index.
inline std::int64_t norm_dim(const char* op, std::int64_t d, std::int64_t nd) {
    const std::int64_t k = d < 0 ? d + nd : d;
    if (k < 0 || k >= nd)
        throw ShapeError(std::string(op) + ": dimension " + std::to_string(d) + " out of range for a " +
                         std::to_string(nd) + "-d tensor");
    return k;
}

// Element-wise loops stay on the calling thread unless the range gives at least three chunks of
// kElementwiseGrain: below that, waking the pool costs more than it saves (a [512, 128] tensor
// stays inline, [100, 1568] goes parallel).
template <class F>
inline void elementwise_for(std::int64_t n, const F& f) {
    if (n <= 2 * kElementwiseGrain)
        f(std::int64_t{0}, n);
    else
        parallel_for(n, kElementwiseGrain, f);
}

// out[i] = f(a[i])
template <class T, class F>
Tensor map1(const Tensor& a, F f) {
    Tensor out = Tensor::empty(a.shape(), a.dtype());
    const T* pa = a.data<T>();
    T* po = out.data<T>();
    elementwise_for(a.numel(), [&](std::int64_t b, std::int64_t e) {
        #pragma omp simd
        for (std::int64_t i = b; i < e; ++i) po[i] = f(pa[i]);
    });
    return out;
}

// out[i] = f(a[i], b[i]) on equal shapes.
template <class T, class F>
Tensor map2(const Tensor& a, const Tensor& b, F f) {
    Tensor out = Tensor::empty(a.shape(), a.dtype());
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* po = out.data<T>();
    elementwise_for(a.numel(), [&](std::int64_t s, std::int64_t e) {
        #pragma omp simd
        for (std::int64_t i = s; i < e; ++i) po[i] = f(pa[i], pb[i]);
    });
    return out;
}

// out[i] = f(a[i], b[i], c[i]) on equal shapes.
template <class T, class F>
Tensor map3(const Tensor& a, const Tensor& b, const Tensor& c, F f) {
    Tensor out = Tensor::empty(a.shape(), a.dtype());
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    const T* pc = c.data<T>();
    T* po = out.data<T>();
    elementwise_for(a.numel(), [&](std::int64_t s, std::int64_t e) {
        #pragma omp simd
        for (std::int64_t i = s; i < e; ++i) po[i] = f(pa[i], pb[i], pc[i]);
    });
    return out;
}

// ------------------------------------------------------------------------------ broadcasting
constexpr int kMaxDims = 8;

// Two operands viewed against an output shape with stride 0 on stretched dimensions, after
// dropping size-1 dimensions and merging neighbours that stay contiguous for both. The hot
// cases collapse to one or two dimensions: [B, N] with [N] is {B, N} with b-strides {0, 1}.
struct Bcast {
    int nd = 0;
    std::int64_t n[kMaxDims];
    std::int64_t sa[kMaxDims];
    std::int64_t sb[kMaxDims];
};

inline Bcast make_bcast(const char* op, const Shape& out, const Shape& a, const Shape& b) {
    const int nd = static_cast<int>(out.size());
    if (nd > kMaxDims) shape_error(op, a, b, "of more than 8 dimensions");
    std::int64_t n[kMaxDims], sa[kMaxDims], sb[kMaxDims];
    std::int64_t ra = 1, rb = 1;
    for (int i = nd - 1; i >= 0; --i) {
        const int ia = i - (nd - static_cast<int>(a.size()));
        const int ib = i - (nd - static_cast<int>(b.size()));
        const std::int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
        n[i] = out[i];
        sa[i] = da == 1 ? 0 : ra;
        sb[i] = db == 1 ? 0 : rb;
        ra *= da;
        rb *= db;
    }
    Bcast p;
    for (int i = 0; i < nd; ++i) {
        if (n[i] == 1) continue;
        if (p.nd > 0) {
            const int j = p.nd - 1;
            if (p.sa[j] == sa[i] * n[i] && p.sb[j] == sb[i] * n[i]) {
                p.n[j] *= n[i];
                p.sa[j] = sa[i];
                p.sb[j] = sb[i];
                continue;
            }
        }
        p.n[p.nd] = n[i];
        p.sa[p.nd] = sa[i];
        p.sb[p.nd] = sb[i];
        ++p.nd;
    }
    if (p.nd == 0) {  // all ones: a single element
        p.nd = 1;
        p.n[0] = 1;
        p.sa[0] = p.sb[0] = 1;
    }
    return p;
}

// Calls row(r, off_a, off_b) for the rows [r0, r1) of the plan's outer dimensions (all but the
// last), with the element offsets of each operand at the row's start.
template <class F>
inline void for_rows(const Bcast& p, std::int64_t r0, std::int64_t r1, F row) {
    const int outer = p.nd - 1;
    std::int64_t idx[kMaxDims] = {};
    std::int64_t oa = 0, ob = 0, rem = r0;
    for (int d = outer - 1; d >= 0; --d) {
        idx[d] = rem % p.n[d];
        rem /= p.n[d];
        oa += idx[d] * p.sa[d];
        ob += idx[d] * p.sb[d];
    }
    for (std::int64_t r = r0; r < r1; ++r) {
        row(r, oa, ob);
        for (int d = outer - 1; d >= 0; --d) {
            oa += p.sa[d];
            ob += p.sb[d];
            if (++idx[d] < p.n[d]) break;
            oa -= p.sa[d] * p.n[d];
            ob -= p.sb[d] * p.n[d];
            idx[d] = 0;
        }
    }
}

inline std::int64_t plan_rows(const Bcast& p) {
    std::int64_t r = 1;
    for (int d = 0; d + 1 < p.nd; ++d) r *= p.n[d];
    return r;
}

// out = f(a, b) with NumPy broadcasting; the inner loop is specialised on the operands'
// last-dimension strides (both contiguous, one of them a per-row scalar).
template <class T, class F>
Tensor broadcast_map(const char* op, const Tensor& a, const Tensor& b, F f) {
    if (a.shape() == b.shape()) return map2<T>(a, b, f);
    const Shape out_shape = broadcast_shapes(a.shape(), b.shape(), op);
    Tensor out = Tensor::empty(out_shape, a.dtype());
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* po = out.data<T>();
    const std::int64_t n = out.numel();
    if (b.numel() == 1) {
        const T s = pb[0];
        elementwise_for(n, [&](std::int64_t lo, std::int64_t hi) {
            #pragma omp simd
            for (std::int64_t i = lo; i < hi; ++i) po[i] = f(pa[i], s);
        });
        return out;
    }
    if (a.numel() == 1) {
        const T s = pa[0];
        elementwise_for(n, [&](std::int64_t lo, std::int64_t hi) {
            #pragma omp simd
            for (std::int64_t i = lo; i < hi; ++i) po[i] = f(s, pb[i]);
        });
        return out;
    }
    const Bcast p = make_bcast(op, out_shape, a.shape(), b.shape());
    const std::int64_t len = p.n[p.nd - 1];
    const std::int64_t ia = p.sa[p.nd - 1], ib = p.sb[p.nd - 1];
    const std::int64_t rows = plan_rows(p);
    auto body = [&](std::int64_t r0, std::int64_t r1) {
        for_rows(p, r0, r1, [&](std::int64_t r, std::int64_t oa, std::int64_t ob) {
            const T* ra = pa + oa;
            const T* rb = pb + ob;
            T* ro = po + r * len;
            if (ia && ib) {
                #pragma omp simd
                for (std::int64_t j = 0; j < len; ++j) ro[j] = f(ra[j], rb[j]);
            } else if (ia) {
                const T s = rb[0];
                #pragma omp simd
                for (std::int64_t j = 0; j < len; ++j) ro[j] = f(ra[j], s);
            } else {
                const T s = ra[0];
                #pragma omp simd
                for (std::int64_t j = 0; j < len; ++j) ro[j] = f(s, rb[j]);
            }
        });
    };
    if (n <= 2 * kElementwiseGrain)
        body(0, rows);
    else
        parallel_for(rows, std::max<std::int64_t>(1, kElementwiseGrain / len), body);
    return out;
}

// The gradient for an input of shape `s` from a gradient of the broadcast output shape:
// `g` itself when the shapes agree (the sink handles the sharing), else its sum down to `s`.
inline Tensor reduce_to(const Tensor& g, const Shape& s) {
    return g.shape() == s ? g : kern::sum_to(g, s);
}

// Whether v already holds a gradient, so a GEMM can accumulate into it (beta = 1) instead of
// writing a fresh tensor for the sink to adopt.
inline bool has_grad(const Var& v) { return v.defined() && v.node()->grad.defined(); }

// C = alpha * (op(A) op(B) + bias) + beta * C, then ReLU when `relu` (linalg.cpp), with every
// check in one place.
void gemm_impl(const char* op, const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, double alpha,
               double beta, const Tensor* bias, bool relu = false);

// Whether gemm_impl runs an f32 product [m, k] x [k, n] as vector loops (a side of at most 4)
// rather than on oneDNN.
bool gemm_is_skinny(std::int64_t m, std::int64_t n, std::int64_t k);

// One block of rows [k0, k1) of a skinny weight gradient C = A^T G (A [k, m], G [k, n], f32,
// row-major; gemm_is_skinny(m, n, k)), continuing the sums of the blocks before it: blocks run
// in order over [0, k) give gemm_impl(A, true, G, false, C, 1, 0)'s bits, so each block can
// run on the thread that holds its rows. `state` carries the running sums from block to block
// (skinny_grad_state_size floats, 0 when this machine's kernels cannot continue a sum: the
// caller then runs the whole product, and this returns false); the last block writes C.
std::int64_t skinny_grad_state_size(std::int64_t m, std::int64_t n);
bool skinny_grad_block(const float* a, const float* g, std::int64_t m, std::int64_t n, std::int64_t k0,
                       std::int64_t k1, bool first, bool last, float* state, float* c);

// Rows [r0, r1) of sum(a, 0)'s running column sums over a [rows, cols] f32 (cols >= 2),
// continuing out's (first: starting from row r0): blocks run in order over all rows give
// sum(a, 0)'s bits.
void column_sum_block(const float* a, std::int64_t cols, std::int64_t r0, std::int64_t r1, bool first, float* out);

// Rows r0..r1 of the f32 product C = A op(B) (+ bias) (ReLU when `relu`), A [m, k] and C [m, n]
// row-major, on the calling thread; with `gate` (a tensor of C's shape) then gate > 0 ? C : 0,
// a ReLU's backward pass. The same bits as gemm_impl gives those rows when they are one of its
// row tiles (backend::gemm_tiling), or any rows of a skinny product. `sparse_a`: A is likely
// half zeros (a ReLU's output, a gradient one gated), which the product may skip, with the
// same bits (backend::sgemm_sparse).
void gemm_rows(const float* a, const float* b, bool tb, float* c, std::int64_t m, std::int64_t n, std::int64_t k,
               std::int64_t r0, std::int64_t r1, const float* bias, bool relu, const float* gate = nullptr,
               bool sparse_a = false);

// Writes a GEMM result into input i's gradient: straight into a fresh tensor the sink adopts,
// or accumulated with beta = 1 when the input already has a gradient.
template <class F>
void gemm_grad(GradSink& g, std::size_t i, const Var& v, F compute) {
    if (!g.needs(i)) return;
    if (has_grad(v)) {
        compute(g.buffer(i), 1.0);
    } else {
        Tensor t = Tensor::empty(v.shape(), v.dtype());
        compute(t, 0.0);
        g.add(i, std::move(t));
    }
}

}  // namespace flowlab::detail
