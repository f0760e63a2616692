// `invconv1x1`: Glow's invertible 1x1 convolution in LU form,
//   W = P L (U + diag(sign_s exp(log_s))),  L unit lower, U strictly upper, P a permutation,
// initialised from the LU decomposition of a random rotation (QR of a seeded Gaussian matrix).
//   inverse (data -> latent): z = W x per pixel, log-det  H W sum(log_s)
//   forward (latent -> data): x = W^-1 z,       log-det -H W sum(log_s)
// W^-1 is computed per call in f64. P and sign_s are fixed buffers; L and U are stored as full
// matrices of which only the strict triangles are used (the rest gets no gradient).
#include <cmath>
#include <memory>

#include <flowlab/conv.hpp>

#include "image.hpp"

namespace flowlab::image {
namespace {

using Mat = std::vector<double>;  // row-major C x C

Mat read(const Tensor& t) { return t.to_vector(); }

Tensor write(const Mat& m, std::int64_t c, DType dt) { return Tensor::from_vector({c, c}, m, dt); }

Mat matmul(const Mat& a, const Mat& b, std::int64_t n, bool ta = false, bool tb = false) {
    Mat c(static_cast<std::size_t>(n * n), 0.0);
    for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t k = 0; k < n; ++k) {
            const double av = ta ? a[static_cast<std::size_t>(k * n + i)] : a[static_cast<std::size_t>(i * n + k)];
            for (std::int64_t j = 0; j < n; ++j)
                c[static_cast<std::size_t>(i * n + j)] +=
                    av * (tb ? b[static_cast<std::size_t>(j * n + k)] : b[static_cast<std::size_t>(k * n + j)]);
        }
    return c;
}

// Gauss-Jordan with partial pivoting; throws NumericError on a singular matrix.
Mat invert(Mat a, std::int64_t n) {
    Mat inv(static_cast<std::size_t>(n * n), 0.0);
    for (std::int64_t i = 0; i < n; ++i) inv[static_cast<std::size_t>(i * n + i)] = 1.0;
    auto at = [n](Mat& m, std::int64_t i, std::int64_t j) -> double& { return m[static_cast<std::size_t>(i * n + j)]; };
    for (std::int64_t col = 0; col < n; ++col) {
        std::int64_t piv = col;
        for (std::int64_t r = col + 1; r < n; ++r)
            if (std::fabs(at(a, r, col)) > std::fabs(at(a, piv, col))) piv = r;
        if (!(std::fabs(at(a, piv, col)) > 1e-300))
            throw NumericError("invconv1x1: the weight matrix is singular (a log_s went to -inf?)");
        if (piv != col)
            for (std::int64_t j = 0; j < n; ++j) {
                std::swap(at(a, piv, j), at(a, col, j));
                std::swap(at(inv, piv, j), at(inv, col, j));
            }
        const double d = 1.0 / at(a, col, col);
        for (std::int64_t j = 0; j < n; ++j) {
            at(a, col, j) *= d;
            at(inv, col, j) *= d;
        }
        for (std::int64_t r = 0; r < n; ++r) {
            if (r == col) continue;
            const double f = at(a, r, col);
            if (f == 0.0) continue;
            for (std::int64_t j = 0; j < n; ++j) {
                at(a, r, j) -= f * at(a, col, j);
                at(inv, r, j) -= f * at(inv, col, j);
            }
        }
    }
    return inv;
}

// W = P (tril(L, -1) + I) (triu(U, 1) + diag(sign exp(log_s))) as one op.
Var compose_weight(const Var& L, const Var& U, const Var& log_s, const Tensor& P, const Tensor& sign) {
    const std::int64_t n = L.size(0);
    const DType dt = L.dtype();
    const Mat lv = read(L.value()), uv = read(U.value()), sv = read(log_s.value()), pv = read(P), sg = read(sign);
    Mat lo(static_cast<std::size_t>(n * n), 0.0), up(static_cast<std::size_t>(n * n), 0.0);
    for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < n; ++j) {
            const auto k = static_cast<std::size_t>(i * n + j);
            lo[k] = i > j ? lv[k] : (i == j ? 1.0 : 0.0);
            up[k] = i < j ? uv[k] : (i == j ? sg[static_cast<std::size_t>(i)] * std::exp(sv[static_cast<std::size_t>(i)]) : 0.0);
        }
    const Mat w = matmul(pv, matmul(lo, up, n), n);
    return make_op("invconv1x1_weight", write(w, n, dt), {L, U, log_s},
                   [n, dt, lo, up, pv](const Tensor& gw_t, const Tensor&, GradSink& g) {
                       const Mat gw = read(gw_t);
                       const Mat ga = matmul(pv, gw, n, true);           // P^T gW
                       const Mat gl = matmul(ga, up, n, false, true);    // gA up^T
                       const Mat gu = matmul(lo, ga, n, true);           // lo^T gA
                       Mat dl(static_cast<std::size_t>(n * n), 0.0), du(dl), ds(static_cast<std::size_t>(n), 0.0);
                       for (std::int64_t i = 0; i < n; ++i)
                           for (std::int64_t j = 0; j < n; ++j) {
                               const auto k = static_cast<std::size_t>(i * n + j);
                               if (i > j) dl[k] = gl[k];
                               if (i < j) du[k] = gu[k];
                           }
                       // d up_ii / d log_s_i = up_ii.
                       for (std::int64_t i = 0; i < n; ++i)
                           ds[static_cast<std::size_t>(i)] = gu[static_cast<std::size_t>(i * n + i)] * up[static_cast<std::size_t>(i * n + i)];
                       if (g.needs(0)) g.add(0, write(dl, n, dt));
                       if (g.needs(1)) g.add(1, write(du, n, dt));
                       if (g.needs(2)) g.add(2, Tensor::from_vector({n}, ds, dt));
                   });
}

// W^-1 in f64, with d(W^-1) = -W^-1 dW W^-1.
Var inverse_matrix(const Var& W) {
    const std::int64_t n = W.size(0);
    const DType dt = W.dtype();
    const Mat inv = invert(read(W.value()), n);
    return make_op("invconv1x1_inverse", write(inv, n, dt), {W}, [n, dt, inv](const Tensor& gy, const Tensor&, GradSink& g) {
        if (!g.needs(0)) return;
        // gW = -inv^T gY inv^T
        Mat t = matmul(inv, read(gy), n, true);
        t = matmul(t, inv, n, false, true);
        for (double& v : t) v = -v;
        g.add(0, write(t, n, dt));
    });
}

class InvConv1x1 final : public Bijector {
public:
    InvConv1x1(const Shape& in, Rng& rng) : in_(in) {
        require_image(in, "invconv1x1");
        const std::int64_t n = in[0];
        // A random rotation: QR (modified Gram-Schmidt on the columns) of a Gaussian matrix.
        Tensor g = Tensor::empty({n, n}, DType::f64);
        rng.fill_normal(g);
        Mat a = read(g), q(static_cast<std::size_t>(n * n), 0.0);
        for (std::int64_t j = 0; j < n; ++j) {
            std::vector<double> v(static_cast<std::size_t>(n));
            for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = a[static_cast<std::size_t>(i * n + j)];
            for (std::int64_t k = 0; k < j; ++k) {
                double d = 0.0;
                for (std::int64_t i = 0; i < n; ++i) d += q[static_cast<std::size_t>(i * n + k)] * v[static_cast<std::size_t>(i)];
                for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] -= d * q[static_cast<std::size_t>(i * n + k)];
            }
            double norm = 0.0;
            for (double x : v) norm += x * x;
            norm = std::sqrt(norm);
            if (norm < 1e-12) throw NumericError("invconv1x1: degenerate random matrix at init");
            for (std::int64_t i = 0; i < n; ++i) q[static_cast<std::size_t>(i * n + j)] = v[static_cast<std::size_t>(i)] / norm;
        }
        // LU with partial pivoting: R q = lo up with R a row permutation, so q = R^T lo up.
        Mat u = q, lo(static_cast<std::size_t>(n * n), 0.0);
        std::vector<std::int64_t> perm(static_cast<std::size_t>(n));
        for (std::int64_t i = 0; i < n; ++i) perm[static_cast<std::size_t>(i)] = i;
        auto at = [n](Mat& m, std::int64_t i, std::int64_t j) -> double& { return m[static_cast<std::size_t>(i * n + j)]; };
        for (std::int64_t k = 0; k < n; ++k) {
            std::int64_t piv = k;
            for (std::int64_t r = k + 1; r < n; ++r)
                if (std::fabs(at(u, r, k)) > std::fabs(at(u, piv, k))) piv = r;
            if (piv != k) {
                for (std::int64_t j = 0; j < n; ++j) {
                    std::swap(at(u, piv, j), at(u, k, j));
                    std::swap(at(lo, piv, j), at(lo, k, j));
                }
                std::swap(perm[static_cast<std::size_t>(piv)], perm[static_cast<std::size_t>(k)]);
            }
            for (std::int64_t r = k + 1; r < n; ++r) {
                const double f = at(u, r, k) / at(u, k, k);
                at(lo, r, k) = f;
                for (std::int64_t j = k; j < n; ++j) at(u, r, j) -= f * at(u, k, j);
            }
        }
        // Row k of R q is row perm[k] of q, so P = R^T has P[perm[k], k] = 1.
        Tensor P = Tensor::zeros({n, n}), sign = Tensor::zeros({n}), L = Tensor::zeros({n, n}), U = Tensor::zeros({n, n}),
               log_s = Tensor::zeros({n});
        for (std::int64_t k = 0; k < n; ++k) {
            P.set_item(perm[static_cast<std::size_t>(k)] * n + k, 1.0);
            const double s = at(u, k, k);
            sign.set_item(k, s < 0 ? -1.0 : 1.0);
            log_s.set_item(k, std::log(std::fabs(s)));
            for (std::int64_t j = 0; j < n; ++j) {
                if (j < k) L.set_item(k * n + j, at(lo, k, j));
                if (j > k) U.set_item(k * n + j, at(u, k, j));
            }
        }
        L_ = add_parameter("L", std::move(L));
        U_ = add_parameter("U", std::move(U));
        log_s_ = add_parameter("log_s", std::move(log_s));
        P_ = add_buffer("P", std::move(P));
        sign_ = add_buffer("sign_s", std::move(sign));
    }

    // The current weight (for tests).
    Tensor weight() { return compose_weight(L_, U_, log_s_, P_, sign_).value(); }

protected:
    FlowResult do_inverse(const Var& x, const Var&) override {
        Var w = compose_weight(L_, U_, log_s_, P_, sign_);
        return {conv1x1(x, w), broadcast_log_det(sum_all(log_s_) * pixels(), x)};
    }
    FlowResult do_forward(const Var& z, const Var&) override {
        Var w_inv = inverse_matrix(compose_weight(L_, U_, log_s_, P_, sign_));
        return {conv1x1(z, w_inv), broadcast_log_det(sum_all(log_s_) * -pixels(), z)};
    }

private:
    double pixels() const { return static_cast<double>(in_[1] * in_[2]); }

    Shape in_;
    Var L_, U_, log_s_;
    Tensor P_, sign_;
};

}  // namespace

void register_invconv(Registry& reg) {
    BijectorEntry e{"invconv1x1",
                    "invertible 1x1 convolution W = P L (U + diag(sign_s exp(log_s))), from a random rotation; "
                    "log-det H W sum(log_s)",
                    {},
                    [](const Params&, const BuildContext& c) -> std::unique_ptr<Bijector> {
                        if (!c.rng) throw ConfigError("invconv1x1: needs a random generator for its init");
                        return std::make_unique<InvConv1x1>(c.event_shape, *c.rng);
                    }};
    e.hints.shapes = {{4, 2, 2}, {3, 3, 2}};
    reg.add_bijector(std::move(e));
}

}  // namespace flowlab::image
