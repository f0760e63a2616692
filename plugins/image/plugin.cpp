// The image plugin: the layers of multi-scale image flows (Glow, RealNVP), their CNN
// conditioner and variational dequantisation. Each file registers its own types.
#include <flowlab/plugin.hpp>

#include "image.hpp"

FLOWLAB_PLUGIN("image", "0.1.0", "image flows: squeeze, actnorm2d, invertible 1x1 conv, conv couplings, cnn conditioner, conv2d op, variational dequantization") {
    using namespace flowlab::image;
    register_reshaping(reg);
    register_actnorm(reg);
    register_invconv(reg);
    register_couplings(reg);
    register_conditioners(reg);
    register_dequantizers(reg);
    register_ops(reg);
}
