// The invertible residual blocks `residual` (vectors, dense g) and `conv_residual` (images,
// convolutional g), after i-ResNet (Behrmann et al. 2019) and Residual Flows (Chen et al. 2019).
//
//   inverse (data -> latent):  z = x + g(x),   log|det dz/dx| = log det(I + J_g(x))
//   forward (latent -> data):  x solves x = z - g(x) by fixed-point iteration (a contraction,
//                              since Lip(g) < 1), log|det dx/dz| = -log det(I + J_g(x))
//
// log det(I + J) = sum_k (-1)^(k+1) tr(J^k) / k (||J|| < 1), three ways ("log_det"):
//   exact     the dense Jacobian from D forward-mode passes (one per basis vector), then LU;
//   series    the series truncated at `series_terms`, tr by Hutchinson's estimator v^T J^k v, and
//             backpropagation through every term (i-ResNet): memory grows with the terms;
//   roulette  Russian roulette over the number of terms N = exact_terms + Geometric(p), each
//             term weighted by 1 / P(N >= k): unbiased. Its gradient is the Neumann series
//             d log det = tr((I + J)^-1 dJ) ~ v^T dJ a with a = sum_j (-1)^j J^j v / P(N >= j+1),
//             computed without a graph; one forward-mode pass J a with the graph then carries the
//             whole gradient, so memory does not depend on N (Residual Flows' memory-efficient
//             backward; a is exactly the derivative of the value estimate's series, so the
//             gradient is that of the value up to Hutchinson's cyclic trace swap).
// Outside training mode both estimators use the series, until its rest is below `eval_tolerance`
// for every sample (at most `eval_terms` terms), with `eval_probes` probes from a fixed seed:
// deterministic, and the same probes in both directions, so the trainer's layer checks see
// log-dets that cancel.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "residual.hpp"

namespace flowlab::residual {

namespace {

enum class LogDetMode { exact, series, roulette };

// The dense Jacobian costs D passes and D^2 values per sample: beyond this, use an estimator.
constexpr std::int64_t kExactMaxDim = 256;
// The roulette's extra terms are geometric; this caps a pathological draw (P < 2^-900 at p = 0.5).
constexpr std::int64_t kMaxRouletteTerms = 1000;
// The probes outside training mode.
constexpr std::uint64_t kEvalSeed = 0x7e57'ca5e'0f1a'75ull;

struct Settings {
    LogDetMode mode = LogDetMode::roulette;
    int series_terms = 5, exact_terms = 2, probes = 1, eval_terms = 100, eval_probes = 1;
    double eval_tolerance = 1e-3;
    double geometric_p = 0.5;
    bool gaussian = false;
    double inverse_tolerance = 1e-6;
    int inverse_max_iterations = 1000;
};

// x with (I + J)^-T g as its gradient: the value of a solved fixed point x = z - g(x), made
// differentiable through r = x0 + g(x0) - z (a graph in z and g's parameters). By the implicit
// function theorem dx = -(I + J)^-1 dr, so the rule hands r the gradient -(I + J)^-T gx,
// solved by the fixed point lambda = gx - J^T lambda (a contraction too).
Var fixed_point_solution(Tensor x0, const Var& r, std::shared_ptr<const Linearization> lin, double tol,
                         int max_iterations, std::string who) {
    return make_op("residual_fixed_point", std::move(x0), {r},
                   [lin, tol, max_iterations, who](const Tensor& gx, const Tensor&, GradSink& sink) {
                       if (!sink.needs(0)) return;
                       Tensor lam = gx.clone();
                       double change = std::numeric_limits<double>::infinity();
                       int it = 0;
                       while (it < max_iterations) {
                           ++it;
                           Tensor next = kern::sub(gx, lin->vjp(lam));
                           change = kern::max_abs_diff(next, lam) / std::max(max_abs(next), 1e-300);
                           lam = std::move(next);
                           if (!std::isfinite(change)) break;
                           if (change <= tol) break;
                       }
                       if (!(change <= tol))
                           throw NumericError(who + ": the gradient of the fixed-point inverse, lambda = g - J^T lambda, "
                                              "did not converge in " + std::to_string(it) + " iterations (relative change " +
                                              std::to_string(change) + ", tolerance " + std::to_string(tol) + ")");
                       sink.add(0, kern::neg(lam));
                   });
}

class ResidualBlock final : public Bijector {
public:
    ResidualBlock(const Params& p, const BuildContext& c, NetKind kind, const std::string& name)
        : name_(name), event_(c.event_shape) {
        if (!c.rng) throw ConfigError(p.where() + ": " + name + " needs an rng to initialise");
        NetSpec ns;
        ns.kind = kind;
        ns.event = c.event_shape;
        ns.who = name + " " + shape_str(c.event_shape);
        for (std::int64_t h : p.get_int_list("hidden")) {
            if (h < 1) throw ConfigError(p.where("hidden") + ": widths must be >= 1, got " + std::to_string(h));
            ns.hidden.push_back(h);
        }
        if (kind == NetKind::conv) {
            if (c.event_shape.size() != 3)
                throw ShapeError(name + ": needs an image event [C, H, W], got " + shape_str(c.event_shape) +
                                 " (load the data with flatten = false, or use \"residual\" for vectors)");
            ns.kernels = p.get_int_list("kernels");
            if (ns.kernels.size() != ns.hidden.size() + 1)
                throw ConfigError(p.where("kernels") + ": one kernel size per convolution: " +
                                  std::to_string(ns.hidden.size() + 1) + " for " + std::to_string(ns.hidden.size()) +
                                  " hidden layers, got " + std::to_string(ns.kernels.size()));
            for (std::int64_t k : ns.kernels)
                if (k < 1 || k % 2 == 0)
                    throw ConfigError(p.where("kernels") + ": kernel sizes must be odd (\"same\" padding), got " +
                                      std::to_string(k));
            ns.channels_last = p.get_string("layout") == "nhwc";
        } else if (c.event_shape.empty() || numel(c.event_shape) < 1) {
            throw ShapeError(name + ": needs an event with at least one value, got " + shape_str(c.event_shape));
        }
        ns.activation = p.get_string("activation") == "elu" ? Activation::elu : Activation::lipswish;
        ns.coeff = p.get_number("coeff");
        ns.train_iterations = static_cast<int>(p.get_int("power_iterations"));
        ns.eval_iterations = static_cast<int>(p.get_int("eval_power_iterations"));
        ns.tolerance = p.get_number("power_tolerance");

        const std::string mode = p.get_string("log_det");
        s_.mode = mode == "exact" ? LogDetMode::exact : mode == "series" ? LogDetMode::series : LogDetMode::roulette;
        s_.series_terms = static_cast<int>(p.get_int("series_terms"));
        s_.exact_terms = static_cast<int>(p.get_int("exact_terms"));
        s_.geometric_p = p.get_number("geometric_p");
        s_.probes = static_cast<int>(p.get_int("probes"));
        s_.gaussian = p.get_string("probe") == "gaussian";
        s_.eval_terms = static_cast<int>(p.get_int("eval_terms"));
        s_.eval_probes = static_cast<int>(p.get_int("eval_probes"));
        s_.eval_tolerance = p.get_number("eval_tolerance");
        s_.inverse_tolerance = p.get_number("inverse_tolerance");
        s_.inverse_max_iterations = static_cast<int>(p.get_int("inverse_max_iterations"));
        const std::int64_t d = numel(c.event_shape);
        if (s_.mode == LogDetMode::exact && d > kExactMaxDim)
            throw ConfigError(p.where("log_det") + ": \"exact\" forms the dense Jacobian, which " + name + " " +
                              shape_str(c.event_shape) + " (" + std::to_string(d) + " values per sample) cannot do above " +
                              std::to_string(kExactMaxDim) + " values; use \"roulette\" or \"series\"");

        net_ = std::make_unique<LipschitzNet>(ns, *c.rng);
        add_child("net", net_.get());
        // The estimator's own generator, drawn from the build's: runs are deterministic per seed,
        // and its state is a buffer, so a checkpoint resumes the same probes.
        rng_state_ = add_buffer("estimator_rng", Tensor::zeros({8}));
        store_rng(Rng(c.rng->next_u64(), 0));
    }

protected:
    FlowResult do_inverse(const Var& x, const Var&) override {
        Weights w = net_->weights();
        Primal p = net_->primal(x, w);
        return {x + p.out, log_det(x, w, p)};
    }

    FlowResult do_forward(const Var& z, const Var&) override {
        Weights w = net_->weights();
        Tensor x0 = solve(z.value(), w);
        Var x(x0);
        if (grad_enabled()) {
            Primal p0 = net_->primal(Var(x0), w);
            Var r = Var(x0) + p0.out - z;
            x = fixed_point_solution(x0, r, std::make_shared<Linearization>(net_->linearization(w, p0)),
                                     s_.inverse_tolerance, s_.inverse_max_iterations, who("forward"));
        }
        Primal p = net_->primal(x, w);
        return {x, -log_det(x, w, p)};
    }

private:
    std::string who(const char* direction) const {
        return (type_name().empty() ? name_ : type_name()) + " " + shape_str(event_) + " (" + direction + ")";
    }

    // x = z - g(x) from x_0 = z, until the step is below inverse_tolerance * max(1, max|x|).
    Tensor solve(const Tensor& z, const Weights& w) const {
        NoGradGuard no_grad;
        Tensor x = z.clone();
        double residual = std::numeric_limits<double>::infinity();
        for (int it = 1; it <= s_.inverse_max_iterations; ++it) {
            Tensor next = kern::sub(z, net_->primal(Var(x), w, false).out.value());
            const double scale = std::max(1.0, max_abs(next));
            residual = kern::max_abs_diff(next, x) / scale;
            x = std::move(next);
            if (!std::isfinite(residual) || !std::isfinite(scale))
                throw NumericError(who("forward") + ": the fixed-point inverse x = z - g(x) reached non-finite values at "
                                   "iteration " + std::to_string(it) + " (non-finite input, or Lip(g) >= 1?)");
            if (residual <= s_.inverse_tolerance) return x;
        }
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.3g > tolerance %.3g", residual, s_.inverse_tolerance);
        throw NumericError(who("forward") + ": the fixed-point inverse x = z - g(x) did not converge in " +
                           std::to_string(s_.inverse_max_iterations) + " iterations: residual " + buf +
                           " (the last step relative to max(1, |x|)); raise inverse_max_iterations or "
                           "inverse_tolerance, or lower coeff");
    }

    Var log_det(const Var& x, const Weights& w, const Primal& p) {
        if (s_.mode == LogDetMode::exact) return exact_log_det(x, w, p);
        if (!training()) {
            Rng eval_rng(kEvalSeed);
            return series_log_det(x, w, p, s_.eval_terms, s_.eval_probes, eval_rng, s_.eval_tolerance);
        }
        Rng rng = load_rng();
        Var ld = s_.mode == LogDetMode::series ? series_log_det(x, w, p, s_.series_terms, s_.probes, rng)
                                               : roulette_log_det(x, w, p, rng);
        store_rng(rng);
        return ld;
    }

    // log det(I + J) from J's D columns: a forward-mode pass over D basis tangents per sample.
    Var exact_log_det(const Var& x, const Weights& w, const Primal& p) const {
        const std::int64_t B = x.size(0), D = numel(event_);
        Tensor basis = Tensor::zeros(with_batch(B * D, event_), x.dtype());
        Tensor eye = Tensor::zeros({D, D}, x.dtype());
        for (std::int64_t j = 0; j < D; ++j) eye.set_item(j * D + j, 1.0);
        for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t j = 0; j < D; ++j) basis.set_item((b * D + j) * D + j, 1.0);
        Var columns = net_->jvp(Var(basis), D, w, p);  // row (b, j): J e_j, i.e. J^T per sample
        return log_abs_det(reshape(columns, {B, D, D}) + Var(eye));
    }

    Tensor probe(const Shape& shape, DType dt, Rng& rng) const {
        Tensor v = Tensor::empty(shape, dt);
        if (s_.gaussian) {
            rng.fill_normal(v);
            return v;
        }
        rng.fill_uniform(v);
        dispatch(dt, [&](auto tag) {
            using T = decltype(tag);
            T* q = v.data<T>();
            for (std::int64_t i = 0; i < v.numel(); ++i) q[i] = q[i] < T(0.5) ? T(-1) : T(1);
        });
        return v;
    }

    // sum_{k=1}^{n} (-1)^(k+1) v^T J^k v / k, averaged over probes; the graph (when gradients are
    // on) holds every term. With `tolerance` > 0 the sum stops early, once the rest of the series
    // is below it for every sample: |v^T J^j v| <= |v| |J^k v| rho^(j-k) with rho the last ratio
    // |J^k v| / |J^(k-1) v| (the spectral radius the probe sees), so the rest is at most
    // |v| |J^k v| rho / ((k + 1) (1 - rho)).
    Var series_log_det(const Var& x, const Weights& w, const Primal& p, int terms, int probes, Rng& rng,
                       double tolerance = 0.0) const {
        Var total;
        for (int q = 0; q < probes; ++q) {
            Var v(probe(x.shape(), x.dtype(), rng));
            const std::vector<double> v_norm = sample_norms(v.value());
            std::vector<double> prev = v_norm;
            Var t = v;
            for (int k = 1; k <= terms; ++k) {
                t = net_->jvp(t, 1, w, p);
                Var term = sum_per_sample(t * v) * ((k % 2 ? 1.0 : -1.0) / k);
                total = total.defined() ? total + term : term;
                if (tolerance <= 0.0) continue;
                const std::vector<double> norm = sample_norms(t.value());
                double rest = 0.0;
                for (std::size_t b = 0; b < norm.size(); ++b) {
                    const double rho = prev[b] > 0.0 ? std::min(norm[b] / prev[b], 0.999) : 0.0;
                    rest = std::max(rest, v_norm[b] * norm[b] * rho / ((k + 1) * (1.0 - rho)));
                }
                prev = norm;
                if (rest < tolerance) break;
            }
        }
        return probes > 1 ? total * (1.0 / probes) : total;
    }

    // |t| per sample of t [B, ...].
    static std::vector<double> sample_norms(const Tensor& t) {
        const std::int64_t B = t.size(0), per = t.numel() / std::max<std::int64_t>(1, B);
        std::vector<double> out(static_cast<std::size_t>(B));
        dispatch(t.dtype(), [&](auto tag) {
            using T = decltype(tag);
            const T* q = t.data<T>();
            for (std::int64_t b = 0; b < B; ++b) {
                double ss = 0.0;
                for (std::int64_t i = 0; i < per; ++i) ss += static_cast<double>(q[b * per + i]) * q[b * per + i];
                out[static_cast<std::size_t>(b)] = std::sqrt(ss);
            }
        });
        return out;
    }

    Var roulette_log_det(const Var& x, const Weights& w, const Primal& p, Rng& rng) const {
        const double keep = 1.0 - s_.geometric_p;  // P(one more term)
        std::int64_t extra = 0;
        if (keep > 0.0) {
            const double u = rng.uniform();
            extra = static_cast<std::int64_t>(std::min<double>(std::floor(std::log1p(-u) / std::log(keep)), kMaxRouletteTerms));
        }
        const std::int64_t n0 = s_.exact_terms, N = std::min<std::int64_t>(n0 + extra, kMaxRouletteTerms);
        // 1 / P(N >= k)
        auto weight = [&](std::int64_t k) { return k <= n0 ? 1.0 : std::pow(keep, -static_cast<double>(k - n0)); };
        Var total;
        for (int q = 0; q < s_.probes; ++q) {
            Tensor v = probe(x.shape(), x.dtype(), rng);
            Tensor value, a;
            {
                NoGradGuard no_grad;
                Var vv(v), t = vv, acc = vv * weight(1), val;
                for (std::int64_t k = 1; k <= N; ++k) {
                    t = net_->jvp(t, 1, w, p);
                    Var term = sum_per_sample(t * vv) * ((k % 2 ? 1.0 : -1.0) / static_cast<double>(k) * weight(k));
                    val = val.defined() ? val + term : term;
                    if (k < N) acc = acc + t * ((k % 2 ? -1.0 : 1.0) * weight(k + 1));
                }
                value = val.value();
                a = acc.value();
            }
            Var ld(value);
            if (grad_enabled()) {
                // v^T J a: its gradient is the Neumann estimate, its value is replaced by the series'.
                Var s = sum_per_sample(net_->jvp(Var(a), 1, w, p) * Var(v));
                ld = s + Var(kern::sub(value, s.value()));
            }
            total = total.defined() ? total + ld : ld;
        }
        return s_.probes > 1 ? total * (1.0 / s_.probes) : total;
    }

    // The estimator's Rng as eight 16-bit pieces (seed, then counter): exact in f32 and f64.
    void store_rng(const Rng& r) {
        for (int i = 0; i < 4; ++i) {
            rng_state_.set_item(i, static_cast<double>((r.seed() >> (16 * i)) & 0xffffu));
            rng_state_.set_item(4 + i, static_cast<double>((r.counter() >> (16 * i)) & 0xffffu));
        }
    }
    Rng load_rng() const {
        std::uint64_t seed = 0, counter = 0;
        for (int i = 0; i < 4; ++i) {
            seed |= static_cast<std::uint64_t>(rng_state_.item(i)) << (16 * i);
            counter |= static_cast<std::uint64_t>(rng_state_.item(4 + i)) << (16 * i);
        }
        return Rng(seed, counter);
    }

    std::string name_;
    Shape event_;
    Settings s_;
    std::unique_ptr<LipschitzNet> net_;
    Tensor rng_state_;
};

Schema block_schema(bool conv) {
    Schema s = {
        param_int_list("hidden", conv ? std::vector<std::int64_t>{64, 64} : std::vector<std::int64_t>{128, 128},
                       conv ? "channels of g's hidden layers" : "widths of g's hidden layers"),
    };
    if (conv) {
        s.push_back(param_int_list("kernels", {3, 1, 3}, "odd kernel size of each convolution (one more than hidden)"));
        s.push_back(param_string("layout", "nhwc", "memory layout of g's hidden activations").choices({"nhwc", "nchw"}));
    }
    Schema rest = {
        param_string("activation", "lipswish", "1-Lipschitz activation: lipswish (x sigmoid(beta x) / 1.1, beta > 0 "
                                               "learnt per layer) or elu")
            .choices({"lipswish", "elu"}),
        param_number("coeff", 0.97, "bound on each layer's operator norm (weights are divided by max(1, sigma/coeff))")
            .range(0.01, 0.999),
        param_int("power_iterations", 5, "power iterations per training step, from the stored u, v (buffers)")
            .range(1, 100000),
        param_int("eval_power_iterations", 200, "most power iterations at build and outside training (on copies "
                                                "of u, v), stopping at power_tolerance")
            .range(1, 1000000),
        param_number("power_tolerance", 1e-4, "power iteration stops when its estimate of the norm changes by less "
                                              "than this, relative")
            .range(0.0, 1.0),
        param_string("log_det", "roulette", "log det(I + J): exact (dense Jacobian, small events), series (truncated, "
                                            "backprop through the terms) or roulette (unbiased, Neumann gradient)")
            .choices({"exact", "series", "roulette"}),
        param_int("series_terms", 5, "terms of the truncated series (log_det = series)").range(1, 1000),
        param_int("exact_terms", 2, "roulette: terms always computed before the geometric ones").range(1, 1000),
        param_number("geometric_p", 0.5, "roulette: stopping probability of each further term (1 = none)")
            .range(0.01, 1.0),
        param_int("probes", 1, "Hutchinson probe vectors per sample in training").range(1, 1024),
        param_string("probe", "rademacher", "probe distribution").choices({"rademacher", "gaussian"}),
        param_int("eval_terms", 100, "most series terms outside training mode (both estimators)").range(1, 10000),
        param_number("eval_tolerance", 1e-3, "outside training mode the series stops when the rest of it is below "
                                             "this for every sample (0 = always eval_terms)")
            .range(0.0, 1e6),
        param_int("eval_probes", 1, "probe vectors per sample outside training mode").range(1, 1024),
        param_number("inverse_tolerance", 1e-6, "fixed-point inverse: stop when a step is below this times "
                                                "max(1, max|x|)")
            .range(1e-15, 1.0),
        param_int("inverse_max_iterations", 1000, "fixed-point inverse: iterations before a NumericError")
            .range(1, 1000000),
    };
    s.insert(s.end(), rest.begin(), rest.end());
    return s;
}

// The suite's f64 checks are tight: exact log-det, power iteration and fixed points to
// convergence (the conformance perturbation leaves the stored singular vectors stale).
const char* const kConformanceSettings =
    R"("log_det": "exact", "power_iterations": 2000, "eval_power_iterations": 2000, "power_tolerance": 1e-13, )"
    R"("inverse_tolerance": 1e-13, "inverse_max_iterations": 10000)";

}  // namespace

void register_blocks(Registry& reg) {
    ConformanceHints dense_hints;
    dense_hints.shapes = {{2}, {5}};
    dense_hints.params_json = std::string(R"({"hidden": [8, 8], )") + kConformanceSettings + "}";
    reg.add_bijector({"residual",
                      "invertible residual block z = x + g(x), g a spectrally normalised MLP with Lip(g) < 1; "
                      "sampling by fixed-point iteration",
                      block_schema(false),
                      [](const Params& p, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<ResidualBlock>(p, c, NetKind::dense, "residual");
                      },
                      dense_hints});
    ConformanceHints conv_hints;
    conv_hints.shapes = {{2, 3, 3}, {1, 4, 4}};
    conv_hints.params_json = std::string(R"({"hidden": [4], "kernels": [3, 3], )") + kConformanceSettings + "}";
    reg.add_bijector({"conv_residual",
                      "invertible residual block z = x + g(x) on images, g spectrally normalised convolutions "
                      "(operator norm by power iteration) with Lip(g) < 1",
                      block_schema(true),
                      [](const Params& p, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<ResidualBlock>(p, c, NetKind::conv, "conv_residual");
                      },
                      conv_hints});
}

}  // namespace flowlab::residual
