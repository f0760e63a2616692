// Normalisation layers: `actnorm` (Glow) and `batch_norm` (the MAF paper's batch-norm flow).
//
// Both act per feature of a vector event, or per channel (the first event dimension) of an
// image event, where the log-det counts every spatial position.
//
// actnorm: z = (x + bias) * exp(logs). Data-dependent initialisation on the first training
//   batch (Bijector::data_init): bias = -mean, logs = -log(std + 1e-6), with the unbiased std
//   over the batch (and spatial positions), so the first outputs have zero mean and unit variance
//   per feature. A constant feature has no scale to normalise: that is a NumericError naming the
//   feature, not a silent 1e6 scale or a NaN.
// batch_norm: z = (x - m) / sqrt(v + eps) * exp(log_gamma) + beta. In training mode m and v are
//   the batch's mean and (biased) variance, gradients flow through them, and the running
//   averages (momentum) are updated; the log-det is sum(log_gamma - 0.5 log(v + eps)), the same
//   value for every row (the dependence of m and v on the batch is not a per-sample Jacobian;
//   this is the MAF paper's convention). In evaluation mode, and always in the generative
//   (forward) direction, m and v are the running statistics, which makes the layer an exact
//   per-sample bijection. batch_independent() is false in training mode.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <flowlab/ops.hpp>

#include "density.hpp"

namespace flowlab::density {
namespace {

struct FeatureAxis {
    std::int64_t channels = 0, spatial = 1;
    Shape view;  // the per-channel parameter viewed against the event: [C, 1, 1, ...]

    explicit FeatureAxis(const Shape& event, const char* layer) {
        if (event.empty() || event[0] < 1)
            throw ShapeError(std::string(layer) + ": needs an event with a first dimension, got " + shape_str(event));
        channels = event[0];
        spatial = numel(event) / channels;
        view = {channels};
        for (std::size_t i = 1; i < event.size(); ++i) view.push_back(1);
    }
};

// Per-channel mean and variance (biased) of x [B, C, ...] in double.
void channel_moments(const Tensor& x, const FeatureAxis& ax, std::vector<double>& mean, std::vector<double>& var) {
    const std::int64_t B = x.size(0), C = ax.channels, S = ax.spatial;
    const std::vector<double> v = x.to_vector();
    mean.assign(static_cast<std::size_t>(C), 0.0);
    var.assign(static_cast<std::size_t>(C), 0.0);
    const double n = static_cast<double>(B * S);
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t s = 0; s < S; ++s) mean[static_cast<std::size_t>(c)] += v[static_cast<std::size_t>((b * C + c) * S + s)];
    for (auto& m : mean) m /= n;
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t s = 0; s < S; ++s) {
                const double d = v[static_cast<std::size_t>((b * C + c) * S + s)] - mean[static_cast<std::size_t>(c)];
                var[static_cast<std::size_t>(c)] += d * d;
            }
    for (auto& s : var) s /= n;
}

// ---------------------------------------------------------------------------------- actnorm

class ActNorm final : public Bijector {
public:
    ActNorm(const Params& p, const BuildContext& c) : ax_(c.event_shape, "actnorm"), init_(p.get_bool("data_init")) {
        set_event_shape(c.event_shape);
        bias_ = add_parameter("bias", Tensor::zeros({ax_.channels}));
        logs_ = add_parameter("logs", Tensor::zeros({ax_.channels}));
    }

    Var data_init(const Var& x, const Var& context) override {
        if (init_) {
            const std::int64_t n = x.size(0) * ax_.spatial;
            if (n < 2)
                throw NumericError("actnorm " + shape_str(event_shape()) +
                                   ": data-dependent initialisation needs at least 2 values per feature, got " +
                                   std::to_string(n) + " (use a larger batch)");
            std::vector<double> mean, var;
            channel_moments(x.value(), ax_, mean, var);
            Tensor& b = bias_.mutable_value();
            Tensor& l = logs_.mutable_value();
            for (std::int64_t c = 0; c < ax_.channels; ++c) {
                const double sd = std::sqrt(var[static_cast<std::size_t>(c)] * static_cast<double>(n) / static_cast<double>(n - 1));
                if (!(sd > 0.0) || !std::isfinite(mean[static_cast<std::size_t>(c)]))
                    throw NumericError("actnorm " + shape_str(event_shape()) + ": feature " + std::to_string(c) +
                                       " is " + (std::isfinite(sd) ? "constant (std 0)" : "not finite") +
                                       " over the data-dependent initialisation batch, so it has no scale to "
                                       "normalise; drop or dequantise that feature, or set \"data_init\": false");
                b.set_item(c, -mean[static_cast<std::size_t>(c)]);
                l.set_item(c, -std::log(sd + 1e-6));
            }
        }
        return inverse(x, context).out;
    }

protected:
    FlowResult do_inverse(const Var& x, const Var&) override {
        Var z = (x + reshape(bias_, ax_.view)) * exp(reshape(logs_, ax_.view));
        return {z, broadcast_log_det(sum_all(logs_) * static_cast<double>(ax_.spatial), x)};
    }
    FlowResult do_forward(const Var& z, const Var&) override {
        Var x = z * exp(-reshape(logs_, ax_.view)) - reshape(bias_, ax_.view);
        return {x, broadcast_log_det(sum_all(logs_) * static_cast<double>(-ax_.spatial), z)};
    }

private:
    FeatureAxis ax_;
    bool init_;
    Var bias_, logs_;
};

// ------------------------------------------------------------------------------- batch norm

class BatchNorm final : public Bijector {
public:
    BatchNorm(const Params& p, const BuildContext& c)
        : ax_(c.event_shape, "batch_norm"), momentum_(p.get_number("momentum")), eps_(p.get_number("eps")) {
        set_event_shape(c.event_shape);
        log_gamma_ = add_parameter("log_gamma", Tensor::zeros({ax_.channels}));
        beta_ = add_parameter("beta", Tensor::zeros({ax_.channels}));
        running_mean_ = add_buffer("running_mean", Tensor::zeros({ax_.channels}));
        running_var_ = add_buffer("running_var", Tensor::full({ax_.channels}, 1.0));
    }

    bool batch_independent() const override { return !training(); }

protected:
    FlowResult do_inverse(const Var& x, const Var&) override {
        const DType dt = x.dtype();
        const Var lg = reshape(log_gamma_, ax_.view);
        const Var beta = reshape(beta_, ax_.view);
        if (!training()) {
            auto [m, v] = running(dt);
            Var z = (x - m) / sqrt(v) * exp(lg) + beta;
            return {z, broadcast_log_det(log_det_of(v), x)};
        }
        if (x.size(0) * ax_.spatial < 2)
            throw NumericError("batch_norm: training mode needs at least 2 values per feature in a batch, got " +
                               std::to_string(x.size(0) * ax_.spatial));
        Var m = reduce_mean(x);
        Var xc = x - m;
        Var v = reduce_mean(square(xc)) + eps_;
        Var z = xc / sqrt(v) * exp(lg) + beta;
        update_running(m.value(), v.value(), x.size(0) * ax_.spatial);
        return {z, broadcast_log_det(log_det_of(v), x)};
    }

    FlowResult do_forward(const Var& z, const Var&) override {
        auto [m, v] = running(z.dtype());
        Var x = (z - reshape(beta_, ax_.view)) * exp(-reshape(log_gamma_, ax_.view)) * sqrt(v) + m;
        return {x, broadcast_log_det(-log_det_of(v), z)};
    }

private:
    // Mean over the batch and the spatial positions, kept as [1, C, 1, ...].
    Var reduce_mean(const Var& a) const {
        Var r = a;
        for (std::int64_t d = a.value().dim() - 1; d >= 0; --d)
            if (d != 1) r = mean(r, d, true);
        return r;
    }

    // sum over features of (log_gamma - 0.5 log v), times the spatial size; v shaped [..C..].
    Var log_det_of(const Var& v) const {
        return (sum_all(log_gamma_) - 0.5 * sum_all(log(v))) * static_cast<double>(ax_.spatial);
    }

    std::pair<Var, Var> running(DType dt) const {
        Tensor m = running_mean_.to(dt).clone().reshape(ax_.view);
        Tensor v = kern::add_scalar(running_var_.to(dt), eps_).reshape(ax_.view);
        return {Var(m), Var(v)};
    }

    void update_running(const Tensor& m, const Tensor& v_eps, std::int64_t n) {
        const double unbias = static_cast<double>(n) / static_cast<double>(n - 1);
        for (std::int64_t c = 0; c < ax_.channels; ++c) {
            const double bm = m.item(c), bv = (v_eps.item(c) - eps_) * unbias;
            running_mean_.set_item(c, (1.0 - momentum_) * running_mean_.item(c) + momentum_ * bm);
            running_var_.set_item(c, (1.0 - momentum_) * running_var_.item(c) + momentum_ * bv);
        }
    }

    FeatureAxis ax_;
    double momentum_, eps_;
    Var log_gamma_, beta_;
    Tensor running_mean_, running_var_;
};

}  // namespace

void register_normalization(Registry& reg) {
    ConformanceHints h;
    h.shapes = {{5}, {2, 3, 3}};
    reg.add_bijector({"actnorm",
                      "per-feature (per-channel) scale and shift z = (x + b) * exp(logs), initialised from the "
                      "first batch to zero mean and unit variance",
                      {param_bool("data_init", true,
                                  "initialise from the first training batch (bias = -mean, logs = -log(std + 1e-6)); "
                                  "false = start as the identity")},
                      [](const Params& p, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<ActNorm>(p, c);
                      },
                      h});
    reg.add_bijector({"batch_norm",
                      "batch-norm flow (MAF): batch statistics while training (running averages kept), running "
                      "statistics in evaluation and sampling",
                      {param_number("momentum", 0.1, "weight of the batch in the running averages").range(0.0, 1.0),
                       param_number("eps", 1e-5, "added to the variance").min(0.0)},
                      [](const Params& p, const BuildContext& c) -> std::unique_ptr<Bijector> {
                          return std::make_unique<BatchNorm>(p, c);
                      },
                      h});
}

}  // namespace flowlab::density
