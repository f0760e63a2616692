// MADE's incremental solver, its adjoint, and the naive solve by D full passes (made.hpp
// describes them).
#include "made.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <flowlab/errors.hpp>
#include <flowlab/kernels.hpp>
#include <flowlab/parallel.hpp>

namespace flowlab::density {

// ------------------------------------------------------------------------------------- solver
//
// Every level (0 = inputs, 1..L hidden, L+1 = outputs) is sorted by degree, so that the units a
// unit reads form a prefix of the level below (and the units that read it form a suffix of the
// level above). Activations live unit-major, [unit][row of the chunk], so a "pull" - one unit
// reading its prefix - is a sum of contiguous row vectors, which vectorises over the batch.

// Named for the reason made.cpp gives: the unit tests compile both files into their binary.
namespace made_detail {

template <class T>
struct Level {
    std::int64_t n = 0;
    std::vector<std::int64_t> perm;   // sorted position -> unit index
    std::vector<std::int32_t> deg;    // degree of each sorted position
    std::vector<std::int64_t> cnt;    // cnt[d] = number of units with degree <= d, d = 0..D
    // Into this level from the one below (levels >= 1), both sides sorted:
    std::vector<T> wf;                // [n][n_below]: row s = the weights unit s reads
    std::vector<T> bias;              // [n]
    bool strict = false;              // the output level reads degrees < its own
    std::int64_t reads(std::size_t s, const Level& below) const {
        const std::int32_t d = deg[s] - (strict ? 1 : 0);
        return d < 0 ? 0 : below.cnt[static_cast<std::size_t>(d)];
    }
};

template <class T>
struct Plan {
    std::int64_t D = 0, P = 0;
    std::vector<Level<T>> levels;  // 0..L+1
    std::vector<T> ctx_term;       // [B][n_1] context contribution to level 1 (unsorted), or empty
    std::vector<std::vector<T>> wr;  // reverse pulls, per level >= 1: [n_below][n] (adjoint only)
    bool tanh = false;
};

template <class T>
void fill_level_index(Level<T>& L, const std::vector<std::int32_t>& degrees, std::int64_t D) {
    L.n = static_cast<std::int64_t>(degrees.size());
    L.perm.resize(static_cast<std::size_t>(L.n));
    std::iota(L.perm.begin(), L.perm.end(), std::int64_t{0});
    std::stable_sort(L.perm.begin(), L.perm.end(), [&](std::int64_t a, std::int64_t b) {
        return degrees[static_cast<std::size_t>(a)] < degrees[static_cast<std::size_t>(b)];
    });
    L.deg.resize(static_cast<std::size_t>(L.n));
    L.cnt.assign(static_cast<std::size_t>(D + 1), 0);
    for (std::int64_t s = 0; s < L.n; ++s) {
        const std::int32_t d = degrees[static_cast<std::size_t>(L.perm[static_cast<std::size_t>(s)])];
        L.deg[static_cast<std::size_t>(s)] = d;
        if (d <= D) L.cnt[static_cast<std::size_t>(d)] += 1;
    }
    for (std::int64_t d = 1; d <= D; ++d) L.cnt[static_cast<std::size_t>(d)] += L.cnt[static_cast<std::size_t>(d - 1)];
}

// dst [cols][rows] = src [rows][cols] transposed, a 32 x 32 tile at a time through a buffer
// that stays in L1, so that both matrices are read and written along their rows.
template <class T>
void transpose_tiled(const T* src, std::int64_t rows, std::int64_t cols, T* dst) {
    constexpr std::int64_t tile = 32;
    T buf[tile * tile];
    for (std::int64_t r0 = 0; r0 < rows; r0 += tile) {
        const std::int64_t rn = std::min(tile, rows - r0);
        for (std::int64_t c0 = 0; c0 < cols; c0 += tile) {
            const std::int64_t cn = std::min(tile, cols - c0);
            for (std::int64_t r = 0; r < rn; ++r)
                for (std::int64_t c = 0; c < cn; ++c) buf[c * tile + r] = src[(r0 + r) * cols + c0 + c];
            for (std::int64_t c = 0; c < cn; ++c)
                std::copy(buf + c * tile, buf + c * tile + rn, dst + (c0 + c) * rows + r0);
        }
    }
}

template <class T>
Plan<T> make_plan(const Made& made, const Tensor& context, std::int64_t B, bool reverse_weights) {
    Plan<T> plan;
    plan.D = made.dim();
    plan.P = made.params_per_dim();
    plan.tanh = made.tanh_activation();
    const std::size_t n_levels = made.num_layers() + 1;
    plan.levels.resize(n_levels);
    for (std::size_t l = 0; l < n_levels; ++l) fill_level_index(plan.levels[l], made.degrees(l), plan.D);
    plan.levels.back().strict = true;
    for (std::size_t l = 1; l < n_levels; ++l) {
        Level<T>& L = plan.levels[l];
        const Level<T>& below = plan.levels[l - 1];
        const Tensor w = made.weight(l - 1).value().to(dtype_of<T>());
        const Tensor bvec = made.bias(l - 1).value().to(dtype_of<T>());
        const T* wp = w.data<T>();
        const T* bp = bvec.data<T>();
        const std::int64_t nb = below.n, n = L.n;
        L.wf.assign(static_cast<std::size_t>(n * nb), T(0));
        L.bias.resize(static_cast<std::size_t>(n));
        for (std::int64_t s = 0; s < n; ++s) L.bias[static_cast<std::size_t>(s)] = bp[L.perm[static_cast<std::size_t>(s)]];
        // wf = the weights with both sides sorted, transposed. Two cache-friendly passes: each
        // row of w gathered into sorted order (one row sits in L1), then a transpose through a
        // small tile. Done in one pass, the gathers walked down columns of a matrix of several
        // MB and the stores down columns of another, one page per element (a sampling call
        // spent 70% of its time here).
        std::vector<T> sorted(static_cast<std::size_t>(nb * n));
        for (std::int64_t r = 0; r < nb; ++r) {
            const T* wrow = wp + below.perm[static_cast<std::size_t>(r)] * n;
            T* out = sorted.data() + r * n;
            for (std::int64_t s = 0; s < n; ++s) out[s] = wrow[L.perm[static_cast<std::size_t>(s)]];
        }
        transpose_tiled(sorted.data(), nb, n, L.wf.data());
    }
    if (reverse_weights) {
        plan.wr.resize(n_levels);
        for (std::size_t l = 1; l < n_levels; ++l) {
            const Level<T>& L = plan.levels[l];
            const std::int64_t nb = plan.levels[l - 1].n, n = L.n;
            auto& wr = plan.wr[l];
            wr.resize(static_cast<std::size_t>(nb * n));
            transpose_tiled(L.wf.data(), n, nb, wr.data());
        }
    }
    if (made.context_dim() > 0) {
        if (!context.defined()) throw ShapeError("made: built for a context, but none was given");
        const Tensor c = context.reshape({B, -1}).to(dtype_of<T>());
        if (c.size(1) != made.context_dim())
            throw ShapeError("made: context " + shape_str(context.shape()) + ", expected " +
                             std::to_string(made.context_dim()) + " features per sample");
        const Tensor wc = made.context_weight().value().to(c.dtype());
        const Tensor term = kern::matmul(c, wc);
        const T* tp = term.data<T>();
        plan.ctx_term.assign(tp, tp + term.numel());
    }
    return plan;
}

// acc[0..bc) += sum_{r < n} w[r] * src[r][0..bc)
template <class T>
inline void pull(T* __restrict acc, const T* __restrict w, const T* __restrict src, std::int64_t n, std::int64_t bc) {
    for (std::int64_t r = 0; r < n; ++r) {
        const T wr = w[r];
        const T* __restrict row = src + r * bc;
        for (std::int64_t b = 0; b < bc; ++b) acc[b] += wr * row[b];
    }
}

// One chunk of rows [r0, r1) walking the degrees forward. mode solve: a is solved from b; mode
// evaluate: a is given (in `a_in`), and the hidden derivatives and all outputs are kept.
template <class T>
struct Sweep {
    const Plan<T>& plan;
    const ElementTransform<T>& tr;
    std::int64_t r0, bc;
    std::vector<std::vector<T>> act;    // per level: [n][bc]; level 0 = a sorted
    std::vector<std::vector<T>> dact;   // hidden levels: activation derivative
    bool keep_derivatives = false;

    Sweep(const Plan<T>& p, const ElementTransform<T>& t, std::int64_t row0, std::int64_t rows, bool keep)
        : plan(p), tr(t), r0(row0), bc(rows), keep_derivatives(keep) {
        act.resize(plan.levels.size());
        dact.resize(plan.levels.size());
        for (std::size_t l = 0; l < plan.levels.size(); ++l) {
            act[l].assign(static_cast<std::size_t>(plan.levels[l].n * bc), T(0));
            if (keep && l > 0 && l + 1 < plan.levels.size()) dact[l].assign(act[l].size(), T(0));
        }
    }

    // Units [s0, s1) of level l, from the level below.
    void compute(std::size_t l, std::int64_t s0, std::int64_t s1) {
        const Level<T>& L = plan.levels[l];
        const Level<T>& below = plan.levels[l - 1];
        const bool hidden = l + 1 < plan.levels.size();
        const std::int64_t n1 = L.n;
        for (std::int64_t s = s0; s < s1; ++s) {
            T* acc = act[l].data() + s * bc;
            const T bias = L.bias[static_cast<std::size_t>(s)];
            if (l == 1 && !plan.ctx_term.empty()) {
                const std::int64_t unit = L.perm[static_cast<std::size_t>(s)];
                for (std::int64_t b = 0; b < bc; ++b)
                    acc[b] = bias + plan.ctx_term[static_cast<std::size_t>((r0 + b) * n1 + unit)];
            } else {
                std::fill(acc, acc + bc, bias);
            }
            pull(acc, L.wf.data() + s * below.n, act[l - 1].data(), L.reads(static_cast<std::size_t>(s), below), bc);
            if (!hidden) continue;
            T* da = keep_derivatives ? dact[l].data() + s * bc : nullptr;
            for (std::int64_t b = 0; b < bc; ++b) {
                if (plan.tanh) {
                    acc[b] = std::tanh(acc[b]);
                    if (da) da[b] = T(1) - acc[b] * acc[b];
                } else {
                    if (da) da[b] = acc[b] > T(0) ? T(1) : T(0);
                    acc[b] = acc[b] > T(0) ? acc[b] : T(0);
                }
            }
        }
    }

    // b_sorted / a_given: [D][bc]; ld: [bc] accumulated.
    void run(const T* b_sorted, const T* a_given, T* ld) {
        const std::size_t top = plan.levels.size() - 1;
        const std::int64_t P = plan.P;
        T* a = act[0].data();
        for (std::int64_t deg = 0; deg < plan.D; ++deg) {
            // Hidden units of degree `deg` now have all their inputs.
            for (std::size_t l = 1; l < top; ++l) {
                const Level<T>& L = plan.levels[l];
                const std::int64_t lo = deg == 0 ? 0 : L.cnt[static_cast<std::size_t>(deg - 1)];
                compute(l, lo, L.cnt[static_cast<std::size_t>(deg)]);
            }
            // The outputs of the input of degree deg+1 (sorted position deg), then that input.
            compute(top, deg * P, (deg + 1) * P);
            const T* u = act[top].data() + deg * P * bc;
            T* arow = a + deg * bc;
            if (a_given) {
                std::copy(a_given + deg * bc, a_given + (deg + 1) * bc, arow);
            } else {
                const T* brow = b_sorted + deg * bc;
                for (std::int64_t b = 0; b < bc; ++b) {
                    T x;
                    ld[b] += tr.invert(brow[b], u + b, bc, x);
                    arow[b] = x;
                }
            }
        }
    }
};

template <class T>
std::int64_t chunk_rows(std::int64_t B) {
    const std::int64_t t = std::max(1, num_threads());
    return std::max<std::int64_t>(1, (B + t - 1) / t);
}

// [B, D] rows r0.. (bc of them) -> [D][bc] in sorted input order.
template <class T>
void to_sorted(const T* src, std::int64_t D, const std::vector<std::int64_t>& perm, std::int64_t r0, std::int64_t bc,
               T* dst) {
    for (std::int64_t b = 0; b < bc; ++b) {
        const T* row = src + (r0 + b) * D;
        for (std::int64_t t = 0; t < D; ++t) dst[t * bc + b] = row[perm[static_cast<std::size_t>(t)]];
    }
}

template <class T>
void from_sorted(const T* src, std::int64_t D, const std::vector<std::int64_t>& perm, std::int64_t r0,
                 std::int64_t bc, T* dst) {
    for (std::int64_t b = 0; b < bc; ++b) {
        T* row = dst + (r0 + b) * D;
        for (std::int64_t t = 0; t < D; ++t) row[perm[static_cast<std::size_t>(t)]] = src[t * bc + b];
    }
}

void check_solve_input(const Made& made, const Tensor& b, const char* what) {
    if (b.dim() != 2 || b.size(1) != made.dim())
        throw ShapeError(std::string(what) + ": input " + shape_str(b.shape()) + ", expected [B, " +
                         std::to_string(made.dim()) + "]");
}

}  // namespace made_detail
using namespace made_detail;

template <class T>
Tensor made_solve(const Made& made, const Tensor& b, const Tensor& context, const ElementTransform<T>& tr,
                  Tensor& log_det) {
    check_solve_input(made, b, "made solve");
    const std::int64_t B = b.size(0), D = made.dim();
    Plan<T> plan = make_plan<T>(made, context, B, false);
    Tensor a = Tensor::empty(b.shape(), b.dtype());
    log_det = Tensor::zeros({B}, b.dtype());
    const T* bp = b.data<T>();
    T* ap = a.data<T>();
    T* lp = log_det.data<T>();
    // Rows are independent: each thread walks the degrees for its own rows.
    parallel_for(B, chunk_rows<T>(B), [&](std::int64_t r0, std::int64_t r1) {
        const std::int64_t bc = r1 - r0;
        std::vector<T> bs(static_cast<std::size_t>(D * bc));
        to_sorted(bp, D, plan.levels[0].perm, r0, bc, bs.data());
        Sweep<T> sw(plan, tr, r0, bc, false);
        sw.run(bs.data(), nullptr, lp + r0);
        from_sorted(sw.act[0].data(), D, plan.levels[0].perm, r0, bc, ap);
    });
    return a;
}

template <class T>
Tensor made_solve_adjoint(const Made& made, const Tensor& a, const Tensor& context, const ElementTransform<T>& tr,
                          const Tensor& g) {
    check_solve_input(made, a, "made adjoint");
    const std::int64_t B = a.size(0), D = made.dim(), P = made.params_per_dim();
    Plan<T> plan = make_plan<T>(made, context, B, true);
    Tensor lambda = Tensor::empty(a.shape(), a.dtype());
    const T* ap = a.data<T>();
    const T* gp = g.data<T>();
    T* lp = lambda.data<T>();
    parallel_for(B, chunk_rows<T>(B), [&](std::int64_t r0, std::int64_t r1) {
        const std::int64_t bc = r1 - r0;
        const auto& perm0 = plan.levels[0].perm;
        std::vector<T> as(static_cast<std::size_t>(D * bc)), gs(as.size()), ls(as.size());
        to_sorted(ap, D, perm0, r0, bc, as.data());
        to_sorted(gp, D, perm0, r0, bc, gs.data());
        Sweep<T> sw(plan, tr, r0, bc, true);
        std::vector<T> unused(static_cast<std::size_t>(bc), T(0));
        sw.run(nullptr, as.data(), unused.data());

        const std::size_t top = plan.levels.size() - 1;
        // Cotangents of the pre-activations per level (outputs: of u).
        std::vector<std::vector<T>> cot(plan.levels.size());
        for (std::size_t l = 1; l <= top; ++l) cot[l].assign(static_cast<std::size_t>(plan.levels[l].n * bc), T(0));
        std::vector<T> du(static_cast<std::size_t>(P));
        std::vector<T> v(static_cast<std::size_t>(bc));
        // Units of level l-1 at sorted position s read back from level l's suffix of units
        // with degree >= deg(s) (> for the output level).
        auto suffix = [&](std::size_t l, std::int32_t deg_below) -> std::int64_t {
            const Level<T>& L = plan.levels[l];
            const std::int32_t d = L.strict ? deg_below : deg_below - 1;
            return d < 0 ? 0 : L.cnt[static_cast<std::size_t>(std::min<std::int64_t>(d, plan.D))];
        };
        for (std::int64_t deg = D; deg >= 1; --deg) {
            // Hidden units of degree deg, top-down: everything that reads them is done.
            for (std::size_t l = top - 1; l >= 1; --l) {
                const Level<T>& L = plan.levels[l];
                const Level<T>& above = plan.levels[l + 1];
                const std::int64_t lo = L.cnt[static_cast<std::size_t>(deg - 1)], hi = L.cnt[static_cast<std::size_t>(deg)];
                for (std::int64_t s = lo; s < hi; ++s) {
                    T* acc = cot[l].data() + s * bc;
                    std::fill(acc, acc + bc, T(0));
                    const std::int64_t start = suffix(l + 1, L.deg[static_cast<std::size_t>(s)]);
                    pull(acc, plan.wr[l + 1].data() + s * above.n + start, cot[l + 1].data() + start * bc,
                         above.n - start, bc);
                    const T* da = sw.dact[l].data() + s * bc;
                    for (std::int64_t b = 0; b < bc; ++b) acc[b] *= da[b];
                }
            }
            // The input of degree deg: lambda = (g - J_N^T c) / (dF/da).
            const std::int64_t t = deg - 1;
            const Level<T>& above = plan.levels[1];
            const std::int64_t start = suffix(1, static_cast<std::int32_t>(deg));
            std::fill(v.begin(), v.end(), T(0));
            pull(v.data(), plan.wr[1].data() + t * above.n + start, cot[1].data() + start * bc, above.n - start, bc);
            const T* u = sw.act[top].data() + t * P * bc;
            T* c = cot[top].data() + t * P * bc;
            for (std::int64_t b = 0; b < bc; ++b) {
                std::fill(du.begin(), du.end(), T(0));
                const T diag = tr.partials(as[static_cast<std::size_t>(t * bc + b)], u + b, bc, du.data(), 1);
                const T lam = (gs[static_cast<std::size_t>(t * bc + b)] - v[static_cast<std::size_t>(b)]) / diag;
                ls[static_cast<std::size_t>(t * bc + b)] = lam;
                for (std::int64_t p = 0; p < P; ++p) c[p * bc + b] = lam * du[static_cast<std::size_t>(p)];
            }
        }
        from_sorted(ls.data(), D, perm0, r0, bc, lp);
    });
    return lambda;
}

template <class T>
Tensor made_solve_naive(const Made& made, const Tensor& b, const Tensor& context, const ElementTransform<T>& tr,
                        Tensor& log_det) {
    check_solve_input(made, b, "made naive solve");
    const std::int64_t B = b.size(0), D = made.dim(), P = made.params_per_dim();
    NoGradGuard guard;
    // Masked weights formed once; then D full passes. After pass k the inputs of degree <= k+1
    // are exact; the others stay at 0 (not at garbage, which could overflow and poison the
    // GEMMs through 0 * inf).
    const std::size_t n = made.num_layers();
    std::vector<Tensor> wm(n);
    for (std::size_t l = 0; l < n; ++l) {
        auto din = std::make_shared<const DegreeVec>(made.degrees(l));
        auto dout = std::make_shared<const DegreeVec>(made.degrees(l + 1));
        wm[l] = masked_weight(Var(made.weight(l).value().to(b.dtype())), din, dout, l + 1 == n).value();
    }
    Tensor ctx_term;
    if (made.context_dim() > 0)
        ctx_term = kern::matmul(context.reshape({B, -1}).to(b.dtype()), made.context_weight().value().to(b.dtype()));
    const auto& deg = made.degrees(0);
    Tensor a = Tensor::zeros(b.shape(), b.dtype());
    log_det = Tensor::zeros({B}, b.dtype());
    Tensor u;
    auto network = [&](const Tensor& x) {
        Tensor h = x;
        for (std::size_t l = 0; l < n; ++l) {
            Tensor pre = kern::matmul(h, wm[l]);
            const Tensor bias = made.bias(l).value().to(b.dtype());
            T* pp = pre.data<T>();
            const T* bp = bias.data<T>();
            const std::int64_t cols = pre.size(1);
            const T* cp = l == 0 && ctx_term.defined() ? ctx_term.data<T>() : nullptr;
            for (std::int64_t r = 0; r < B; ++r)
                for (std::int64_t k = 0; k < cols; ++k) {
                    T v = pp[r * cols + k] + bp[k] + (cp ? cp[r * cols + k] : T(0));
                    if (l + 1 < n) v = made.tanh_activation() ? std::tanh(v) : std::max(v, T(0));
                    pp[r * cols + k] = v;
                }
            h = pre;
        }
        return h;
    };
    const T* bp = b.data<T>();
    T* ap = a.data<T>();
    T* lp = log_det.data<T>();
    for (std::int64_t pass = 0; pass < D; ++pass) {
        u = network(a);
        const T* up = u.data<T>();
        for (std::int64_t r = 0; r < B; ++r)
            for (std::int64_t i = 0; i < D; ++i) {
                if (deg[static_cast<std::size_t>(i)] != pass + 1) continue;
                T x;
                lp[r] += tr.invert(bp[r * D + i], up + r * P * D + i, D, x);
                ap[r * D + i] = x;
            }
    }
    return a;
}

template Tensor made_solve<float>(const Made&, const Tensor&, const Tensor&, const ElementTransform<float>&, Tensor&);
template Tensor made_solve<double>(const Made&, const Tensor&, const Tensor&, const ElementTransform<double>&, Tensor&);
template Tensor made_solve_naive<float>(const Made&, const Tensor&, const Tensor&, const ElementTransform<float>&,
                                        Tensor&);
template Tensor made_solve_naive<double>(const Made&, const Tensor&, const Tensor&, const ElementTransform<double>&,
                                         Tensor&);
template Tensor made_solve_adjoint<float>(const Made&, const Tensor&, const Tensor&, const ElementTransform<float>&,
                                          const Tensor&);
template Tensor made_solve_adjoint<double>(const Made&, const Tensor&, const Tensor&, const ElementTransform<double>&,
                                           const Tensor&);

}  // namespace flowlab::density
