// The rational-quadratic spline as one fused op over a [B, D] tensor, with a hand-written
// backward (spline.hpp has the element-level maths).
#pragma once

#include <memory>
#include <vector>

#include <flowlab/bijector.hpp>
#include <flowlab/params.hpp>

#include "spline.hpp"

namespace flowlab::density {

// Which features a spline transforms and where their raw parameters sit in a row of `raw`.
struct SplineLayout {
    std::int64_t dim = 0;             // features per row of the input
    std::vector<std::int32_t> slot;   // per feature: its transformed index k, or -1 (passes through)
    std::int64_t raw_cols = 0;        // columns of raw
    std::int64_t stride_dim = 0;      // raw column of (k, j) = k * stride_dim + j * stride_param
    std::int64_t stride_param = 1;

    // Every feature transformed, parameters blocked by kind: column j * D + k (MADE's layout).
    static SplineLayout blocked(std::int64_t dim, int params);
    // The features with slot >= 0 transformed, parameters contiguous per feature: k * P + j.
    static SplineLayout per_feature(std::vector<std::int32_t> slot, std::int64_t n_trans, int params);
};

// forward_dir = true: out = f(in), log_det = sum log f'(in) (the spline's forward map);
// false: out = f^-1(in), log_det = sum log (f^-1)'(in). Features with slot -1 are copied.
// Gradients flow to `in` and `raw`; one backward kernel computes both outputs' contributions.
FlowResult spline_transform(const Var& in, const Var& raw, const std::shared_ptr<const SplineLayout>& layout,
                            const rqs::SplineConfig& cfg, bool forward_dir);

// The spline's parameters (bins, tail_bound, minimum widths/heights/derivative) for a schema.
Schema spline_schema_params();
// Reads them from validated parameters; throws ConfigError if the minimums leave no room.
rqs::SplineConfig spline_config(const Params& p);

}  // namespace flowlab::density
