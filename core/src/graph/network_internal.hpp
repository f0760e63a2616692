// Internal to the core: the structure of a network definition (network_structure.cpp), which
// Network and NetworkLibrary (network.cpp) build on.
#pragma once

#include <string>
#include <vector>

#include "flowlab/params.hpp"

namespace flowlab::network_detail {

struct NodeDef {
    Params p;
    std::string name;
    std::vector<int> inputs;  // value ids: [0, n_inputs) the network's inputs, n_inputs + i node i
};

struct Structure {
    std::vector<std::string> input_names;
    std::vector<NodeDef> nodes;
    int output = -1;         // node index
    std::vector<int> order;  // node indices, topological (listing order where it already is)
    int n_inputs() const { return static_cast<int>(input_names.size()); }
    // Value v: input v, or node v - n_inputs().
    const std::string& value_name(int v) const {
        if (v < n_inputs()) return input_names[static_cast<std::size_t>(v)];
        return nodes[static_cast<std::size_t>(v - n_inputs())].name;
    }
};

// The structure of a definition {"nodes": [...], "output": ...}, checked without shapes or ops,
// every error a ConfigError naming the JSON pointer at fault: names (valid, unique, not an
// input's), each node's inputs (they name a node or one of input_names), the output, cycles,
// nodes whose result does not reach the output, and, with check_unused_inputs, inputs that do
// not (off for library definitions, whose inputs are not known yet).
Structure analyse(const Params& def, const std::vector<std::string>& input_names, bool check_unused_inputs);

std::string join(const std::vector<std::string>& v, const char* sep = ", ");
// Letters, digits, '_' and '-': a node's name becomes part of its parameters' names.
bool valid_name(const std::string& n);

}  // namespace flowlab::network_detail
