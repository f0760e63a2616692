// The density plugin: layers, base distributions and datasets for density estimation on vector
// data (autoregressive, spline, linear, normalisation, element-wise, conditional). Each file
// registers its own types; docs/LAYERS.md describes them all.
#include <flowlab/plugin.hpp>

#include "density.hpp"

FLOWLAB_PLUGIN("density", "0.1.0",
               "density estimation: MADE/MAF/IAF, spline coupling and autoregressive, LU linear, actnorm, "
               "batch norm, logit/sigmoid/affine, learnable and conditional bases, IDX/CIFAR-10/PNG folder/npy/csv datasets") {
    using namespace flowlab::density;
    register_made(reg);
    register_autoregressive(reg);
    register_splines(reg);
    register_linear(reg);
    register_normalization(reg);
    register_elementwise(reg);
    register_distributions(reg);
    register_datasets(reg);
    register_image_datasets(reg);
    // Spline couplings and conditional bases build the standard plugin's "mlp" conditioner.
    reg.require_plugin("standard");
}
