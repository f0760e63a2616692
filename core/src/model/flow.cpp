#include "flowlab/flow.hpp"

#include "flowlab/errors.hpp"

namespace flowlab {

Flow::Flow(std::vector<std::unique_ptr<Bijector>> layers, std::vector<LayerInfo> info,
           std::unique_ptr<BaseDistribution> base, std::unique_ptr<Dequantizer> dequantizer,
           Shape event_shape, Shape context_shape)
    : layers_(std::move(layers)),
      info_(std::move(info)),
      base_(std::move(base)),
      dequantizer_(std::move(dequantizer)),
      event_shape_(std::move(event_shape)),
      context_shape_(std::move(context_shape)) {
    if (!base_) throw ConfigError("flow: no base distribution");
    for (std::size_t i = 0; i < layers_.size(); ++i) add_child("layers." + std::to_string(i), layers_[i].get());
    add_child("base", base_.get());
    if (dequantizer_) add_child("dequantizer", dequantizer_.get());
}

FlowResult Flow::inverse(const Var& x, const Var& context) {
    Var h = x;
    Var log_det;
    for (auto& layer : layers_) {
        FlowResult r = layer->inverse(h, context);
        h = r.out;
        log_det = log_det.defined() ? log_det + r.log_det : r.log_det;
    }
    if (!log_det.defined()) log_det = Var(Tensor::zeros({x.size(0)}, x.dtype()));
    return {h, log_det};
}

FlowResult Flow::forward(const Var& z, const Var& context) {
    Var h = z;
    Var log_det;
    for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) {
        FlowResult r = (*it)->forward(h, context);
        h = r.out;
        log_det = log_det.defined() ? log_det + r.log_det : r.log_det;
    }
    if (!log_det.defined()) log_det = Var(Tensor::zeros({z.size(0)}, z.dtype()));
    return {h, log_det};
}

Var Flow::log_prob(const Var& x, const Var& context) {
    FlowResult r = inverse(x, context);
    return base_->log_prob(r.out, context) + r.log_det;
}

Tensor Flow::sample(std::int64_t n, Rng& rng, double temperature, const Tensor& context) {
    NoGradGuard guard;
    Tensor z = base_->sample(n, rng, temperature, context);
    Var ctx = context.defined() ? Var(context) : Var();
    return forward(Var(z), ctx).out.value();
}

void Flow::data_init(const Tensor& x, const Tensor& context) {
    NoGradGuard guard;
    Var h(x);
    Var ctx = context.defined() ? Var(context) : Var();
    for (auto& layer : layers_) h = layer->data_init(h, ctx);
}

}  // namespace flowlab
