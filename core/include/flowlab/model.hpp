// Model: a trained flow inside your own program, without the command line.
//
//   #include <flowlab/model.hpp>
//
//   flowlab::Model m = flowlab::Model::load("runs/quickstart");   // or .../checkpoints/step-*.safetensors
//   flowlab::Tensor x = flowlab::Tensor::from_vector({2, 2}, {0.5, 0.2, -1.0, 0.4});
//   flowlab::Tensor lp = m.log_prob(x);                           // [2], nats
//   flowlab::Rng rng(42);
//   flowlab::Tensor xs = m.sample(1000, rng);                     // [1000, 2]
//
// load() does what `flowlab eval` does: it reads the run's config.json (load_run_config), loads
// the plugins the run used (looked up in options.plugin_dirs, $FLOWLAB_PLUGIN_PATH, flowlab's
// own plugin directory, then the directories config.json recorded for them), builds the
// model and loads the newest checkpoint's weights, the parameter average (EMA) when the run kept
// one. The input shapes come from config.json, so the data files are not read until data() or
// experiment() asks for the splits the run was trained and evaluated on (a run directory from
// before config.json recorded the shapes has its dataset read at load).
//
// Errors are flowlab::Error subclasses (errors.hpp): IoError for a missing run directory or a
// bad checkpoint, ConfigError, PluginError, ShapeError for input of the wrong shape.
//
// A Model is movable, not copyable, and not thread-safe: use one per thread. Its methods
// build no autodiff graph.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "flowlab/dataset.hpp"
#include "flowlab/params.hpp"
#include "flowlab/registry.hpp"
#include "flowlab/rng.hpp"
#include "flowlab/tensor.hpp"

namespace flowlab {

class Flow;
struct Experiment;

struct ModelOptions {
    std::vector<std::string> plugin_dirs;  // searched first for the run's plugins (like --plugin-dir)
    std::vector<std::string> plugins;      // more plugins to load, names or paths (like --plugin)
    std::vector<std::string> overrides;    // "key.path=value" applied to the run's config (like --set)
    bool prefer_ema = true;                // the checkpoint's parameter average when it has one
};

// A transformed batch and log|det| of the Jacobian of the map that produced it, [batch].
struct Transformed {
    Tensor value;
    Tensor log_det;
};

class Model {
public:
    // A run directory (its newest checkpoint) or one checkpoint file inside a run directory
    // (RUN_DIR/checkpoints/step-*.safetensors).
    static Model load(const std::string& run_dir_or_checkpoint, const ModelOptions& options = {});

    Model(Model&&) noexcept;
    Model& operator=(Model&&) noexcept;
    ~Model();

    // log p(x) in nats, [batch], for x of shape [batch, event_shape...]. Any floating dtype is
    // accepted (converted to the model's). For a model with a dequantizer (image data), x is in
    // the dequantized space the flow was trained on, like sample()'s output.
    Tensor log_prob(const Tensor& x, const Tensor& context = Tensor());
    // n samples [n, event_shape...]; temperature scales the base distribution.
    Tensor sample(std::int64_t n, Rng& rng, double temperature = 1.0, const Tensor& context = Tensor());
    // data -> latent: {z, log|det dz/dx|}.
    Transformed inverse(const Tensor& x, const Tensor& context = Tensor());
    // latent -> data: {x, log|det dx/dz|}; z is shaped as inverse() returns it.
    Transformed forward(const Tensor& z, const Tensor& context = Tensor());

    const Shape& event_shape() const;    // one example, without the batch dimension
    const Shape& context_shape() const;  // empty unless the model is conditional
    DType dtype() const;                 // of the data the model takes and returns
    std::int64_t num_parameters() const;
    const Params& config() const;        // the run's resolved experiment (config.json's "config")
    const std::string& run_dir() const;
    const std::string& checkpoint() const;  // the file the weights came from
    const std::vector<PluginRecord>& plugins() const;  // the plugins loaded for it
    const Dataset& data() const;         // the run's dataset: train, valid and test splits

    // The pieces underneath, for what the methods above do not cover (the command line's
    // eval and sample use them). The experiment's optimizer and schedule are not kept (null).
    Flow& flow();
    Experiment& experiment();

private:
    struct Impl;
    explicit Model(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// Where the plugins of a run are looked up: `first`, then the default plugin directories
// (default_plugin_dirs()), then the directories of the plugins the run loaded, as its
// config.json records them (so a run that used an out-of-tree plugin needs no --plugin-dir
// again). Directories that do not exist are left out of the last group.
std::vector<std::string> run_plugin_dirs(const std::string& run_dir, const std::vector<std::string>& first = {});

// A run directory and the checkpoint to load from `run_dir_or_checkpoint`: a checkpoint file
// gives its run directory (two levels up) and itself, a run directory its newest checkpoint.
// Throws IoError when there is no such path or the run has no checkpoint.
struct RunCheckpoint {
    std::string run_dir, checkpoint;
};
RunCheckpoint find_run_checkpoint(const std::string& run_dir_or_checkpoint);

}  // namespace flowlab
