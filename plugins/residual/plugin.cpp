// The residual plugin: invertible residual blocks (i-ResNet, Residual Flows) for vectors and
// images, with exact, truncated-series and Russian-roulette log-determinants.
#include <flowlab/plugin.hpp>

#include "residual.hpp"

FLOWLAB_PLUGIN("residual", "0.1.0",
               "residual flows: invertible residual blocks z = x + g(x) with spectrally normalised g (dense and "
               "convolutional), fixed-point inverse, exact / series / Russian-roulette log-det") {
    flowlab::residual::register_blocks(reg);
}
