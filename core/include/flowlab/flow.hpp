// Flow: a base distribution, a chain of bijectors, and an optional dequantizer, built from the
// JSON graph by the builder (builder.hpp).
//   log p(x) = log p0(z) + sum_k log|det dz_k/dz_{k-1}|, z = inverse(x)
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "flowlab/bijector.hpp"
#include "flowlab/dequantizer.hpp"
#include "flowlab/distribution.hpp"

namespace flowlab {

struct LayerInfo {
    std::string pointer;  // JSON pointer of the node in the config
    std::string type;
    Shape in_shape, out_shape;
    std::int64_t num_parameters = 0;
    // Where the type comes from: the plugin's name and file ("" for the core's split node).
    std::string plugin, plugin_path;
};

class Flow : public Module {
public:
    Flow(std::vector<std::unique_ptr<Bijector>> layers, std::vector<LayerInfo> info,
         std::unique_ptr<BaseDistribution> base, std::unique_ptr<Dequantizer> dequantizer,
         Shape event_shape, Shape context_shape);

    // data -> latent through every layer; log_det summed [batch].
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
    std::size_t num_layers() const { return layers_.size(); }
    Bijector& layer(std::size_t i) { return *layers_[i]; }
    const std::vector<LayerInfo>& layer_info() const { return info_; }
    BaseDistribution& base() { return *base_; }
    Dequantizer* dequantizer() { return dequantizer_.get(); }

private:
    std::vector<std::unique_ptr<Bijector>> layers_;
    std::vector<LayerInfo> info_;
    std::unique_ptr<BaseDistribution> base_;
    std::unique_ptr<Dequantizer> dequantizer_;
    Shape event_shape_, context_shape_;
};

}  // namespace flowlab
