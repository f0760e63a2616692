// The files `flowlab run` leaves in a run directory besides metrics and checkpoints: the
// resolved config and the summary. Both go through the JSON library and are written atomically,
// so any name, path or value (a quote, a NaN) gives valid JSON; a non-finite number is null.
// Also the listing of a run directory's checkpoints. Implemented in core/src/train/run_dir.cpp.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "flowlab/experiment.hpp"
#include "flowlab/registry.hpp"

namespace flowlab {

// What a trained flow takes: the per-sample shapes and the dtype of its data. Recorded in the
// run's config.json so that flowlab::Model::load builds the flow without reading the dataset.
struct ModelInput {
    Shape event_shape, context_shape;
    DType dtype = DType::f32;
};
inline ModelInput model_input_of(const Dataset& data) {
    return {data.event_shape, data.context_shape, data.train.x.defined() ? data.train.x.dtype() : DType::f32};
}

// RUN_DIR/config.json: {"config": <resolved experiment>, "flowlab_version", "loaded_plugins",
// "model_input": {"event_shape", "context_shape", "dtype"}, "ranks": the processes of a
// data-parallel run (1 without mpirun)}. load_run_config() reads it back.
void write_run_config(const std::string& run_dir, const Params& config, const std::vector<PluginRecord>& plugins,
                      const ModelInput& input, int ranks = 1);
// config.json's model_input, or nothing for a run written before it was recorded (or without
// a readable config.json: load_run_config reports that).
std::optional<ModelInput> read_model_input(const std::string& run_dir);

// RUN_DIR/summary.json: the run's name and the figures of its TrainSummary.
void write_run_summary(const std::string& run_dir, const std::string& name, const TrainSummary& summary);

// The checkpoints of a run directory, newest first (run_dir/checkpoints/step-*.safetensors;
// the `latest` pointer's target first when it is valid).
std::vector<std::string> run_checkpoints(const std::string& run_dir);

}  // namespace flowlab
