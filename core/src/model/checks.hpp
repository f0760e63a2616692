// The checks behind the non-virtual entry points of the extension interfaces (bijector,
// base distribution, dequantizer): what goes in and what comes out, so that a plugin's shape bug
// is reported at the layer that has it, by name.
#pragma once

#include <string>

#include "flowlab/autodiff.hpp"
#include "flowlab/tensor.hpp"

namespace flowlab::model {

// "[B, 2, 3]": a batched shape with the batch left symbolic.
std::string batched_str(const Shape& event);
Shape event_of(const Shape& s);
// The input of a batched call: defined, [B, ...], and [B, event...] when the event is known.
void check_input(const Var& v, const Shape& event, const std::string& who, const char* what);
void check_result(const Var& v, const Shape& expected, const std::string& who, const char* what);

}  // namespace flowlab::model
