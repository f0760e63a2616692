// The experiment format as a JSON Schema, for editors. Implemented in core/src/graph/json_schema.cpp.
#pragma once

#include <string>

#include "flowlab/registry.hpp"

namespace flowlab {

// A JSON Schema (draft 2020-12) of the experiment format, generated from the registry: every
// registered type with its parameters, so that editors validate and complete configs.
std::string experiment_json_schema(const Registry& registry);

}  // namespace flowlab
