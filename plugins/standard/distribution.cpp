// Base distribution `standard_normal`: log p(z) = -0.5 * sum z^2 - D/2 * log(2 pi) per sample,
// one fused op (a sum of squares per row; its backward is -g * z).
#include <cmath>
#include <memory>
#include <numbers>

#include <flowlab/ops.hpp>
#include <flowlab/parallel.hpp>

#include "standard.hpp"

namespace flowlab::standard {
namespace {

class StandardNormal final : public BaseDistribution {
public:
    explicit StandardNormal(const Shape& event) { set_event_shape(event); }

protected:
    Var do_log_prob(const Var& z, const Var&) override {
        const Tensor& zv = z.value();
        const std::int64_t B = zv.size(0);
        const std::int64_t D = B > 0 ? zv.numel() / B : numel(event_shape());
        const double c = 0.5 * static_cast<double>(D) * std::log(2.0 * std::numbers::pi);
        Tensor lp = Tensor::empty({B}, zv.dtype());
        const std::int64_t grain = std::max<std::int64_t>(1, kElementwiseGrain / std::max<std::int64_t>(1, D));
        dispatch(zv.dtype(), [&](auto tag) {
            using T = decltype(tag);
            const T* zp = zv.data<T>();
            T* out = lp.data<T>();
            parallel_for(B, grain, [&](std::int64_t r0, std::int64_t r1) {
                for (std::int64_t b = r0; b < r1; ++b) {
                    const T* row = zp + b * D;
                    double acc = 0.0;  // in double: D can be thousands
                    for (std::int64_t j = 0; j < D; ++j) acc += static_cast<double>(row[j]) * row[j];
                    out[b] = static_cast<T>(-0.5 * acc - c);
                }
            });
        });
        return make_op("standard_normal_log_prob", std::move(lp), {z},
                       [zv, D, grain](const Tensor& glp, const Tensor&, GradSink& sink) {
                           with_grad_buffer(sink, zv.dtype(), [&](auto tag, auto* gz) {
                               using T = decltype(tag);
                               const T* zp = zv.data<T>();
                               const T* gp = glp.data<T>();
                               parallel_for(zv.size(0), grain, [&](std::int64_t r0, std::int64_t r1) {
                                   for (std::int64_t b = r0; b < r1; ++b)
                                       for (std::int64_t j = b * D; j < (b + 1) * D; ++j) gz[j] -= gp[b] * zp[j];
                               });
                           });
                       });
    }

    Tensor do_sample(std::int64_t n, Rng& rng, double temperature, const Tensor&) override {
        Shape s = {n};
        s.insert(s.end(), event_shape().begin(), event_shape().end());
        Tensor z = Tensor::empty(s);
        rng.fill_normal(z, 0.0, temperature);
        return z;
    }
};

}  // namespace

void register_distributions(Registry& reg) {
    reg.add_distribution({"standard_normal", "isotropic unit Gaussian N(0, I) over the whole event", {},
                          from_event_shape<BaseDistribution, StandardNormal>()});
}

}  // namespace flowlab::standard
