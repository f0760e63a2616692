// `lu_linear`: an invertible linear map on the flattened features, parametrised by its LU
// decomposition (Kingma & Dhariwal 2018):
//   W = P L (U + diag(sign * exp(log_s)))
// P a fixed permutation, L unit lower triangular, U strictly upper triangular, sign fixed; so W
// is invertible for any parameter values and log|det W| = sum log_s.
//   inverse (x -> z): z = W x per sample, log_det = sum log_s
//   forward (z -> x): x = W^-1 z, log_det = -sum log_s
// W (and W^-1 for the forward direction) is formed once per call by a fused op with a
// hand-written backward; the batch then goes through one GEMM. Initialised at a seeded random
// rotation (QR of a Gaussian matrix), decomposed with partial pivoting.
#include <cmath>
#include <memory>
#include <numeric>
#include <vector>

#include <flowlab/ops.hpp>

#include "density.hpp"

namespace flowlab::density {
namespace {

struct LuFixed {
    std::int64_t n = 0;
    std::vector<std::int64_t> perm;  // W[r, :] = (L U')[perm[r], :]
    std::vector<double> sign;
};

// Row-major n x n helpers in double (initialisation only).
std::vector<double> random_rotation(std::int64_t n, Rng& rng) {
    std::vector<double> a(static_cast<std::size_t>(n * n));
    for (auto& v : a) v = rng.normal();
    // Modified Gram-Schmidt on the columns.
    for (std::int64_t j = 0; j < n; ++j) {
        for (std::int64_t k = 0; k < j; ++k) {
            double dot = 0;
            for (std::int64_t i = 0; i < n; ++i) dot += a[i * n + j] * a[i * n + k];
            for (std::int64_t i = 0; i < n; ++i) a[i * n + j] -= dot * a[i * n + k];
        }
        double norm = 0;
        for (std::int64_t i = 0; i < n; ++i) norm += a[i * n + j] * a[i * n + j];
        norm = std::sqrt(norm);
        for (std::int64_t i = 0; i < n; ++i) a[i * n + j] /= norm;
    }
    return a;
}

// A = P L U with partial pivoting, in place (L below the diagonal, U on and above).
// Returns piv: row i of L U is row piv[i] of A.
std::vector<std::int64_t> lu_decompose(std::vector<double>& a, std::int64_t n) {
    std::vector<std::int64_t> piv(static_cast<std::size_t>(n));
    std::iota(piv.begin(), piv.end(), std::int64_t{0});
    for (std::int64_t k = 0; k < n; ++k) {
        std::int64_t p = k;
        for (std::int64_t i = k + 1; i < n; ++i)
            if (std::abs(a[i * n + k]) > std::abs(a[p * n + k])) p = i;
        if (p != k) {
            for (std::int64_t j = 0; j < n; ++j) std::swap(a[k * n + j], a[p * n + j]);
            std::swap(piv[static_cast<std::size_t>(k)], piv[static_cast<std::size_t>(p)]);
        }
        for (std::int64_t i = k + 1; i < n; ++i) {
            a[i * n + k] /= a[k * n + k];
            for (std::int64_t j = k + 1; j < n; ++j) a[i * n + j] -= a[i * n + k] * a[k * n + j];
        }
    }
    return piv;
}

// The two factors as T tensors: Lm = tril(lower, -1) + I, Um = triu(upper, 1) + diag(sign e^log_s).
template <class T>
void factors(const LuFixed& f, const Tensor& lower, const Tensor& upper, const Tensor& log_s, Tensor& Lm, Tensor& Um) {
    const std::int64_t n = f.n;
    Lm = Tensor::zeros({n, n}, lower.dtype());
    Um = Tensor::zeros({n, n}, lower.dtype());
    const T* lp = lower.data<T>();
    const T* up = upper.data<T>();
    const T* sp = log_s.data<T>();
    T* L = Lm.data<T>();
    T* U = Um.data<T>();
    for (std::int64_t i = 0; i < n; ++i) {
        for (std::int64_t j = 0; j < i; ++j) L[i * n + j] = lp[i * n + j];
        L[i * n + i] = T(1);
        U[i * n + i] = static_cast<T>(f.sign[static_cast<std::size_t>(i)]) * std::exp(sp[i]);
        for (std::int64_t j = i + 1; j < n; ++j) U[i * n + j] = up[i * n + j];
    }
}

// Rows of m permuted: out[r, :] = m[perm[r], :] (or the inverse permutation).
template <class T>
Tensor permute_rows(const Tensor& m, const std::vector<std::int64_t>& perm, bool inverse) {
    const std::int64_t n = m.size(0), c = m.size(1);
    Tensor out = Tensor::empty(m.shape(), m.dtype());
    const T* src = m.data<T>();
    T* dst = out.data<T>();
    for (std::int64_t r = 0; r < n; ++r) {
        const std::int64_t p = perm[static_cast<std::size_t>(r)];
        const T* s = src + (inverse ? r : p) * c;
        T* d = dst + (inverse ? p : r) * c;
        std::copy(s, s + c, d);
    }
    return out;
}

// Gradients of W = P L U' with respect to (lower, upper, log_s), given gW.
template <class T>
void compose_backward(const LuFixed& f, const Tensor& Lm, const Tensor& Um, const Tensor& log_s, const Tensor& gW,
                      GradSink& sink) {
    const std::int64_t n = f.n;
    const Tensor g = permute_rows<T>(gW, f.perm, true);  // P^T gW
    if (sink.needs(0)) {
        const Tensor gL = kern::matmul(g, Um, false, true);  // P^T gW U'^T
        Tensor out = Tensor::zeros({n, n}, gW.dtype());
        const T* s = gL.data<T>();
        T* d = out.data<T>();
        for (std::int64_t i = 0; i < n; ++i)
            for (std::int64_t j = 0; j < i; ++j) d[i * n + j] = s[i * n + j];
        sink.add(0, out);
    }
    if (sink.needs(1) || sink.needs(2)) {
        const Tensor gU = kern::matmul(Lm, g, true, false);  // L^T P^T gW
        const T* s = gU.data<T>();
        if (sink.needs(1)) {
            Tensor out = Tensor::zeros({n, n}, gW.dtype());
            T* d = out.data<T>();
            for (std::int64_t i = 0; i < n; ++i)
                for (std::int64_t j = i + 1; j < n; ++j) d[i * n + j] = s[i * n + j];
            sink.add(1, out);
        }
        if (sink.needs(2)) {
            Tensor out = Tensor::empty({n}, gW.dtype());
            T* d = out.data<T>();
            const T* ls = log_s.data<T>();
            for (std::int64_t i = 0; i < n; ++i)
                d[i] = s[i * n + i] * static_cast<T>(f.sign[static_cast<std::size_t>(i)]) * std::exp(ls[i]);
            sink.add(2, out);
        }
    }
}

// Inverts a unit/general triangular matrix in place (lower or upper), column by column.
template <class T>
Tensor triangular_inverse(const Tensor& m, bool lower) {
    const std::int64_t n = m.size(0);
    Tensor inv = Tensor::zeros({n, n}, m.dtype());
    const T* a = m.data<T>();
    T* x = inv.data<T>();
    for (std::int64_t c = 0; c < n; ++c) {
        if (lower) {
            for (std::int64_t i = c; i < n; ++i) {
                T s = i == c ? T(1) : T(0);
                for (std::int64_t k = c; k < i; ++k) s -= a[i * n + k] * x[k * n + c];
                x[i * n + c] = s / a[i * n + i];
            }
        } else {
            for (std::int64_t i = c; i >= 0; --i) {
                T s = i == c ? T(1) : T(0);
                for (std::int64_t k = i + 1; k <= c; ++k) s -= a[i * n + k] * x[k * n + c];
                x[i * n + c] = s / a[i * n + i];
            }
        }
    }
    return inv;
}

// W (inverse_matrix = false) or W^-1 (true) as one op of (lower, upper, log_s).
Var compose(const std::shared_ptr<const LuFixed>& f, const Var& lower, const Var& upper, const Var& log_s,
            bool inverse_matrix) {
    Tensor Lm, Um, out;
    dispatch(lower.dtype(), [&](auto tag) {
        using T = decltype(tag);
        factors<T>(*f, lower.value(), upper.value(), log_s.value(), Lm, Um);
        if (!inverse_matrix) {
            out = permute_rows<T>(kern::matmul(Lm, Um), f->perm, false);
        } else {
            // W^-1 = U'^-1 L^-1 P^T, and M P^T permutes M's columns: (M P^T)[:, c] = M[:, perm[c]].
            const Tensor m = kern::matmul(triangular_inverse<T>(Um, false), triangular_inverse<T>(Lm, true));
            const std::int64_t n = f->n;
            out = Tensor::empty({n, n}, m.dtype());
            const T* s = m.data<T>();
            T* d = out.data<T>();
            for (std::int64_t i = 0; i < n; ++i)
                for (std::int64_t c = 0; c < n; ++c) d[i * n + c] = s[i * n + f->perm[static_cast<std::size_t>(c)]];
        }
    });
    const Tensor ls = log_s.value();
    return make_op(inverse_matrix ? "lu_inverse_matrix" : "lu_matrix", out, {lower, upper, log_s},
                   [f, Lm, Um, ls, inverse_matrix](const Tensor& g, const Tensor& w, GradSink& sink) {
                       dispatch(g.dtype(), [&](auto tag) {
                           using T = decltype(tag);
                           // d(W^-1) = -W^-1 dW W^-1, so gW = -W^-T g W^-T.
                           const Tensor gw = inverse_matrix
                                                 ? kern::scale(kern::matmul(kern::matmul(w, g, true, false), w, false, true), -1.0)
                                                 : g;
                           compose_backward<T>(*f, Lm, Um, ls, gw, sink);
                       });
                   });
}

class LuLinear final : public Bijector {
public:
    explicit LuLinear(const BuildContext& c) {
        set_event_shape(c.event_shape);
        const std::int64_t n = numel(c.event_shape);
        if (c.event_shape.empty() || n < 1)
            throw ShapeError("lu_linear: needs an event with at least one feature, got " + shape_str(c.event_shape));
        Rng rng = init_rng(c);
        std::vector<double> a = random_rotation(n, rng);
        const std::vector<std::int64_t> piv = lu_decompose(a, n);
        auto f = std::make_shared<LuFixed>();
        f->n = n;
        f->perm.resize(static_cast<std::size_t>(n));
        for (std::int64_t i = 0; i < n; ++i) f->perm[static_cast<std::size_t>(piv[static_cast<std::size_t>(i)])] = i;
        f->sign.resize(static_cast<std::size_t>(n));
        Tensor lower = Tensor::zeros({n, n}), upper = Tensor::zeros({n, n}), log_s = Tensor::zeros({n});
        for (std::int64_t i = 0; i < n; ++i) {
            const double d = a[i * n + i];
            f->sign[static_cast<std::size_t>(i)] = d < 0 ? -1.0 : 1.0;
            log_s.set_item(i, std::log(std::abs(d)));
            for (std::int64_t j = 0; j < n; ++j) {
                if (j < i) lower.set_item(i * n + j, a[i * n + j]);
                if (j > i) upper.set_item(i * n + j, a[i * n + j]);
            }
        }
        Tensor sign = Tensor::from_vector({n}, f->sign);
        fixed_ = f;
        lower_ = add_parameter("lower", std::move(lower));
        upper_ = add_parameter("upper", std::move(upper));
        log_s_ = add_parameter("log_s", std::move(log_s));
        add_buffer("sign", std::move(sign));
    }

protected:
    FlowResult do_inverse(const Var& x, const Var&) override {
        Var w = compose(fixed_, lower_, upper_, log_s_, false);
        return {apply(x, w), broadcast_log_det(sum_all(log_s_), x)};
    }
    FlowResult do_forward(const Var& z, const Var&) override {
        Var w_inv = compose(fixed_, lower_, upper_, log_s_, true);
        return {apply(z, w_inv), broadcast_log_det(-sum_all(log_s_), z)};
    }

private:
    static Var apply(const Var& in, const Var& m) {
        const std::int64_t B = in.size(0);
        Var x = in.value().dim() == 2 ? in : reshape(in, {B, -1});
        Var y = matmul(x, m, false, true);  // rows: y_b = M x_b
        return in.value().dim() == 2 ? y : reshape(y, in.shape());
    }

    std::shared_ptr<const LuFixed> fixed_;
    Var lower_, upper_, log_s_;
};

}  // namespace

void register_linear(Registry& reg) {
    ConformanceHints h;
    h.shapes = {{1}, {5}, {2, 3}};
    reg.add_bijector({"lu_linear",
                      "invertible linear map W = P L (U + diag(sign exp(log_s))) on the flattened features, "
                      "log-det sum log_s; starts at a random rotation",
                      {},
                      [](const Params&, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<LuLinear>(c);
                      },
                      h});
}

}  // namespace flowlab::density
