// Conditioner `mlp`: a stack of Linear layers (weight [in, out], bias [out]) with an
// activation between them. The per-sample input is flattened; the context, if the flow has
// one, is flattened and concatenated to it. Initialisation is PyTorch's nn.Linear default
// (weight and bias ~ U(-1/sqrt(in), 1/sqrt(in))), drawn weight then bias, layer by layer;
// the last layer starts at zero when the spec asks (the coupling then starts as the identity).
#include <memory>
#include <string>
#include <vector>

#include <flowlab/ops.hpp>

#include "standard.hpp"

namespace flowlab::standard {
namespace {

class Mlp final : public Conditioner {
public:
    Mlp(const Params& p, const ConditionerSpec& spec, Rng& rng)
        : out_shape_(spec.out_shape), has_context_(!spec.context_shape.empty()) {
        const std::string act = p.get_string("activation");
        act_ = act == "tanh" ? Act::tanh : act == "elu" ? Act::elu : Act::relu;
        std::vector<std::int64_t> widths = {numel(spec.in_shape) + (has_context_ ? numel(spec.context_shape) : 0)};
        for (std::int64_t h : p.get_int_list("hidden")) {
            if (h < 1) throw ConfigError(p.where("hidden") + ": hidden widths must be >= 1, got " + std::to_string(h));
            widths.push_back(h);
        }
        widths.push_back(numel(spec.out_shape));
        for (std::size_t l = 0; l + 1 < widths.size(); ++l) {
            const std::int64_t in = widths[l], out = widths[l + 1];
            const bool zero = spec.zero_init_last && l + 2 == widths.size();
            Tensor w = Tensor::zeros({in, out});
            Tensor b = Tensor::zeros({out});
            init_fan_in_uniform(w, b, in, zero, rng);
            const std::string name = "linear" + std::to_string(l);
            weights_.push_back(add_parameter(name + ".weight", std::move(w)));
            biases_.push_back(add_parameter(name + ".bias", std::move(b)));
        }
    }

    Var operator()(const Var& x, const Var& context) override {
        const std::int64_t B = x.size(0);
        Var h = x.value().dim() == 2 ? x : reshape(x, {B, -1});
        if (has_context_) {
            if (!context.defined()) throw ShapeError("mlp conditioner: built for a context, but none was given");
            h = concat({h, context.value().dim() == 2 ? context : reshape(context, {B, -1})}, 1);
        }
        const std::size_t n = weights_.size();
        if (act_ == Act::relu) return shaped(mlp_stack(h, weights_, biases_), B);  // all layers as one op
        for (std::size_t l = 0; l < n; ++l) {
            h = linear(h, weights_[l], biases_[l]);
            if (l + 1 < n) h = activate(h);
        }
        return shaped(h, B);
    }

private:
    enum class Act { relu, tanh, elu };

    Var shaped(const Var& h, std::int64_t B) const {
        if (out_shape_.size() == 1) return h;
        Shape s = {B};
        s.insert(s.end(), out_shape_.begin(), out_shape_.end());
        return reshape(h, s);
    }

    Var activate(const Var& h) const {
        switch (act_) {
            case Act::tanh: return tanh(h);
            case Act::elu: return elu(h);
            case Act::relu: break;
        }
        return relu(h);
    }

    Shape out_shape_;
    bool has_context_;
    Act act_ = Act::relu;
    std::vector<Var> weights_, biases_;
};

}  // namespace

void register_conditioners(Registry& reg) {
    reg.add_conditioner(
        {"mlp", "fully connected network: Linear layers with an activation between them",
         {param_int_list("hidden", {128, 128}, "widths of the hidden layers (empty = one Linear layer)"),
          param_string("activation", "relu", "nonlinearity between the layers").choices({"relu", "tanh", "elu"})},
         [](const Params& p, const ConditionerSpec& s, Rng& rng) -> std::unique_ptr<Conditioner> {
             return std::make_unique<Mlp>(p, s, rng);
         }});
}

}  // namespace flowlab::standard
