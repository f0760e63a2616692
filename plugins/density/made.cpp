// MADE: degrees, the masked-weight op, the network and the `made` conditioner. The incremental
// solver and its adjoint are in made_solver.cpp.
#include "made.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <flowlab/errors.hpp>
#include <flowlab/parallel.hpp>
#include <flowlab/registry.hpp>

#include "density.hpp"

namespace flowlab::density {

// ------------------------------------------------------------------------------ masked weight

Var masked_weight(const Var& w, const DegreePtr& deg_in, const DegreePtr& deg_out, bool strict) {
    // The masked entries never influence the output, so instead of writing a fresh W*M every
    // forward (a read and a write of every weight, plus a fresh allocation), W itself is
    // projected onto the mask in place: a read-only scan that finds nothing to fix after the
    // first call (the gradient of a masked entry is 0, so optimizers keep it at 0). Something
    // that writes into the weights from outside (a checkpoint, a perturbation) is fixed on the
    // next forward. The op's value is W's own storage; its backward masks the gradient.
    Var wv = w;
    Tensor& t = wv.mutable_value();
    const std::int64_t rows = t.size(0), cols = t.size(1);
    if (static_cast<std::int64_t>(deg_in->size()) != rows || static_cast<std::int64_t>(deg_out->size()) != cols)
        throw ShapeError("made: weight " + shape_str(t.shape()) + " does not match its degree vectors (" +
                         std::to_string(deg_in->size()) + " in, " + std::to_string(deg_out->size()) + " out)");
    const std::int32_t shift = strict ? 1 : 0;
    // Row j keeps column k iff deg_out[k] >= deg_in[j] + shift; zero the others in `data`.
    auto apply = [rows, cols, deg_in, deg_out, shift](auto tag, auto* data, bool scan_first) {
        using T = decltype(tag);
        const std::int32_t* dout = deg_out->data();
        parallel_for(rows, row_grain(cols), [&](std::int64_t r0, std::int64_t r1) {
            for (std::int64_t j = r0; j < r1; ++j) {
                const std::int32_t thr = (*deg_in)[static_cast<std::size_t>(j)] + shift;
                T* d = data + j * cols;
                if (scan_first) {
                    int bad = 0;
                    for (std::int64_t k = 0; k < cols; ++k) bad |= static_cast<int>(dout[k] < thr) & static_cast<int>(d[k] != T(0));
                    if (!bad) continue;
                }
                for (std::int64_t k = 0; k < cols; ++k) d[k] = dout[k] >= thr ? d[k] : T(0);
            }
        });
    };
    dispatch(t.dtype(), [&](auto tag) {
        using T = decltype(tag);
        apply(tag, t.data<T>(), true);
    });
    return make_op("made_masked_weight", t, {w}, [apply](const Tensor& gy, const Tensor&, GradSink& sink) {
        if (!sink.needs(0)) return;
        // The output gradient belongs to this node alone: mask it in place and hand it over.
        Tensor g = gy;
        dispatch(g.dtype(), [&](auto tag) {
            using T = decltype(tag);
            apply(tag, g.data<T>(), false);
        });
        sink.add(0, g);
    });
}

// ------------------------------------------------------------------------------------ network

// Named (not anonymous) so that the unit tests can compile this file into their binary
// without -Wsubobject-linkage noise; the plugin's symbols are hidden anyway.
namespace made_detail {

std::vector<std::int32_t> input_degrees(const MadeConfig& cfg) {
    const std::int64_t D = cfg.dim;
    std::vector<std::int32_t> deg(static_cast<std::size_t>(D));
    if (cfg.order == "natural") {
        std::iota(deg.begin(), deg.end(), 1);
    } else if (cfg.order == "reverse") {
        for (std::int64_t i = 0; i < D; ++i) deg[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(D - i);
    } else if (cfg.order == "random") {
        Rng r(cfg.order_seed);
        auto p = r.permutation(D);
        for (std::int64_t i = 0; i < D; ++i)
            deg[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(p[static_cast<std::size_t>(i)] + 1);
    } else {
        throw ConfigError("made: unknown order '" + cfg.order + "'; expected natural, reverse or random");
    }
    return deg;
}

}  // namespace made_detail
using namespace made_detail;

Made::Made(const MadeConfig& cfg, Rng& init) : cfg_(cfg) {
    const std::int64_t D = cfg.dim, P = cfg.params_per_dim;
    if (D < 1) throw ShapeError("made: needs at least one input feature");
    if (P < 1) throw ConfigError("made: needs at least one output per input");
    if (cfg.activation != "relu" && cfg.activation != "tanh")
        throw ConfigError("made: unknown activation '" + cfg.activation + "'; expected relu or tanh");
    tanh_ = cfg.activation == "tanh";
    degrees_.push_back(std::make_shared<const DegreeVec>(input_degrees(cfg)));
    const std::int32_t mod = static_cast<std::int32_t>(std::max<std::int64_t>(1, D - 1));
    const std::int32_t off = static_cast<std::int32_t>(std::min<std::int64_t>(1, D - 1));
    for (std::int64_t h : cfg.hidden) {
        if (h < 1) throw ConfigError("made: hidden widths must be >= 1, got " + std::to_string(h));
        DegreeVec d(static_cast<std::size_t>(h));
        for (std::int64_t k = 0; k < h; ++k) d[static_cast<std::size_t>(k)] = static_cast<std::int32_t>(k % mod) + off;
        degrees_.push_back(std::make_shared<const DegreeVec>(std::move(d)));
    }
    DegreeVec dout(static_cast<std::size_t>(P * D));
    for (std::int64_t p = 0; p < P; ++p)
        for (std::int64_t i = 0; i < D; ++i)
            dout[static_cast<std::size_t>(p * D + i)] = (*degrees_[0])[static_cast<std::size_t>(i)];
    degrees_.push_back(std::make_shared<const DegreeVec>(std::move(dout)));

    for (std::size_t l = 0; l + 1 < degrees_.size(); ++l) {
        const DegreeVec& din = *degrees_[l];
        const DegreeVec& dout = *degrees_[l + 1];
        const std::int32_t shift = l + 2 == degrees_.size() ? 1 : 0;  // the output layer is strict
        supports_.push_back(WeightSupport::from_mask(
            static_cast<std::int64_t>(din.size()), static_cast<std::int64_t>(dout.size()),
            [&](std::int64_t j, std::int64_t k) {
                return dout[static_cast<std::size_t>(k)] >= din[static_cast<std::size_t>(j)] + shift;
            }));
    }

    // PyTorch's nn.Linear init, U(+-1/sqrt(fan_in)) for weights and biases; the context block
    // counts towards the first layer's fan-in. The output layer starts at zero on request.
    const std::size_t n_layers = degrees_.size() - 1;
    for (std::size_t l = 0; l < n_layers; ++l) {
        const auto in = static_cast<std::int64_t>(degrees_[l]->size());
        const auto out = static_cast<std::int64_t>(degrees_[l + 1]->size());
        const std::int64_t fan_in = in + (l == 0 ? cfg.context : 0);
        const bool zero = cfg.zero_init_last && l + 1 == n_layers;
        const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
        Tensor w = Tensor::zeros({in, out});
        Tensor b = Tensor::zeros({out});
        Tensor wc;
        if (l == 0 && cfg.context > 0) wc = Tensor::zeros({cfg.context, out});
        if (!zero) {
            init.fill_uniform(w, -bound, bound);
            if (wc.defined()) init.fill_uniform(wc, -bound, bound);
            init.fill_uniform(b, -bound, bound);
        }
        const std::string name = "layer" + std::to_string(l);
        weights_.push_back(add_parameter(name + ".weight", std::move(w)));
        biases_.push_back(add_parameter(name + ".bias", std::move(b)));
        if (wc.defined()) ctx_weight_ = add_parameter("context.weight", std::move(wc));
    }
}

Var Made::operator()(const Var& x, const Var& context) const {
    const std::int64_t B = x.size(0);
    Var h = x.value().dim() == 2 ? x : reshape(x, {B, -1});
    if (h.size(1) != cfg_.dim)
        throw ShapeError("made: input " + shape_str(x.shape()) + ", expected " + std::to_string(cfg_.dim) +
                         " features per sample");
    const std::size_t n = weights_.size();
    for (std::size_t l = 0; l < n; ++l) {
        Var wm = masked_weight(weights_[l], degrees_[l], degrees_[l + 1], l + 1 == n);
        // The ReLU runs in the GEMM's epilogue unless a context term is added first.
        const bool fused_relu = l + 1 < n && !tanh_ && !(l == 0 && cfg_.context > 0);
        Var pre = block_sparse_linear(h, wm, biases_[l], supports_[l], fused_relu);
        if (l == 0 && cfg_.context > 0) {
            if (!context.defined()) throw ShapeError("made: built for a context, but none was given");
            Var c = context.value().dim() == 2 ? context : reshape(context, {B, -1});
            if (c.size(1) != cfg_.context)
                throw ShapeError("made: context " + shape_str(context.shape()) + ", expected " +
                                 std::to_string(cfg_.context) + " features per sample");
            pre = pre + linear(c, ctx_weight_);
        }
        h = l + 1 < n && !fused_relu ? (tanh_ ? tanh(pre) : relu(pre)) : pre;
    }
    return h;
}

// ------------------------------------------------------------------------ `made` conditioner

namespace made_detail {

class MadeConditioner final : public Conditioner {
public:
    MadeConditioner(const Params& p, const ConditionerSpec& spec, Rng& rng) : out_shape_(spec.out_shape) {
        MadeConfig cfg;
        cfg.dim = numel(spec.in_shape);
        const std::int64_t out = numel(spec.out_shape);
        if (cfg.dim < 1 || out % cfg.dim != 0)
            throw ShapeError("made conditioner: the output " + shape_str(spec.out_shape) +
                             " must hold a whole number of values per input feature (input " +
                             shape_str(spec.in_shape) + ")");
        cfg.params_per_dim = out / cfg.dim;
        cfg.context = numel(spec.context_shape) * (spec.context_shape.empty() ? 0 : 1);
        cfg.hidden = p.get_int_list("hidden");
        cfg.order = p.get_string("order");
        const std::int64_t seed = p.get_int("seed");
        cfg.order_seed = seed >= 0 ? static_cast<std::uint64_t>(seed) : rng.next_u64();
        cfg.activation = p.get_string("activation");
        cfg.zero_init_last = spec.zero_init_last;
        made_ = std::make_unique<Made>(cfg, rng);
        add_child("made", made_.get());
    }

    Var operator()(const Var& x, const Var& context) override {
        const std::int64_t B = x.size(0);
        Var h = (*made_)(x.value().dim() == 2 ? x : reshape(x, {B, -1}), context);
        if (out_shape_.size() == 1) return h;
        return reshape(h, with_batch(B, out_shape_));
    }

private:
    Shape out_shape_;
    std::unique_ptr<Made> made_;
};

}  // namespace made_detail
using namespace made_detail;

Schema made_schema(std::vector<std::int64_t> hidden_default) {
    return {
        param_int_list("hidden", std::move(hidden_default), "widths of the masked hidden layers (any number, may be empty)"),
        param_string("order", "natural", "input order: natural (1..D), reverse (D..1) or random (seeded)")
            .choices({"natural", "reverse", "random"}),
        param_int("seed", -1, "seed of the random order; -1 = drawn from the model's init seed").min(-1),
        param_string("activation", "relu", "nonlinearity of the hidden layers").choices({"relu", "tanh"}),
    };
}

void register_made(Registry& reg) {
    reg.add_conditioner({"made",
                         "masked MLP (MADE): output block p*D+i sees only the inputs before i in the order; "
                         "context enters unmasked",
                         made_schema({128, 128}),
                         [](const Params& p, const ConditionerSpec& s, Rng& rng) -> std::unique_ptr<Conditioner> {
                             return std::make_unique<MadeConditioner>(p, s, rng);
                         }});
}

}  // namespace flowlab::density
