// The logistic-mixture CDF transform of Flow++ (Ho et al. 2019) as one fused op over a [B, D]
// tensor, with a hand-written backward (mixture_op.cpp has the element-level maths).
//
// Each transformed value x has 2 + 3K raw parameters: a_raw, b, K logits, K means, K log-scales.
//   inverse (data -> latent):  z = logit(F(x)) exp(a) + b,  F = sum_k pi_k sigmoid((x - mu_k) / s_k)
//   forward (latent -> data):  x = F^-1(sigmoid((z - b) exp(-a))), solved numerically
// with pi = softmax(logits), mu_k = mean_k + spread (2k / (K - 1) - 1) (fixed offsets, evenly
// over [-spread, spread]), s_k = exp(max(log_scale_k, min_log_scale)), a = c tanh(a_raw / c).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <flowlab/bijector.hpp>

namespace flowlab::image {

constexpr int kMaxMixtureComponents = 64;

// Which values of a row are transformed and where their raw parameters sit in a row of `raw`:
// parameter j (0: a_raw, 1: b, 2 + k: logit k, 2 + K + k: mean k, 2 + 2K + k: log-scale k) of
// slot s at column j * slots + s. Images put a slot per transformed pixel (channel-major), so
// the conditioner's output channels come in blocks of one parameter kind.
struct MixturePlan {
    std::string layer;                 // named by errors
    std::int64_t dim = 0;              // values per row of x
    std::int64_t slots = 0;            // transformed values per row
    std::vector<std::int32_t> slot;    // per value: its slot, or -1 (copied unchanged)
    int components = 4;                // K
    double scale_clamp = 1.0;          // a = c tanh(a_raw / c)
    double min_log_scale = -7.0;       // Flow++'s floor on the components' log-scales
    double mean_spread = 1.0;          // component k's mean is offset by spread (2k / (K - 1) - 1)
    double tolerance = 1e-10;          // of the numerical inverse, relative to max(1, |x|)
    int max_iterations = 200;          // NumericError naming `layer` beyond this

    std::int64_t params_per_slot() const { return 2 + 3 * static_cast<std::int64_t>(components); }
    std::int64_t raw_cols() const { return params_per_slot() * slots; }
};

// inverse = true: out = z and log_det = log|dz/dx| per row; false: out = x solved from z and
// log_det = log|dx/dz|. Gradients reach `in` and `raw` in both directions (the solved one by the
// implicit function theorem). NumericError naming the layer when the solver does not converge.
FlowResult mixture_transform(const Var& in, const Var& raw, const std::shared_ptr<const MixturePlan>& plan,
                             bool inverse);

}  // namespace flowlab::image
