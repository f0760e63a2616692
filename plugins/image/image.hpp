// Private to the image plugin: the register functions plugin.cpp calls, and helpers shared
// between its files.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <flowlab/errors.hpp>
#include <flowlab/kernels.hpp>
#include <flowlab/ops.hpp>
#include <flowlab/parallel.hpp>
#include <flowlab/registry.hpp>

namespace flowlab::image {

void register_reshaping(Registry& reg);    // squeeze.cpp: squeeze, shift
void register_actnorm(Registry& reg);      // actnorm.cpp
void register_invconv(Registry& reg);      // invconv.cpp
void register_couplings(Registry& reg);    // coupling.cpp
void register_conditioners(Registry& reg); // cnn.cpp
void register_dequantizers(Registry& reg); // vardeq.cpp
void register_ops(Registry& reg);          // conv_op.cpp: conv2d for network graphs
void register_mixture_couplings(Registry& reg);   // mixture_coupling.cpp: Flow++'s mixture CDF couplings
void register_flowpp_conditioner(Registry& reg);  // flowpp.cpp: Flow++'s gated conv/attention network
void register_attention_ops(Registry& reg);       // attention_op.cpp: attention, concat_elu

// An event shape [C, H, W], or a ShapeError naming the layer.
inline void require_image(const Shape& s, const char* layer) {
    if (s.size() != 3 || s[0] < 1 || s[1] < 1 || s[2] < 1)
        throw ShapeError(std::string(layer) + ": needs an image event [C, H, W], got " + shape_str(s) +
                         " (load the data with flatten = false)");
}

// The space-to-depth index map of squeeze: out[k] = in[idx[k]] within one sample [C, H, W] ->
// [4C, H/2, W/2], out channel 4c + 2dy + dx.
std::shared_ptr<const std::vector<std::int64_t>> squeeze_index(const Shape& in);
// Its inverse map (depth-to-space).
std::shared_ptr<const std::vector<std::int64_t>> unsqueeze_index(const Shape& in);
// out[b, k] = x[b, idx[k]] per sample, reshaped to `out_event`; the backward scatters.
Var permute_within_sample(const Var& x, const std::shared_ptr<const std::vector<std::int64_t>>& idx,
                          const Shape& out_event);

}  // namespace flowlab::image
