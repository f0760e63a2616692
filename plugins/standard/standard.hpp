// Private to the standard plugin: the register functions that plugin.cpp calls, one per file,
// and small helpers shared between the files.
#pragma once

#include <cstdint>
#include <utility>

#include <flowlab/errors.hpp>
#include <flowlab/registry.hpp>
#include <flowlab/tensor.hpp>

namespace flowlab::standard {

void register_couplings(Registry& reg);     // coupling.cpp
void register_permutations(Registry& reg);  // permutation.cpp
void register_conditioners(Registry& reg);  // mlp.cpp
void register_distributions(Registry& reg); // distribution.cpp
void register_dequantizers(Registry& reg);  // dequantizer.cpp
void register_optimizers(Registry& reg);    // optimizer.cpp
void register_schedules(Registry& reg);     // schedule.cpp
void register_datasets(Registry& reg);      // dataset.cpp

// Calls fn(T{}) with T = float or double after the tensor's dtype.
template <class Fn>
decltype(auto) dispatch(DType dt, Fn&& fn) {
    if (dt == DType::f64) return fn(double{});
    return fn(float{});
}

// Throws ShapeError unless a and b share a dtype (fused kernels read both with one type).
inline void check_same_dtype(const Tensor& a, const Tensor& b, const char* what) {
    if (a.dtype() != b.dtype())
        throw ShapeError(std::string(what) + ": dtypes " + dtype_name(a.dtype()) + " and " +
                         dtype_name(b.dtype()) + " differ");
}

}  // namespace flowlab::standard
