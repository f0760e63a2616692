// The files `flowlab run` leaves in a run directory besides metrics and checkpoints: the
// resolved config and the summary. Both go through the JSON library and are written atomically,
// so any name, path or value (a quote, a NaN) gives valid JSON; a non-finite number is null.
// Also the listing of a run directory's checkpoints. Implemented in core/src/train/run_dir.cpp.
#pragma once

#include <string>
#include <vector>

#include "flowlab/experiment.hpp"
#include "flowlab/registry.hpp"

namespace flowlab {

// RUN_DIR/config.json: {"config": <resolved experiment>, "flowlab_version", "loaded_plugins"}.
// load_run_config() reads it back.
void write_run_config(const std::string& run_dir, const Params& config, const std::vector<PluginRecord>& plugins);

// RUN_DIR/summary.json: the run's name and the figures of its TrainSummary.
void write_run_summary(const std::string& run_dir, const std::string& name, const TrainSummary& summary);

// The checkpoints of a run directory, newest first (run_dir/checkpoints/step-*.safetensors;
// the `latest` pointer's target first when it is valid).
std::vector<std::string> run_checkpoints(const std::string& run_dir);

}  // namespace flowlab
