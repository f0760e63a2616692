// Private to the density plugin: the register functions that plugin.cpp calls (one per file)
// and small helpers shared between the files.
#pragma once

#include <algorithm>
#include <cstdint>
#include <new>
#include <string>
#include <type_traits>

#include <flowlab/dataset.hpp>
#include <flowlab/errors.hpp>
#include <flowlab/kernels.hpp>
#include <flowlab/parallel.hpp>
#include <flowlab/registry.hpp>
#include <flowlab/tensor.hpp>

namespace flowlab::density {

void register_autoregressive(Registry& reg);  // autoregressive.cpp: maf, spline_autoregressive
void register_made(Registry& reg);            // made.cpp: the `made` conditioner
void register_splines(Registry& reg);         // spline_coupling.cpp
void register_linear(Registry& reg);          // linear.cpp: lu_linear
void register_normalization(Registry& reg);   // normalization.cpp: actnorm, batch_norm
void register_elementwise(Registry& reg);     // elementwise.cpp: logit, sigmoid, affine
void register_distributions(Registry& reg);   // distributions.cpp
void register_datasets(Registry& reg);        // datasets.cpp: IDX, npy, csv, labeled moons
void register_image_datasets(Registry& reg);  // datasets_images.cpp: cifar10, image_folder, npy_images

// A fresh generator for a layer's initialisation: split from the model's, or seed 0 when the
// factory is called without one (tests that build a layer by hand).
inline Rng init_rng(const BuildContext& c) { return c.rng ? c.rng->split() : Rng(0); }

// Runs a dataset loader. A valid file too large for memory is a fault of that file, not of the
// config (which the registry would call any other exception): an IoError naming it.
template <class Fn>
Dataset loading(const std::string& path, Fn&& fn) {
    try {
        return fn();
    } catch (const std::bad_alloc&) {
        throw IoError(path + ": not enough memory to load it (" + std::to_string(available_memory_bytes() >> 20) +
                      " MB available)");
    }
}

}  // namespace flowlab::density
