// batched_matmul: N independent products [M, K] x [K, L] (declared in ops/linalg.hpp), the
// shape attention needs (one product per sample and head) without slicing the batch apart.
//
// f32 runs each product through the backend's cached oneDNN matmul (backend::sgemm), the
// products in parallel on the pool; f64 (gradient checks) on a plain loop. Each product is
// computed the same way whatever the thread count, so results do not depend on it.
#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "backend/onednn.hpp"
#include "flowlab/ops/linalg.hpp"
#include "ops/ops_internal.hpp"

namespace flowlab {

namespace {

struct Dims {
    std::int64_t n = 0, m = 0, k = 0, l = 0;
};

// A^T B with few columns (attention's value and key gradients, A^T G with G [P, d]): oneDNN
// 2.6 runs it at a quarter of the untransposed products' speed for d = 8 (11 against 46 GMAC/s
// on one core at P = 196). As C^T = B^T A instead, each column of C is a sum of A's contiguous
// rows scaled by one of B's values: vector loops over rows of M, with C^T (M l values) in the
// cache, at 22 GMAC/s whatever l; from l = 16 on, oneDNN is as fast or faster.
constexpr std::int64_t kSkinny = 8;

void at_b_skinny(const float* A, const float* B, float* C, const Dims& d, float beta) {
    thread_local std::vector<float> ct;
    ct.assign(static_cast<std::size_t>(d.l * d.m), 0.0f);
    float* t = ct.data();
    for (std::int64_t q = 0; q < d.k; ++q) {
        const float* arow = A + q * d.m;
        const float* brow = B + q * d.l;
        for (std::int64_t j = 0; j < d.l; ++j) {
            const float s = brow[j];
            float* trow = t + j * d.m;
#pragma omp simd
            for (std::int64_t i = 0; i < d.m; ++i) trow[i] += s * arow[i];
        }
    }
    for (std::int64_t i = 0; i < d.m; ++i)
        for (std::int64_t j = 0; j < d.l; ++j) {
            const float v = t[j * d.m + i];
            C[i * d.l + j] = beta == 0.0f ? v : v + beta * C[i * d.l + j];
        }
}

// C_i = op(A_i) op(B_i) + beta C_i for i in [0, n), A_i [m, k] after op, B_i [k, l] after op.
template <class T>
void gemm_batch(const T* a, bool ta, const T* b, bool tb, T* c, const Dims& d, T beta) {
    const std::int64_t sa = d.m * d.k, sb = d.k * d.l, sc = d.m * d.l;
    auto one = [&](std::int64_t i) {
        const T* A = a + i * sa;
        const T* B = b + i * sb;
        T* C = c + i * sc;
        if constexpr (std::is_same_v<T, float>) {
            if (ta && !tb && d.l <= kSkinny) {
                at_b_skinny(A, B, C, d, beta);
                return;
            }
            const backend::Gemm g{.m = d.m, .n = d.l, .k = d.k, .trans_a = ta, .trans_b = tb, .alpha = 1.0f,
                                  .beta = beta};
            backend::sgemm(g, A, B, C);
        } else {
            std::vector<T> acc(static_cast<std::size_t>(d.l));
            for (std::int64_t r = 0; r < d.m; ++r) {
                std::fill(acc.begin(), acc.end(), T(0));
                for (std::int64_t q = 0; q < d.k; ++q) {
                    const T x = ta ? A[q * d.m + r] : A[r * d.k + q];
                    for (std::int64_t j = 0; j < d.l; ++j) acc[j] += x * (tb ? B[j * d.k + q] : B[q * d.l + j]);
                }
                T* out = C + r * d.l;
                for (std::int64_t j = 0; j < d.l; ++j) out[j] = acc[j] + (beta == T(0) ? T(0) : beta * out[j]);
            }
        }
    };
    // About kTileFlops-sized groups of products per task; a lone large product tiles itself.
    const double flops = 2.0 * static_cast<double>(d.m) * static_cast<double>(d.k) * static_cast<double>(d.l);
    const auto grain = std::max<std::int64_t>(1, static_cast<std::int64_t>(2e6 / std::max(1.0, flops)));
    parallel_for(d.n, grain, [&](std::int64_t i0, std::int64_t i1) {
        for (std::int64_t i = i0; i < i1; ++i) one(i);
    });
}

void run(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, const Dims& d, double beta) {
    dispatch(a.dtype(), [&](auto tag) {
        using T = decltype(tag);
        gemm_batch<T>(a.data<T>(), ta, b.data<T>(), tb, c.data<T>(), d, static_cast<T>(beta));
    });
}

}  // namespace

Var batched_matmul(const Var& a, const Var& b, bool trans_a, bool trans_b) {
    const Tensor& av = a.value();
    const Tensor& bv = b.value();
    detail::check_dtypes("batched_matmul", av, bv);
    auto shapes = [&] {
        return shape_str(av.shape()) + (trans_a ? "^T" : "") + " and " + shape_str(bv.shape()) + (trans_b ? "^T" : "");
    };
    if (av.dim() != 3 || bv.dim() != 3)
        throw ShapeError("batched_matmul: needs two 3-d tensors [N, M, K] and [N, K, L], got " + shapes());
    Dims d;
    d.n = av.size(0);
    d.m = trans_a ? av.size(2) : av.size(1);
    d.k = trans_a ? av.size(1) : av.size(2);
    d.l = trans_b ? bv.size(1) : bv.size(2);
    const std::int64_t kb = trans_b ? bv.size(2) : bv.size(1);
    if (bv.size(0) != d.n) throw ShapeError("batched_matmul: batch sizes differ in " + shapes());
    if (kb != d.k) throw ShapeError("batched_matmul: inner sizes differ in " + shapes());
    Tensor c = Tensor::zeros({d.n, d.m, d.l}, av.dtype());
    if (d.k > 0) run(av, trans_a, bv, trans_b, c, d, 0.0);
    return make_op("batched_matmul", std::move(c), {a, b},
                   [av, bv, trans_a, trans_b, d](const Tensor& g, const Tensor&, GradSink& sink) {
                       if (d.k == 0) return;
                       // C = A' B' (A' = op(A), B' = op(B)): dA' = G B'^T, dB' = A'^T G, and a
                       // transposed operand takes the transpose of its gradient.
                       if (sink.needs(0)) {
                           Tensor& ga = sink.buffer(0);
                           if (!trans_a)
                               run(g, false, bv, !trans_b, ga, {d.n, d.m, d.l, d.k}, 1.0);
                           else
                               run(bv, trans_b, g, true, ga, {d.n, d.k, d.l, d.m}, 1.0);
                       }
                       if (sink.needs(1)) {
                           Tensor& gb = sink.buffer(1);
                           if (!trans_b)
                               run(av, !trans_a, g, false, gb, {d.n, d.k, d.m, d.l}, 1.0);
                           else
                               run(g, true, av, trans_a, gb, {d.n, d.l, d.m, d.k}, 1.0);
                       }
                   });
}

}  // namespace flowlab
