// 2-D convolution and the small image ops around it (core/src/ops_conv.cpp).
//
// conv2d runs f32 through oneDNN (forward, backward data, backward weights; primitives are
// built once per shape and cached, since building one costs ~0.2 ms) and f64 on plain loops (for
// gradient checks). Stride-1 "same" convolutions with a thin side (e.g. 2 -> 128 or 128 -> 4
// channels, 3x3) or 1x1 ones, with the wide side channels-last, run as one GEMM each: several
// times faster than oneDNN 2.6's AVX2 convolution kernels for such shapes. Weights are always [O, C, kh, kw] (PyTorch's OIHW); oneDNN may want another
// weight layout, and the op reorders per call.
//
// Activations may live in one of three physical layouts, named in the tensor's shape so that a
// tensor never lies about its element order:
//   nchw      [B, C, H, W]          flowlab's image convention (every bijector sees this)
//   nhwc      [B, H, W, C]          channels last
//   blocked8  [B, C/8, H, W, 8]     oneDNN's native AVX2 layout (C a multiple of 8)
// A network that keeps its hidden activations in nhwc or blocked8 (the CNN conditioner) avoids
// oneDNN's internal reorders; element-wise ops (relu, add) do not care about the layout. When
// in_layout and out_layout differ, the smaller of input and output is moved to the other's
// layout, since oneDNN has fast kernels for equal layouts only.
//
//   // conv3x3 -> relu -> conv1x1, hidden activations channels-last:
//   Conv2dOptions a{.padding = 1, .out_layout = ConvLayout::nhwc, .relu = true};
//   Var h = conv2d(x, w1, b1, a);                                    // [B,H,W,128]
//   Var y = conv2d(h, w2, b2, {.in_layout = ConvLayout::nhwc});      // [B,O,H,W]
#pragma once

#include <cstdint>

#include "flowlab/autodiff.hpp"

namespace flowlab {

enum class ConvLayout : std::uint8_t { nchw, nhwc, blocked8 };

struct Conv2dOptions {
    std::int64_t stride = 1;
    std::int64_t padding = 0;  // zeros on every side
    ConvLayout in_layout = ConvLayout::nchw;
    ConvLayout out_layout = ConvLayout::nchw;
    bool relu = false;  // fused y = max(0, conv(x) + b); the backward masks by y > 0
};

// x [B, C, H, W] (in in_layout), w [O, C, kh, kw], b [O] or undefined -> [B, O, H', W'] (in
// out_layout), H' = (H + 2 padding - kh) / stride + 1. Throws ShapeError on any mismatch.
Var conv2d(const Var& x, const Var& w, const Var& b, const Conv2dOptions& opt);
inline Var conv2d(const Var& x, const Var& w, const Var& b = Var(), std::int64_t stride = 1,
                  std::int64_t padding = 0) {
    Conv2dOptions o;
    o.stride = stride;
    o.padding = padding;
    return conv2d(x, w, b, o);
}

// Glow's coupling network as one op: three stride-1 "same" convolutions (odd kernels, padding
// k / 2) with ReLU after the first two,
//   h1 = relu(conv(x, w0) + b0), h2 = relu(conv(h1, w1) + b1), y = conv(h2, w2) + b2,
// x [B, C, H, W] -> y [B, O, H, W], NCHW. The same function as the three conv2d calls, and
// faster: f32 with thin outer convolutions (C k0 k0 <= 72, O k2 k2 <= 144) and a 1x1 middle one
// runs a few images at a time through all three, so that the hidden activations stay in cache
// (conv_stack.cpp); anything else runs as the three conv2d calls.
//
//   Var y = conv_stack(x, w0, b0, w1, b1, w2, b2);  // x [64, 2, 14, 14], w0 [128, 2, 3, 3],
//                                                   // w1 [128, 128, 1, 1], w2 [4, 128, 3, 3]
Var conv_stack(const Var& x, const Var& w0, const Var& b0, const Var& w1, const Var& b1, const Var& w2,
               const Var& b2);

// A 1x1 convolution with few channels (the invertible 1x1 conv): y[b, o, p] = sum_c w[o, c]
// x[b, c, p] on NCHW, w [O, C] or [O, C, 1, 1]. A direct loop: for 4 or 8 channels oneDNN's
// per-call overhead is most of the time.
Var conv1x1(const Var& x, const Var& w);

// Moves x between physical layouts (a copy; the backward moves the gradient back).
Var to_layout(const Var& x, ConvLayout from, ConvLayout to);
// The logical shape [B, C, H, W] of a tensor in `layout`, and the shape a [B, C, H, W] tensor
// has in `layout`.
Shape nchw_shape(const Shape& s, ConvLayout layout);
Shape layout_shape(const Shape& nchw, ConvLayout layout);

// 0/1 masks for RealNVP-style image couplings, broadcastable against [B, C, H, W]:
// checkerboard [1, H, W] with mask[h, w] = ((h + w) % 2 == parity); channel [C, 1, 1] with
// mask[c] = (c < C/2) == (parity == 0).
Tensor checkerboard_mask(std::int64_t h, std::int64_t w, int parity, DType dt = DType::f32);
Tensor channel_mask(std::int64_t c, int parity, DType dt = DType::f32);

namespace kern {
// The convolution as a plain loop over NCHW tensors of either dtype (tests' reference).
Tensor conv2d_reference(const Tensor& x, const Tensor& w, const Tensor& b, std::int64_t stride,
                        std::int64_t padding);
}  // namespace kern

}  // namespace flowlab
