// Run-time layer checks (layer_check.hpp), and the trainer's use of them: the batch it checks
// on, and the message that stops a run.
#include "flowlab/layer_check.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "flowlab/errors.hpp"
#include "model/flow_graph.hpp"
#include "train/trainer_internal.hpp"

namespace flowlab {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Evaluation mode for the guard's lifetime (batch norm uses its running statistics and updates
// nothing), then the mode the module had.
class EvalMode {
public:
    explicit EvalMode(Module& m) : m_(m), was_(m.training()) { m_.set_training(false); }
    ~EvalMode() { m_.set_training(was_); }
    EvalMode(const EvalMode&) = delete;
    EvalMode& operator=(const EvalMode&) = delete;

private:
    Module& m_;
    bool was_;
};

// Clears rows[i] where row i of t ([B, ...]) holds a non-finite value.
void keep_finite_rows(const Tensor& t, std::vector<char>& rows) {
    const Tensor d = t.to(DType::f64);
    const std::int64_t b = d.size(0), per = b > 0 ? d.numel() / b : 0;
    const double* p = d.data<double>();
    for (std::int64_t i = 0; i < b; ++i)
        for (std::int64_t j = 0; j < per && rows[static_cast<std::size_t>(i)]; ++j)
            if (!std::isfinite(p[i * per + j])) rows[static_cast<std::size_t>(i)] = 0;
}

struct Worst {
    double err = 0.0;
    std::int64_t row = -1;
};

// The worst |sign * a - b| / max(1, |b|) over the rows admitted; a non-finite `a` is infinite.
Worst worst_relative(const Tensor& a_in, const Tensor& b_in, double sign, const std::vector<char>& rows) {
    if (a_in.shape() != b_in.shape())
        throw ShapeError("shapes " + shape_str(a_in.shape()) + " and " + shape_str(b_in.shape()) + " differ");
    const Tensor a = a_in.to(DType::f64), b = b_in.to(DType::f64);
    const std::int64_t n = a.size(0), per = n > 0 ? a.numel() / n : 0;
    const double *pa = a.data<double>(), *pb = b.data<double>();
    Worst w;
    for (std::int64_t i = 0; i < n; ++i) {
        if (!rows[static_cast<std::size_t>(i)]) continue;
        for (std::int64_t j = 0; j < per; ++j) {
            const double va = sign * pa[i * per + j], vb = pb[i * per + j];
            const double e = std::isfinite(va) ? std::fabs(va - vb) / std::max(1.0, std::fabs(vb)) : kInf;
            if (e > w.err) w = {e, i};
        }
    }
    return w;
}

struct Checked {
    std::optional<LayerCheckFailure> failure;
    Var out;  // the layer's inverse output: the next layer's input
};

Checked check_layer(Bijector& layer, const Var& h, const Var& context, std::size_t index, const LayerCheckTolerances& tol) {
    Checked c;
    try {
        const FlowResult inv = layer.inverse(h, context);
        c.out = inv.out;
        std::vector<char> rows(static_cast<std::size_t>(h.size(0)), 1);
        keep_finite_rows(h.value(), rows);
        keep_finite_rows(inv.out.value(), rows);
        keep_finite_rows(inv.log_det.value(), rows);
        const FlowResult fwd = layer.forward(inv.out, context);
        const Worst rt = worst_relative(fwd.out.value(), h.value(), 1.0, rows);
        const Worst ld = worst_relative(fwd.log_det.value(), inv.log_det.value(), -1.0, rows);
        if (!(rt.err <= tol.round_trip))
            c.failure = LayerCheckFailure{index, "round_trip", rt.err, tol.round_trip, rt.row,
                                          "forward(inverse(x)) differs from x (the two directions are not inverses)"};
        else if (!(ld.err <= tol.log_det))
            c.failure = LayerCheckFailure{index, "log_det_cancel", ld.err, tol.log_det, ld.row,
                                          "the inverse log-det is not minus the forward one (a sign, or a term "
                                          "missing in one direction)"};
    } catch (const std::exception& e) {
        c.failure = LayerCheckFailure{index, "error", kInf, 0.0, -1, std::string("the layer threw: ") + e.what()};
    }
    return c;
}

std::string short_number(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

}  // namespace

std::optional<LayerCheckFailure> check_flow_layers(Flow& flow, const Tensor& x, const Tensor& context,
                                                   const LayerCheckTolerances& tolerances) {
    NoGradGuard no_grad;
    EvalMode eval(flow);
    // The graph's steps in order; each bijector is checked on what reaches it, the graph's own
    // nodes (split, slice, concat, network) just run.
    const FlowGraph& g = flow.graph();
    std::vector<Var> slots = g.empty_slots(Var(x), context.defined() ? Var(context) : Var());
    Var log_det;
    for (std::size_t k = 0; k < g.steps.size(); ++k) {
        const FlowStep& s = g.steps[k];
        if (s.kind != FlowStep::Kind::bijector) {
            g.run_step(s, slots, log_det, false);
            continue;
        }
        Checked c = check_layer(*s.bijector, slots[s.in[0]], s.context >= 0 ? slots[s.context] : Var(), k, tolerances);
        if (c.failure) return c.failure;
        slots[s.out[0]] = c.out;
    }
    return std::nullopt;
}

namespace train_detail {

// The first training examples (a fixed batch, read without the sampler), dequantised with a
// generator of the check's own: the training's random state is not touched.
void Trainer::check_layers(const char* when) {
    if (!check_layers_) return;
    const DataSplit& tr = exp_.data.train;
    const std::int64_t n = std::min(batch_, tr.size());
    Tensor x = tr.x.rows(0, n), c;
    if (tr.context.defined()) c = tr.context.rows(0, n);
    if (Dequantizer* dq = exp_.flow->dequantizer()) {
        NoGradGuard no_grad;
        EvalMode eval(*exp_.flow);
        Rng noise(0x6c61796572ull, 0);
        x = dq->dequantize(x, noise, c.defined() ? Var(c) : Var()).x.value();
    }
    const auto t0 = std::chrono::steady_clock::now();
    const std::optional<LayerCheckFailure> bad = check_flow_layers(*exp_.flow, x, c);
    layer_check_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!bad) return;
    const std::vector<LayerInfo>& info = exp_.flow->layer_info();
    const LayerInfo& li = info[bad->layer];
    std::string msg = exp_.config.file() + ":" + li.pointer + ": layer " + std::to_string(bad->layer + 1) + " of " +
                      std::to_string(info.size()) + ", '" + li.type + "'" +
                      (li.plugin_path.empty() ? std::string(" (flowlab's own node)")
                                              : " from plugin '" + li.plugin + "' (" + li.plugin_path + ")") +
                      ", fails the layer check at step " + std::to_string(step_) + " (" + when + "): " + bad->detail;
    if (bad->check != "error")
        msg += ": worst relative error " + short_number(bad->worst) + " > tolerance " + short_number(bad->tolerance) +
               " (training example " + std::to_string(bad->row) + ")";
    msg += ". The run stops rather than train on a wrong likelihood; ";
    msg += last_good_.empty() ? "it had written no checkpoint yet. "
                              : "its checkpoints are kept (the newest: " + last_good_ + "). ";
    msg += li.plugin_path.empty() ? "This node is flowlab's own: please report it, with the config"
                                  : "Find the fault with: flowlab check-plugin " + li.plugin_path + " " + li.type;
    throw LayerCheckError(msg + " (train.check_layers: false turns this check off)");
}

}  // namespace train_detail

}  // namespace flowlab
