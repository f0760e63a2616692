// The graph builder: a validated experiment (config.hpp) and the loaded plugins' registry
// become live objects - data, flow, optimizer, schedule. Shapes are inferred node by node and
// the first error names the node's JSON pointer. Implemented in core/src/graph/builder.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "flowlab/dataset.hpp"
#include "flowlab/flow.hpp"
#include "flowlab/optimizer.hpp"
#include "flowlab/params.hpp"
#include "flowlab/registry.hpp"

namespace flowlab {

// Builds the flow of `model` (the experiment's "model" object) for data of `event_shape`.
// Shapes are inferred layer by layer; the first error names the node's JSON pointer.
std::unique_ptr<Flow> build_flow(const Params& model, const Shape& event_shape,
                                 const Shape& context_shape, const Registry& registry, Rng& rng);

struct Experiment {
    Params config;  // validated, defaults filled
    Dataset data;
    std::unique_ptr<Flow> flow;
    std::unique_ptr<Optimizer> optimizer;
    std::unique_ptr<Schedule> schedule;
};

// The experiment with every slot it left to the plugins (model.base, train.optimizer,
// train.schedule: null) filled with the loaded plugins' defaults (Registry::set_default).
Params resolve_defaults(const Params& config, const Registry& registry);
// Builds data, flow, optimizer and schedule; exp.config is the config with defaults resolved.
Experiment build_experiment(const Params& config, const Registry& registry);
// The same for a registry loaded from the plugin directories `plugin_dirs`: a type that no
// loaded plugin registers is an UnknownTypeError that also names the plugins in those
// directories that provide it ("add 'density' to plugins").
Experiment build_experiment(const Params& config, const Registry& registry, const std::vector<std::string>& plugin_dirs);
// The dataset of `config` (defaults resolved); ConfigError when it has no training examples.
Dataset load_dataset(const Params& config, const Registry& registry);
// Flow, optimizer and schedule for data of the given shapes, without loading the dataset:
// exp.data holds the shapes only. The same model as build_experiment's, for a trained model
// whose weights are loaded next (flowlab::Model::load).
Experiment build_model(const Params& config, const Registry& registry, const Shape& event_shape,
                       const Shape& context_shape, const std::vector<std::string>& plugin_dirs = {});

// The experiment `config` with its model in the graph form, as JSON text: a "layers" list expanded
// into named nodes (repeat blocks unrolled, each split's tail reading its kept output), a graph
// as written. What `flowlab validate --emit-graph` prints and a run directory's config.json
// records; building it gives the same model, parameter names included (docs/GRAPHS.md).
std::string config_in_graph_form(const Params& config, int indent = 2);

// The built flow of `config` as a Graphviz DOT digraph: one box per node (type, parameters), the
// tensors on the edges with their per-sample shapes, the outputs with their bases, and each
// node's conditioner nested in a cluster (a `graph` conditioner op by op). Written by
// `flowlab validate --dot FILE` and into the run directory (architecture.dot).
std::string flow_dot(const Params& config, const Flow& flow);

}  // namespace flowlab
