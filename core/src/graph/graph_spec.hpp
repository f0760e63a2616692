// The graph form of a flow, as data: named nodes over named tensors, and the outputs that form
// the latent. Both ways of writing a flow end here - the list form ("layers", with repeat blocks
// and splits) expands into it, the graph form ("graph") is read into it - and the builder builds
// only from it. Internal to the core; docs/GRAPHS.md describes the format.
//
// Tensors are named "x" (the data), "context" (the flow's context, when it has one), a node's
// name (its only output) or "name:i" (output i of a split or slice).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "flowlab/params.hpp"

namespace flowlab::graph {

inline constexpr const char* kInputTensor = "x";
inline constexpr const char* kContextTensor = "context";

// On the first node of a repeat block's second repetition: the block, its count and the index of
// its first node, so the builder can check what all repetitions would cost once it has built one.
struct RepeatMark {
    Params block;
    std::int64_t count = 0;
    std::size_t first_node = 0;
};

struct NodeSpec {
    std::string name;
    std::string type;                   // a bijector, or "split", "slice", "concat", "network"
    Params params;                      // the node without its graph keys, located where it was written
    std::vector<std::string> inputs;    // data tensors it reads (a network: the context tensor it encodes)
    std::optional<std::string> context; // nullopt: the flow's context, if any; "": none
    std::string pointer;                // where the node is written (a list item for the list form)
    std::optional<RepeatMark> repeat;
};

struct OutputSpec {
    std::string tensor;
    std::optional<Params> base;  // its own base distribution; nullopt: the shared model.base
    std::string given;           // what its own base is conditioned on ("": the flow's context)
    std::string pointer;
};

struct GraphSpec {
    std::vector<NodeSpec> nodes;
    std::vector<OutputSpec> outputs;
    std::string file;     // the config file, for messages
    bool from_list = false;
};

// The graph of a validated model object, in either form (exactly one of "layers" and "graph").
GraphSpec model_graph(const Params& model);

// The canonical graph form: {"nodes": [...], "outputs": [...]} - what `flowlab validate
// --emit-graph` prints and a run directory's config.json records. Building it gives the model
// the spec describes, parameter names included.
nlohmann::json graph_to_json(const GraphSpec& spec);

// The experiment `config` (any form) with its model in the graph form.
nlohmann::json config_in_graph_form(const Params& config);

}  // namespace flowlab::graph
