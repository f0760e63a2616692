// The image plugin: the layers of multi-scale image flows (Glow, RealNVP, Flow++), their
// conditioners and variational dequantisation. Each file registers its own types.
#include <flowlab/plugin.hpp>

#include "image.hpp"

FLOWLAB_PLUGIN("image", "0.1.0", "image flows: squeeze, actnorm2d, invertible 1x1 conv, conv couplings, Flow++ mixture couplings, cnn and flowpp conditioners, conv2d and attention ops, variational dequantization") {
    using namespace flowlab::image;
    register_reshaping(reg);
    register_actnorm(reg);
    register_invconv(reg);
    register_couplings(reg);
    register_conditioners(reg);
    register_dequantizers(reg);
    register_ops(reg);
    register_mixture_couplings(reg);
    register_flowpp_conditioner(reg);
    register_attention_ops(reg);
    // mixture_coupling builds the standard plugin's mlp by default, and flowpp's network uses its
    // gate, add and layer_norm ops.
    reg.require_plugin("standard");
}
