// log|det A| of a batch of small dense matrices, with its gradient A^-T: the exact log-det mode
// forms I + J for every sample and ends here. LU with partial pivoting in double, whatever the
// dtype, so that f32 Jacobians of a few hundred values still give a log-det good to float
// precision.
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "residual.hpp"

namespace flowlab::residual {

namespace {

// LU of the d x d matrix `a` (row-major, in place) with partial pivoting; perm[i] is the row of
// the original in row i. Returns false for a singular matrix.
bool lu(std::vector<double>& a, std::vector<std::int64_t>& perm, std::int64_t d) {
    perm.resize(static_cast<std::size_t>(d));
    for (std::int64_t i = 0; i < d; ++i) perm[static_cast<std::size_t>(i)] = i;
    for (std::int64_t k = 0; k < d; ++k) {
        std::int64_t p = k;
        for (std::int64_t i = k + 1; i < d; ++i)
            if (std::fabs(a[static_cast<std::size_t>(i * d + k)]) > std::fabs(a[static_cast<std::size_t>(p * d + k)])) p = i;
        if (a[static_cast<std::size_t>(p * d + k)] == 0.0) return false;
        if (p != k) {
            for (std::int64_t j = 0; j < d; ++j)
                std::swap(a[static_cast<std::size_t>(k * d + j)], a[static_cast<std::size_t>(p * d + j)]);
            std::swap(perm[static_cast<std::size_t>(k)], perm[static_cast<std::size_t>(p)]);
        }
        const double pivot = a[static_cast<std::size_t>(k * d + k)];
        for (std::int64_t i = k + 1; i < d; ++i) {
            double& f = a[static_cast<std::size_t>(i * d + k)];
            f /= pivot;
            if (f == 0.0) continue;
            for (std::int64_t j = k + 1; j < d; ++j)
                a[static_cast<std::size_t>(i * d + j)] -= f * a[static_cast<std::size_t>(k * d + j)];
        }
    }
    return true;
}

std::vector<double> matrix(const Tensor& a, std::int64_t b, std::int64_t d) {
    std::vector<double> m(static_cast<std::size_t>(d * d));
    dispatch(a.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* p = a.data<T>() + b * d * d;
        for (std::int64_t i = 0; i < d * d; ++i) m[static_cast<std::size_t>(i)] = static_cast<double>(p[i]);
    });
    return m;
}

}  // namespace

Var log_abs_det(const Var& a) {
    const Tensor& av = a.value();
    if (av.dim() != 3 || av.size(1) != av.size(2))
        throw ShapeError("log_abs_det: expected square matrices [B, D, D], got " + shape_str(av.shape()));
    const std::int64_t B = av.size(0), d = av.size(1);
    Tensor out = Tensor::empty({B}, av.dtype());
    std::vector<double> vals(static_cast<std::size_t>(B));
    parallel_for(B, std::max<std::int64_t>(1, 4096 / std::max<std::int64_t>(1, d * d)), [&](std::int64_t b0, std::int64_t b1) {
        std::vector<std::int64_t> perm;
        for (std::int64_t b = b0; b < b1; ++b) {
            std::vector<double> m = matrix(av, b, d);
            double s = 0.0;
            if (!lu(m, perm, d)) s = -std::numeric_limits<double>::infinity();
            else
                for (std::int64_t i = 0; i < d; ++i) s += std::log(std::fabs(m[static_cast<std::size_t>(i * d + i)]));
            vals[static_cast<std::size_t>(b)] = s;
        }
    });
    for (std::int64_t b = 0; b < B; ++b) out.set_item(b, vals[static_cast<std::size_t>(b)]);
    return make_op("log_abs_det", std::move(out), {a}, [a, B, d](const Tensor& g, const Tensor&, GradSink& sink) {
        if (!sink.needs(0)) return;
        const Tensor& av = a.value();
        Tensor ga = Tensor::empty(av.shape(), av.dtype());
        std::atomic<bool> singular{false};
        parallel_for(B, 1, [&](std::int64_t b0, std::int64_t b1) {
            std::vector<std::int64_t> perm;
            std::vector<double> col(static_cast<std::size_t>(d));
            for (std::int64_t b = b0; b < b1; ++b) {
                std::vector<double> m = matrix(av, b, d);
                const double gb = g.item(b);
                if (!lu(m, perm, d)) {
                    singular = true;
                    continue;
                }
                // Column j of A^-1 solves A x = e_j; it is row j of A^-T, the gradient's row j.
                for (std::int64_t j = 0; j < d; ++j) {
                    for (std::int64_t i = 0; i < d; ++i) col[static_cast<std::size_t>(i)] = perm[static_cast<std::size_t>(i)] == j ? 1.0 : 0.0;
                    for (std::int64_t i = 0; i < d; ++i)
                        for (std::int64_t k = 0; k < i; ++k)
                            col[static_cast<std::size_t>(i)] -= m[static_cast<std::size_t>(i * d + k)] * col[static_cast<std::size_t>(k)];
                    for (std::int64_t i = d; i-- > 0;) {
                        for (std::int64_t k = i + 1; k < d; ++k)
                            col[static_cast<std::size_t>(i)] -= m[static_cast<std::size_t>(i * d + k)] * col[static_cast<std::size_t>(k)];
                        col[static_cast<std::size_t>(i)] /= m[static_cast<std::size_t>(i * d + i)];
                    }
                    for (std::int64_t i = 0; i < d; ++i) ga.set_item((b * d + j) * d + i, gb * col[static_cast<std::size_t>(i)]);
                }
            }
        });
        if (singular) throw NumericError("log_abs_det: a singular matrix has no gradient");
        sink.add(0, std::move(ga));
    });
}

}  // namespace flowlab::residual
