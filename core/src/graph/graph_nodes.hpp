// The node types a flow graph provides itself - split, slice, concat, network - built from a
// node's parameters and input shapes. Internal to the core (graph_build.cpp places them).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "flowlab/registry.hpp"
#include "model/flow_graph.hpp"

namespace flowlab::graph {

// split, slice, concat and network.
bool is_core_node(const std::string& type);

struct CoreNodeContext {
    const Params& params;             // the node without its graph keys
    std::string at;                   // file:/pointer of the node
    const std::vector<Shape>& inputs; // per-sample shapes of what it reads
    const Shape& context_shape;       // of the context it reads (split prior), empty: none
    const Registry& registry;
    Rng& rng;
    NetworkLibrary* networks;
    std::function<std::string(std::size_t)> input_where = {};  // file:/pointer of input j's name
};

struct CoreNode {
    FlowStep::Kind kind = FlowStep::Kind::split;
    std::unique_ptr<Module> module;  // split and network nodes own one
    SplitNode* split = nullptr;
    Network* network = nullptr;
    std::vector<Shape> outs;          // per-sample output shapes
    std::vector<std::int64_t> sizes;  // slice: channels of each output; concat: of each input
};

// ConfigError at the node (its pointer, a hint) for parameters or shapes that do not fit.
CoreNode build_core_node(const std::string& type, const CoreNodeContext& c);

}  // namespace flowlab::graph
