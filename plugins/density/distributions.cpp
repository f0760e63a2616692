// Base distributions over the whole event (flattened to D values):
//   diag_gaussian              N(mean, diag(exp(log_std))^2), mean and log_std learnable (start at N(0, I))
//   gaussian_mixture           sum_k pi_k N(mean_k, diag(exp(log_std_k))^2), all learnable
//   logistic                   the standard logistic, independent per value
//   conditional_diag_gaussian  N(mean(c), diag(exp(log_std(c)))^2), both from a conditioner on the
//                              flow's context c (its last layer starts at zero: N(0, I) for every c)
// Temperature T (sampling only): the Gaussians draw mean + T * std * eps (the mixture keeps its
// weights and scales every component's std), the logistic draws T * logit(u) (scale T). T = 1
// samples the distribution itself; T < 1 trades diversity for typical samples.
#include <cmath>
#include <memory>
#include <numbers>

#include <flowlab/ops.hpp>

#include "density.hpp"

namespace flowlab::density {
namespace {

double half_log_2pi() { return 0.5 * std::log(2.0 * std::numbers::pi); }

Var flat(const Var& z) { return z.value().dim() == 2 ? z : reshape(z, {z.size(0), -1}); }

// sum_d [-0.5 ((z - m)/s)^2 - log s] - D/2 log(2 pi), with everything broadcastable to z [B, D].
Var gaussian_log_prob(const Var& z, const Var& mean, const Var& log_std, std::int64_t D) {
    Var u = (z - mean) * exp(-log_std);
    return sum_per_sample(-0.5 * square(u) - log_std) - half_log_2pi() * static_cast<double>(D);
}

class DiagGaussian final : public BaseDistribution {
public:
    explicit DiagGaussian(const Shape& event) {
        set_event_shape(event);
        D_ = numel(event);
        mean_ = add_parameter("mean", Tensor::zeros({D_}));
        log_std_ = add_parameter("log_std", Tensor::zeros({D_}));
    }

protected:
    Var do_log_prob(const Var& z, const Var&) override { return gaussian_log_prob(flat(z), mean_, log_std_, D_); }

    Tensor do_sample(std::int64_t n, Rng& rng, double temperature, const Tensor&) override {
        Tensor eps = Tensor::empty({n, D_}, DType::f64);
        rng.fill_normal(eps);
        const std::vector<double> m = mean_.value().to_vector(), ls = log_std_.value().to_vector();
        Tensor out = Tensor::empty(with_batch(n, event_shape()));
        for (std::int64_t i = 0; i < n * D_; ++i) {
            const auto d = static_cast<std::size_t>(i % D_);
            out.set_item(i, m[d] + temperature * std::exp(ls[d]) * eps.item(i));
        }
        return out;
    }

private:
    std::int64_t D_;
    Var mean_, log_std_;
};

class GaussianMixture final : public BaseDistribution {
public:
    GaussianMixture(const Shape& event, std::int64_t k, double init_scale, Rng& rng) : K_(k) {
        set_event_shape(event);
        D_ = numel(event);
        // Distinct starting means: identical components would receive identical gradients forever.
        Tensor means = Tensor::empty({K_, D_});
        rng.fill_normal(means, 0.0, init_scale);
        logits_ = add_parameter("logits", Tensor::zeros({K_}));
        means_ = add_parameter("means", std::move(means));
        log_stds_ = add_parameter("log_stds", Tensor::zeros({K_, D_}));
    }

protected:
    Var do_log_prob(const Var& z, const Var&) override {
        const std::int64_t B = z.size(0);
        Var zz = reshape(flat(z), {B, 1, D_});
        Var u = (zz - means_) * exp(-log_stds_);                                  // [B, K, D]
        Var comp = sum(-0.5 * square(u) - log_stds_, 2) - half_log_2pi() * static_cast<double>(D_);  // [B, K]
        Var log_w = logits_ - logsumexp(logits_, 0, true);                        // [K]
        return logsumexp(comp + log_w, 1);
    }

    Tensor do_sample(std::int64_t n, Rng& rng, double temperature, const Tensor&) override {
        const std::vector<double> lg = logits_.value().to_vector(), m = means_.value().to_vector(),
                                  ls = log_stds_.value().to_vector();
        const double mx = *std::max_element(lg.begin(), lg.end());
        std::vector<double> cdf(lg.size());
        double acc = 0;
        for (std::size_t k = 0; k < lg.size(); ++k) cdf[k] = acc += std::exp(lg[k] - mx);
        Tensor out = Tensor::empty(with_batch(n, event_shape()));
        for (std::int64_t i = 0; i < n; ++i) {
            const double u = rng.uniform() * acc;
            std::size_t k = 0;
            while (k + 1 < cdf.size() && cdf[k] <= u) ++k;
            for (std::int64_t d = 0; d < D_; ++d) {
                const auto j = static_cast<std::size_t>(static_cast<std::int64_t>(k) * D_ + d);
                out.set_item(i * D_ + d, m[j] + temperature * std::exp(ls[j]) * rng.normal());
            }
        }
        return out;
    }

private:
    std::int64_t K_, D_ = 0;
    Var logits_, means_, log_stds_;
};

class Logistic final : public BaseDistribution {
public:
    explicit Logistic(const Shape& event) { set_event_shape(event); }

protected:
    Var do_log_prob(const Var& z, const Var&) override { return sum_per_sample(-z - 2.0 * softplus(-z)); }

    Tensor do_sample(std::int64_t n, Rng& rng, double temperature, const Tensor&) override {
        Tensor out = Tensor::empty(with_batch(n, event_shape()));
        for (std::int64_t i = 0; i < out.numel(); ++i) {
            double u = rng.uniform();
            u = std::min(std::max(u, 1e-12), 1.0 - 1e-12);
            out.set_item(i, temperature * std::log(u / (1.0 - u)));
        }
        return out;
    }
};

class ConditionalDiagGaussian final : public BaseDistribution {
public:
    ConditionalDiagGaussian(const Params& p, const BuildContext& c) {
        set_event_shape(c.event_shape);
        D_ = numel(c.event_shape);
        if (c.context_shape.empty())
            throw ConfigError(p.where() + ": conditional_diag_gaussian needs a context (a dataset with one, e.g. "
                                          "\"context\": \"label\"); use diag_gaussian otherwise");
        if (!c.registry) throw PluginError("conditional_diag_gaussian: built without a registry");
        ConditionerSpec spec;
        spec.in_shape = c.context_shape;
        spec.out_shape = {2 * D_};
        spec.zero_init_last = true;
        spec.networks = c.networks;
        Rng rng = init_rng(c);
        net_ = c.registry->make_conditioner(p.get_object("conditioner"), spec, rng);
        add_child("conditioner", net_.get());
    }

protected:
    Var do_log_prob(const Var& z, const Var& context) override {
        auto [m, ls] = params(context, z.size(0));
        return gaussian_log_prob(flat(z), m, ls, D_);
    }

    Tensor do_sample(std::int64_t n, Rng& rng, double temperature, const Tensor& context) override {
        if (!context.defined())
            throw ShapeError("conditional_diag_gaussian: sampling needs a context, one row per sample");
        NoGradGuard guard;
        auto [m, ls] = params(Var(context), n);
        Tensor eps = Tensor::empty({n, D_}, m.dtype());
        rng.fill_normal(eps, 0.0, temperature);
        Tensor z = kern::add(m.value(), kern::mul(kern::exp(ls.value()), eps));
        return z.reshape(with_batch(n, event_shape()));
    }

private:
    std::pair<Var, Var> params(const Var& context, std::int64_t B) {
        if (!context.defined()) throw ShapeError("conditional_diag_gaussian: no context given");
        if (context.size(0) != B)
            throw ShapeError("conditional_diag_gaussian: " + std::to_string(context.size(0)) + " context rows for " +
                             std::to_string(B) + " samples");
        Var out = (*net_)(context, Var());
        out = reshape(out, {B, 2 * D_});
        return {slice(out, 1, 0, D_), slice(out, 1, D_, D_)};
    }

    std::int64_t D_ = 0;
    std::unique_ptr<Conditioner> net_;
};

}  // namespace

void register_distributions(Registry& reg) {
    reg.add_distribution({"diag_gaussian",
                          "diagonal Gaussian with learnable mean and log-std (starts at N(0, I)); temperature "
                          "scales the std",
                          {},
                          from_event_shape<BaseDistribution, DiagGaussian>()});
    reg.add_distribution(
        {"gaussian_mixture",
         "mixture of K diagonal Gaussians, weights, means and log-stds learnable; temperature scales each std",
         {param_int("components", 4, "number of components K").range(1, 1024),
          param_number("init_scale", 1.0, "stddev of the random initial means (unit log-stds, equal weights)")
              .min(0.0)},
         [](const Params& p, const BuildContext& c) -> std::unique_ptr<BaseDistribution> {
             Rng rng = init_rng(c);
             return std::make_unique<GaussianMixture>(c.event_shape, p.get_int("components"),
                                                      p.get_number("init_scale"), rng);
         }});
    reg.add_distribution({"logistic", "standard logistic per value, log p = -z - 2 softplus(-z); temperature scales it",
                          {},
                          from_event_shape<BaseDistribution, Logistic>()});
    reg.add_distribution(
        {"conditional_diag_gaussian",
         "diagonal Gaussian whose mean and log-std come from a network on the context (starts at N(0, I))",
         {param_object("conditioner", R"({"type": "mlp", "hidden": [64, 64]})",
                       "network from the context to (mean, log_std), D values each")},
         [](const Params& p, const BuildContext& c) -> std::unique_ptr<BaseDistribution> {
             return std::make_unique<ConditionalDiagGaussian>(p, c);
         }});
}

}  // namespace flowlab::density
