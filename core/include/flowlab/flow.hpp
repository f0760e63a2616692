// Flow: a graph of bijective nodes from the data to the named outputs that form the latent, the
// base distributions over those outputs, and an optional dequantizer; built from the config by
// the builder (builder.hpp). A chain of layers is the common case of the graph.
//   log p(x) = log p0(z) + sum_k log|det dz_k/dz_{k-1}|, z = inverse(x)
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "flowlab/bijector.hpp"
#include "flowlab/dequantizer.hpp"
#include "flowlab/distribution.hpp"

namespace flowlab {

// One node of the built graph, in the order the data -> latent pass runs them.
struct LayerInfo {
    std::string pointer;  // JSON pointer of the node in the config
    std::string type;
    Shape in_shape, out_shape;  // of its first input and first output
    std::int64_t num_parameters = 0;
    // Where the type comes from: the plugin's name and file ("" for the core's graph nodes:
    // split, slice, concat, network).
    std::string plugin, plugin_path;
    std::string name;                 // the node's name in the graph form
    std::vector<std::string> inputs;  // the tensors it reads
    std::string context;              // the context tensor it reads ("" none)
    std::vector<Shape> out_shapes;    // every output's shape
};

struct FlowGraph;

class Flow : public Module {
public:
    Flow(std::unique_ptr<FlowGraph> graph, std::vector<LayerInfo> info, std::unique_ptr<Dequantizer> dequantizer,
         Shape event_shape, Shape context_shape);
    ~Flow() override;

    // data -> latent through every node; the latent is the outputs in order (flattened and
    // concatenated when there are several); log_det summed [batch].
    FlowResult inverse(const Var& x, const Var& context = Var());
    // latent -> data.
    FlowResult forward(const Var& z, const Var& context = Var());
    // log p(x) [batch] for continuous x.
    Var log_prob(const Var& x, const Var& context = Var());
    // n samples from the model; temperature scales the base distribution.
    Tensor sample(std::int64_t n, Rng& rng, double temperature = 1.0, const Tensor& context = Tensor());
    // Data-dependent initialisation of every layer that has one, on one batch.
    void data_init(const Tensor& x, const Tensor& context = Tensor());

    const Shape& event_shape() const { return event_shape_; }
    const Shape& context_shape() const { return context_shape_; }
    const std::vector<LayerInfo>& layer_info() const { return info_; }
    // Parameters of the base distributions (the shared one and the outputs' own).
    std::int64_t base_num_parameters() const;
    Dequantizer* dequantizer() { return dequantizer_.get(); }
    // The built graph (core/src/model/flow_graph.hpp; internal to the core).
    const FlowGraph& graph() const { return *graph_; }

private:
    std::vector<Var> run_inverse(const Var& x, const Var& context, Var& log_det, bool data_init);
    Var latent(const std::vector<Var>& slots) const;

    std::unique_ptr<FlowGraph> graph_;
    std::vector<LayerInfo> info_;
    std::unique_ptr<Dequantizer> dequantizer_;
    Shape event_shape_, context_shape_;
};

}  // namespace flowlab
