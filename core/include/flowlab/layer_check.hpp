// Run-time layer checks: the bijector contract on real data, layer by layer, in a built flow.
// The trainer runs them before the first step and at every evaluation (train.check_layers);
// implemented in core/src/train/layer_check.cpp.
//
// A layer whose two directions disagree trains without a sign of trouble: a log-det with the
// wrong sign makes the likelihood unbounded, and the loss falls happily below any real density.
// The checks compare, on one batch at each layer's own input,
//   round trip   forward(inverse(x)) against x
//   log-dets     the inverse log-det against minus the forward one
// as relative errors |a - b| / max(1, |b|) (check-plugin's measure), with tolerances for f32.
// They see what is wrong between the directions, not an error that both share (a log-det wrong
// the same way in both): `flowlab check-plugin` compares against a numerical Jacobian too.
// Zero-initialised parameters make most mistakes invisible, which is why the trainer checks
// again at every evaluation, once training has moved them.
//
//   if (auto bad = check_flow_layers(*exp.flow, x_batch))
//       std::printf("%s: %s\n", exp.flow->layer_info()[bad->layer].pointer.c_str(), bad->detail.c_str());
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "flowlab/flow.hpp"

namespace flowlab {

// Loose enough for f32 arithmetic through trained layers whose directions are solved
// numerically, tight enough for real mistakes (a flipped sign is an error of order 1 once the
// layer has trained). The log-det's is looser: it takes derivatives of the round trip's small
// error (a trained spline autoregressive flow on checkerboard data reaches 2.5e-4, its round
// trip 4e-6; the shipped configs' other layers stay below 2e-5).
struct LayerCheckTolerances {
    double round_trip = 2e-3;
    double log_det = 1e-2;
};

struct LayerCheckFailure {
    std::size_t layer = 0;  // index into Flow::layer_info() (the data-to-latent order)
    std::string check;      // "round_trip", "log_det_cancel", or "error" (the layer threw)
    double worst = 0.0, tolerance = 0.0;
    std::int64_t row = -1;  // the sample of the batch where the error was worst
    std::string detail;     // what was compared, in one sentence
};

// Checks every layer of `flow` on the batch `x` ([batch, event...], continuous: after any
// dequantisation) and its `context`, in evaluation mode and without gradients: no parameter,
// buffer or random state changes. A split node is checked as a whole and, when it fails,
// through its inner layers, so that the failure names the layer at fault. Rows whose input or
// inverse is not finite are passed over (training has its own policy for those). Returns the
// first layer, in data-to-latent order, that fails, or nothing.
std::optional<LayerCheckFailure> check_flow_layers(Flow& flow, const Tensor& x, const Tensor& context = Tensor(),
                                                   const LayerCheckTolerances& tolerances = {});

}  // namespace flowlab
