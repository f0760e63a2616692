// Building a flow's graph (graph/graph_spec.hpp) into the runnable FlowGraph. Internal to the core.
#pragma once

#include <memory>
#include <vector>

#include "flowlab/flow.hpp"
#include "flowlab/registry.hpp"
#include "graph/graph_spec.hpp"

namespace flowlab {
struct FlowGraph;
class NetworkLibrary;
}  // namespace flowlab

namespace flowlab::graph {

struct BuiltGraph {
    std::unique_ptr<FlowGraph> graph;
    std::vector<LayerInfo> info;  // per step
};

// Nodes, outputs and the outputs' own bases; the shared base (over the outputs without one,
// FlowGraph::shared_shape) is left to the caller, which knows the model's default.
BuiltGraph build_graph(const GraphSpec& spec, const Params& model, const Shape& event_shape, const Shape& context_shape,
                       const Registry& registry, Rng& rng, NetworkLibrary* networks);

// Whether some output has no base of its own (so the model needs "base").
bool needs_shared_base(const GraphSpec& spec);

}  // namespace flowlab::graph
