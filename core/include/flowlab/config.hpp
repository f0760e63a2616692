// Loading an experiment: one JSON file (or a run directory's recorded config.json), parsed
// strictly and validated against the experiment format; every unknown key is an error with
// its JSON pointer. Implemented in core/src/graph/config.cpp.
#pragma once

#include <string>
#include <vector>

#include "flowlab/params.hpp"

namespace flowlab {

// Parses `path`, applies `--set key.path=value` overrides (value is JSON, or a bare string),
// and validates the top level. Errors are ConfigError "file:/pointer: what; hint".
Params load_experiment(const std::string& path, const std::vector<std::string>& overrides = {});

// The resolved experiment a run directory recorded (RUN_DIR/config.json, written by `run`),
// validated again with `overrides` applied.
Params load_run_config(const std::string& run_dir, const std::vector<std::string>& overrides = {});

// The plugin names/paths an experiment asks for ("plugins"; without one, the build's default list).
std::vector<std::string> experiment_plugins(const Params& experiment);

}  // namespace flowlab
