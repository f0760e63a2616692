// Network: a graph of registered ops (op.hpp) built from JSON, and the executor that runs it.
// The `graph` conditioner is one; a ResNet or a gated network is a JSON block, not a plugin:
//
//   {"nodes": [
//      {"name": "h1", "type": "linear", "inputs": ["x"], "out": 128},
//      {"name": "a1", "type": "relu",   "inputs": ["h1"]},
//      {"name": "h2", "type": "linear", "inputs": ["a1"], "out": 128},
//      {"name": "r",  "type": "add",    "inputs": ["a1", "h2"]},
//      {"name": "o",  "type": "linear", "inputs": ["r"], "out": "auto"}],
//    "output": "o"}
//
// A node: "name" (unique, letters, digits, '_' and '-'; its parameters are checkpointed as
// NAME.weight, ...), "type" (a registered op, as every registered kind names its type),
// "inputs" (names of nodes or of the network's inputs, e.g. "x" and "context") and the op's
// parameters. Nodes may be listed in any order. "output" names the node whose result the network
// returns.
//
// Everything is checked when the network is built, each error a ConfigError that starts with
// the JSON pointer of the node or field at fault and ends with a hint: unknown ops (did you
// mean), duplicate names, inputs that name nothing, cycles (naming the nodes), nodes or inputs
// whose result never reaches the output, shapes that do not fit (each op infers its output
// shape), a missing output. Running then looks nothing up: a precomputed schedule over a vector
// of Vars, with activations fused into the op before them where that op accepts (linear ->
// linear_relu, conv2d with its ReLU) and images kept channels-last between ops that can take it.
//
// Kept light on purpose (no JSON, oneDNN or Boost): it is included wherever conditioners are.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "flowlab/module.hpp"
#include "flowlab/params.hpp"
#include "flowlab/rng.hpp"

namespace flowlab {

class Registry;

struct NetworkInput {
    std::string name;
    Shape shape;  // per sample
};

class Network : public Module {
public:
    // def: a Params object {"nodes": [...], "output": "name"} (other keys are ignored: a
    // conditioner passes its own object). inputs: the graph's named inputs in call order (a
    // conditioner's are "x" and, for a conditional flow, "context"). out_numel > 0: the output
    // must have that many values per sample ("auto" sizes of the output node resolve to it);
    // 0: free. zero_init_output: the output node starts with zero parameters; when it has none
    // (e.g. a final gate or flatten), the nearest node with parameters up the chain of
    // single-input nodes that leads to it is zeroed instead (which zeroes the output only if the
    // ops after it map 0 to 0: gate, flatten, slice, relu, tanh and elu do, sigmoid and softplus
    // do not); ConfigError when there is no such node.
    Network(const Params& def, std::vector<NetworkInput> inputs, std::int64_t out_numel, bool zero_init_output,
            const Registry& registry, Rng& rng);
    ~Network() override;

    const Shape& output_shape() const;
    // Same order as the constructor's inputs; each [B, shape...] (or [B, anything with the same
    // number of values], reshaped). Returns [B, output_shape()...].
    Var operator()(const std::vector<Var>& inputs);

    const std::vector<NetworkInput>& inputs() const;
    std::int64_t out_numel() const;
    // What runs, one line per step in order, for tests and `--profile` readers, e.g.
    // "h1 = linear+relu(x)", "c2 = conv2d+relu(c1) [nhwc]", "o = to_nchw(c3)".
    std::vector<std::string> schedule() const;

    struct Impl;  // the ops and the plan (network.cpp)

private:
    std::unique_ptr<Impl> impl_;
};

// model.networks: {"name": {"nodes": [...], "output": "..."}, ...}, definitions that conditioners
// refer to by name ({"type": "graph", "network": "name"}). Each definition is checked for what can
// be checked without shapes when the library is built (keys, names, dangling inputs, cycles,
// unused nodes); the rest when a layer builds it.
class NetworkLibrary {
public:
    NetworkLibrary() = default;  // no definitions
    explicit NetworkLibrary(const Params& networks);

    bool contains(const std::string& name) const;
    std::vector<std::string> names() const;
    // The definition of `name`; a ConfigError at `where` naming the known ones (did you mean)
    // otherwise.
    const Params& definition(const std::string& name, const std::string& where) const;

    // A network of its own (fresh parameters drawn from rng).
    std::shared_ptr<Network> build(const std::string& name, const std::string& where, std::vector<NetworkInput> inputs,
                                   std::int64_t out_numel, bool zero_init_output, const Registry& registry,
                                   Rng& rng) const;
    // The one instance of `name` that every caller shares (one set of parameters): built, from
    // rng, by the first call; later calls must ask for the same inputs and output size (else a
    // ConfigError at `where` naming both uses) and get the same instance; their rng is not used,
    // nor their zero_init_output.
    std::shared_ptr<Network> shared(const std::string& name, const std::string& where, std::vector<NetworkInput> inputs,
                                    std::int64_t out_numel, bool zero_init_output, const Registry& registry, Rng& rng);

private:
    struct Shared {
        std::shared_ptr<Network> net;
        std::string where;  // the first use
    };
    std::map<std::string, Params> defs_;
    std::map<std::string, Shared> shared_;
};

}  // namespace flowlab
