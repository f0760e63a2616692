// Private to the density plugin: the register functions that plugin.cpp calls (one per file)
// and small helpers shared between the files.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include <flowlab/errors.hpp>
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

template <class T>
constexpr DType dtype_of() {
    return std::is_same_v<T, double> ? DType::f64 : DType::f32;
}

// Calls fn(T{}) with T = float or double after the dtype.
template <class Fn>
decltype(auto) dispatch(DType dt, Fn&& fn) {
    if (dt == DType::f64) return fn(double{});
    return fn(float{});
}

inline void check_same_dtype(const Tensor& a, const Tensor& b, const std::string& what) {
    if (a.dtype() != b.dtype())
        throw ShapeError(what + ": dtypes " + dtype_name(a.dtype()) + " and " + dtype_name(b.dtype()) + " differ");
}

// Rows per parallel chunk so that a chunk holds about kElementwiseGrain elements.
inline std::int64_t row_grain(std::int64_t cols) {
    return std::max<std::int64_t>(1, kElementwiseGrain / std::max<std::int64_t>(1, cols));
}

// [b, event...]
inline Shape with_batch(std::int64_t b, const Shape& event) {
    Shape s{b};
    s.insert(s.end(), event.begin(), event.end());
    return s;
}

// A fresh generator for a layer's initialisation: split from the model's, or seed 0 when the
// factory is called without one (tests that build a layer by hand).
inline Rng init_rng(const BuildContext& c) { return c.rng ? c.rng->split() : Rng(0); }

}  // namespace flowlab::density
