// The bijector conformance suite (see conformance.hpp). Every check turns into one row; an
// exception inside a check fails that row with the exception's text instead of ending the run.
//
// Layers run in f64 where they can (parameters are converted in place), so that the numerical
// checks are tight; a layer that cannot (e.g. it keeps f32 buffers) is checked in f32 with
// looser tolerances, and the rows say so.
#include "flowlab/conformance.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <set>
#include <tuple>
#include <utility>

#include "flowlab/errors.hpp"
#include "flowlab/gradcheck.hpp"
#include "graph/json_internal.hpp"

namespace flowlab {

namespace {

struct Mode {
    DType dtype;
    double round_trip;  // max |error| / max(1, |value|)
    double log_det;     // same, for log-dets
    double jacobian;    // |numeric - analytic| / max(1, |analytic|)
    double jac_eps;
    double grad;        // |a - n| / max(1, |a|, |n|), the gradcheck metric
    double grad_eps;
    double batch;       // row i of two batches that share row i
};

const Mode kF64{DType::f64, 1e-6, 1e-6, 1e-4, 1e-6, 1e-5, 1e-6, 1e-9};
const Mode kF32{DType::f32, 2e-3, 2e-3, 5e-2, 1e-2, 5e-2, 1e-2, 1e-5};

constexpr double kInf = std::numeric_limits<double>::infinity();
// Finite differences on this many elements per tensor at most (chosen at random): the
// analytic gradient is complete anyway, a sample of it is enough to catch a wrong rule.
constexpr std::int64_t kMaxFdElements = 24;
constexpr std::int64_t kMaxJacobianDim = 64;

std::string fmt(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

// max over elements of |a - b| / max(1, |b|); a non-finite element makes it infinite (a plain
// max would skip NaN, hiding exactly the failures this is for).
double rel_err(const Tensor& a, const Tensor& b, const char* what) {
    if (a.shape() != b.shape())
        throw ShapeError(std::string(what) + ": shapes " + shape_str(a.shape()) + " and " + shape_str(b.shape()) +
                         " differ");
    std::vector<double> va = a.to_vector(), vb = b.to_vector();
    double worst = 0.0;
    for (std::size_t i = 0; i < va.size(); ++i) {
        if (!std::isfinite(va[i]) || !std::isfinite(vb[i])) return kInf;
        worst = std::max(worst, std::fabs(va[i] - vb[i]) / std::max(1.0, std::fabs(vb[i])));
    }
    return worst;
}

std::int64_t count_non_finite(const Tensor& t) {
    std::int64_t n = 0;
    for (double v : t.to_vector()) n += std::isfinite(v) ? 0 : 1;
    return n;
}

// What a check reports back to the row.
struct Outcome {
    double worst = 0.0;
    std::string detail;  // what the worst case was
    bool skipped = false;
};

class Checker {
public:
    Checker(const Registry& reg, const std::string& name, const Shape& shape, const ConformanceOptions& opt)
        : reg_(reg), name_(name), shape_(shape), opt_(opt), hints_(reg.bijectors.get(name, "").hints) {}

    std::vector<ConformanceCheck> run() {
        try {
            setup();
        } catch (const std::exception& e) {
            ConformanceCheck c;
            c.type = name_;
            c.shape = shape_str(shape_);
            c.check = "build";
            c.worst = kInf;
            c.detail = e.what();
            rows_.push_back(std::move(c));
            return rows_;
        }
        auto& b = *layer_;
        b.set_training(true);
        const bool independent_training = b.batch_independent();
        // A layer that mixes rows while training (batch norm) is inverted in evaluation mode.
        if (!independent_training) b.set_training(false);
        add_row("round_trip_inverse_forward", mode_.round_trip, [&] { return round_trip_inverse_forward(); });
        add_row("round_trip_forward_inverse", mode_.round_trip, [&] { return round_trip_forward_inverse(); });
        add_row("log_det_cancel", mode_.log_det, [&] { return log_det_cancel(); });
        add_row("log_det_vs_jacobian", mode_.jacobian, [&] { return log_det_vs_jacobian(); });
        add_row("batch_independence", mode_.batch, [&] { return batch_independence(); });
        add_row("finite_at_edges", 0.0, [&] { return finite_at_edges(); });
        // Gradients are checked in training mode, the mode they are used in.
        b.set_training(true);
        add_row("grad_inputs", mode_.grad, [&] { return grad_inputs(); });
        add_row("grad_params", mode_.grad, [&] { return grad_params(); });
        return rows_;
    }

private:
    // ------------------------------------------------------------------ setup

    std::unique_ptr<Bijector> build(DType dt) {
        Params p = Params::parse(hints_.params_json, "<conformance hints of '" + name_ + "'>")
                       .with("type", nlohmann::json(name_).dump());
        Rng init(opt_.seed);
        BuildContext ctx{shape_, {}, &init, &reg_};
        auto b = reg_.make_bijector(p, ctx);
        // Perturb (zero-initialised layers are the identity, which hides bugs) in f64, then
        // convert, so that an f32 run sees the same parameters up to rounding.
        Rng noise_rng(opt_.seed ^ 0x9e3779b97f4a7c15ull);
        for (auto& nv : b->named_parameters()) {
            Tensor v = nv.var.value().to(DType::f64).clone();
            Tensor noise = Tensor::empty(v.shape(), DType::f64);
            noise_rng.fill_normal(noise, 0.0, opt_.perturb);
            kern::add_inplace(v, noise);
            nv.var.mutable_value() = v.to(dt);
        }
        return b;
    }

    // Runs both directions once, without gradients, in training and evaluation mode: if the
    // layer cannot take f64 this is where it says so.
    void probe(Bijector& b) {
        NoGradGuard ng;
        Tensor x = inputs(1.0);
        for (bool training : {true, false}) {
            b.set_training(training);
            FlowResult r = b.inverse(Var(x));
            b.forward(r.out.detach());
        }
        b.set_training(true);
    }

    void setup() {
        if (opt_.batch < 1) throw ConfigError("conformance: the batch must hold at least one sample");
        data_rng_ = Rng(opt_.seed + 1);
        try {
            mode_ = kF64;
            layer_ = build(DType::f64);
            probe(*layer_);
        } catch (const std::exception& e) {
            f32_note_ = std::string("ran in f32 (f64 failed: ") + e.what() + ")";
            mode_ = kF32;
            layer_ = build(DType::f32);
        }
        data_rng_ = Rng(opt_.seed + 1);  // the same inputs whichever precision runs
        x_ = inputs(1.0);
        x2_ = inputs(1.0);
    }

    // ------------------------------------------------------------------ inputs

    Shape full(std::int64_t b) const {
        Shape s{b};
        s.insert(s.end(), shape_.begin(), shape_.end());
        return s;
    }

    // A fresh batch from the layer's input domain, scaled by `scale` (the edge check).
    Tensor inputs(double scale) {
        Tensor t = Tensor::empty(full(opt_.batch), DType::f64);
        if (hints_.unit_interval) {
            data_rng_.fill_uniform(t, 0.05, 0.95);
        } else if (hints_.positive) {
            data_rng_.fill_normal(t, 0.0, 0.5);
            for (std::int64_t i = 0; i < t.numel(); ++i) t.set_item(i, hints_.input_scale * std::exp(t.item(i)) * scale);
        } else {
            data_rng_.fill_normal(t, 0.0, hints_.input_scale * scale);
        }
        return t.to(mode_.dtype);
    }

    // ------------------------------------------------------------------ rows

    template <class Fn>
    void add_row(const char* check, double tol, Fn&& fn) {
        ConformanceCheck c;
        c.type = name_;
        c.shape = shape_str(shape_);
        c.check = check;
        c.tolerance = tol;
        try {
            Outcome o = fn();
            c.worst = o.worst;
            c.passed = o.skipped || o.worst <= tol;  // false for NaN
            if (o.skipped) c.detail = "skipped: " + o.detail;
            else if (!c.passed)
                c.detail = "worst error " + fmt(o.worst) + " > tolerance " + fmt(tol) +
                           (o.detail.empty() ? "" : " (" + o.detail + ")");
        } catch (const std::exception& e) {
            c.passed = false;
            c.worst = kInf;
            c.detail = e.what();
        }
        if (!f32_note_.empty()) c.detail = c.detail.empty() ? f32_note_ : c.detail + "; " + f32_note_;
        rows_.push_back(std::move(c));
    }

    // ------------------------------------------------------------------ checks

    Outcome round_trip_inverse_forward() {
        NoGradGuard ng;
        FlowResult z = layer_->inverse(Var(x_));
        Tensor back = layer_->forward(z.out.detach()).out.value();
        return {rel_err(back, x_, "forward(inverse(x)) vs x"), "forward(inverse(x)) differs from x"};
    }

    Outcome round_trip_forward_inverse() {
        NoGradGuard ng;
        // z from the layer's own inverse lies in forward's domain, whatever that is.
        Tensor z = layer_->inverse(Var(x2_)).out.value();
        Tensor x = layer_->forward(Var(z)).out.value();
        Tensor back = layer_->inverse(Var(x)).out.value();
        return {rel_err(back, z, "inverse(forward(z)) vs z"), "inverse(forward(z)) differs from z"};
    }

    Outcome log_det_cancel() {
        NoGradGuard ng;
        FlowResult inv = layer_->inverse(Var(x_));
        FlowResult fwd = layer_->forward(inv.out.detach());
        Tensor neg = kern::neg(fwd.log_det.value());
        return {rel_err(neg, inv.log_det.value(), "log-dets"),
                "inverse log_det + forward log_det is not 0 (a sign or a missing term)"};
    }

    Outcome log_det_vs_jacobian() {
        const std::int64_t d = numel(shape_);
        if (d > kMaxJacobianDim)
            return {0.0, "event of " + std::to_string(d) + " values > " + std::to_string(kMaxJacobianDim), true};
        if (!layer_->batch_independent()) return {0.0, "the layer mixes rows of a batch", true};
        if (numel(layer_->output_shape(shape_)) != d) throw ShapeError("the layer changes the number of values");
        NoGradGuard ng;
        FlowResult inv = layer_->inverse(Var(x_));
        Tensor z = inv.out.value();
        FlowResult fwd = layer_->forward(Var(z));
        const Shape in1 = full(1);
        Shape out1{1};
        for (auto s : layer_->output_shape(shape_)) out1.push_back(s);
        auto inverse_fn = [&](const Tensor& row) {
            return layer_->inverse(Var(row.to(mode_.dtype).reshape(in1))).out.value().to(DType::f64).reshape({1, d});
        };
        auto forward_fn = [&](const Tensor& row) {
            return layer_->forward(Var(row.to(mode_.dtype).reshape(out1))).out.value().to(DType::f64).reshape({1, d});
        };
        Outcome o;
        auto consider = [&](double numeric, double analytic, const std::string& what) {
            double err = std::isfinite(numeric) && std::isfinite(analytic)
                             ? std::fabs(numeric - analytic) / std::max(1.0, std::fabs(analytic))
                             : kInf;
            if (err > o.worst || (err != err)) {
                o.worst = err;
                o.detail = what + ": log_det " + fmt(analytic) + ", numerical " + fmt(numeric);
            }
        };
        for (std::int64_t i = 0; i < opt_.batch; ++i) {
            Tensor xr = x_.rows(i, 1).to(DType::f64).reshape({1, d});
            Tensor zr = z.rows(i, 1).to(DType::f64).reshape({1, d});
            consider(numerical_log_abs_det(inverse_fn, xr, mode_.jac_eps), inv.log_det.value().item(i),
                     "inverse, sample " + std::to_string(i));
            consider(numerical_log_abs_det(forward_fn, zr, mode_.jac_eps), fwd.log_det.value().item(i),
                     "forward, sample " + std::to_string(i));
        }
        return o;
    }

    // Copies every row but `keep` of `from` into a clone of `base`.
    static Tensor replace_rows_except(const Tensor& base, const Tensor& from, std::int64_t keep) {
        Tensor out = base.clone();
        const std::int64_t per = base.numel() / base.size(0);
        for (std::int64_t r = 0; r < base.size(0); ++r)
            if (r != keep)
                for (std::int64_t j = 0; j < per; ++j) out.set_item(r * per + j, from.item(r * per + j));
        return out;
    }

    Outcome batch_independence() {
        if (opt_.batch < 2) return {0.0, "needs a batch of 2 or more", true};
        if (!layer_->batch_independent()) return {0.0, "the layer declares that it mixes rows of a batch", true};
        NoGradGuard ng;
        Outcome o;
        Tensor z = layer_->inverse(Var(x_)).out.value();
        Tensor other_x = inputs(1.0);
        Tensor other_z = layer_->inverse(Var(other_x)).out.value();
        const char* dirs[] = {"inverse", "forward"};
        for (int dir = 0; dir < 2; ++dir) {
            const Tensor& in = dir == 0 ? x_ : z;
            const Tensor& other = dir == 0 ? other_x : other_z;
            auto run = [&](const Tensor& t) {
                return dir == 0 ? layer_->inverse(Var(t)) : layer_->forward(Var(t));
            };
            FlowResult ref = run(in);
            for (std::int64_t keep : {std::int64_t{0}, opt_.batch - 1}) {
                FlowResult mixed = run(replace_rows_except(in, other, keep));
                double err = std::max(rel_err(mixed.out.value().rows(keep, 1), ref.out.value().rows(keep, 1), "row"),
                                      rel_err(mixed.log_det.value().rows(keep, 1), ref.log_det.value().rows(keep, 1),
                                              "log_det row"));
                if (!(err <= o.worst)) {
                    o.worst = err;
                    o.detail = std::string(dirs[dir]) + ": row " + std::to_string(keep) +
                               " changed when the other rows changed";
                }
            }
        }
        return o;
    }

    Outcome finite_at_edges() {
        NoGradGuard ng;
        std::vector<std::pair<std::string, Tensor>> cases;
        if (hints_.unit_interval) {
            Tensor lo = Tensor::full(full(opt_.batch), 1e-6, mode_.dtype);
            Tensor hi = Tensor::full(full(opt_.batch), 1.0 - 1e-6, mode_.dtype);
            cases = {{"inputs near 0", lo}, {"inputs near 1", hi}};
        } else if (hints_.positive) {
            cases = {{"inputs x 10", inputs(10.0)}, {"tiny inputs (1e-6)", Tensor::full(full(opt_.batch), 1e-6, mode_.dtype)}};
        } else {
            cases = {{"inputs x 10", inputs(10.0)}, {"tiny inputs (x 1e-6)", inputs(1e-6)}};
        }
        Outcome o;
        for (auto& [what, x] : cases) {
            FlowResult inv = layer_->inverse(Var(x));
            std::int64_t bad = count_non_finite(inv.out.value()) + count_non_finite(inv.log_det.value());
            std::int64_t bad_fwd = 0;
            if (bad == 0) {
                FlowResult fwd = layer_->forward(inv.out.detach());
                bad_fwd = count_non_finite(fwd.out.value()) + count_non_finite(fwd.log_det.value());
            }
            if (bad + bad_fwd > 0 && o.worst == 0.0) {
                o.detail = what + ": " + std::to_string(bad + bad_fwd) + " non-finite values in " +
                           (bad ? "inverse" : "forward") + " outputs or log-dets";
            }
            o.worst += static_cast<double>(bad + bad_fwd);
        }
        return o;
    }

    // The scalar whose gradient is checked: sum(log_det) + sum(out * r), r fixed.
    Var objective(const Var& in, bool forward_dir, const Tensor& r) {
        FlowResult res = forward_dir ? layer_->forward(in) : layer_->inverse(in);
        return sum_all(res.log_det) + sum_all(res.out * Var(r));
    }

    double objective_value(const Tensor& in, bool forward_dir, const Tensor& r) {
        NoGradGuard ng;
        return objective(Var(in), forward_dir, r).value().item();
    }

    // Indices to difference: all of a small tensor, a random sample of a large one.
    std::vector<std::int64_t> fd_indices(std::int64_t n) {
        std::vector<std::int64_t> idx;
        if (n <= kMaxFdElements) {
            for (std::int64_t i = 0; i < n; ++i) idx.push_back(i);
            return idx;
        }
        std::set<std::int64_t> pick;
        while (static_cast<std::int64_t>(pick.size()) < kMaxFdElements)
            pick.insert(static_cast<std::int64_t>(data_rng_.below(static_cast<std::uint64_t>(n))));
        return {pick.begin(), pick.end()};
    }

    // Central differences of `eval` over elements of `t` (changed in place and restored),
    // against `analytic`; updates `o` with the worst element.
    void fd_compare(Tensor& t, const Tensor& analytic, const std::function<double()>& eval, const std::string& what,
                    Outcome& o) {
        for (std::int64_t i : fd_indices(t.numel())) {
            const double v = t.item(i);
            const double h = mode_.grad_eps * std::max(1.0, std::fabs(v));
            t.set_item(i, v + h);
            const double v_up = t.item(i);  // the value actually stored (f32 rounds)
            const double up = eval();
            t.set_item(i, v - h);
            const double v_down = t.item(i);
            const double down = eval();
            t.set_item(i, v);
            const double numeric = (up - down) / (v_up - v_down);
            const double a = analytic.defined() ? analytic.item(i) : 0.0;
            double err = std::fabs(a - numeric) / std::max({1.0, std::fabs(a), std::fabs(numeric)});
            if (!std::isfinite(a) || !std::isfinite(numeric)) err = kInf;
            if (!(err <= o.worst)) {
                o.worst = err;
                o.detail = what + ", element " + std::to_string(i) + ": analytic " + fmt(a) + ", numeric " + fmt(numeric);
            }
        }
    }

    Tensor random_like(const Shape& s) {
        Tensor r = Tensor::empty(s, DType::f64);
        data_rng_.fill_normal(r);
        return r.to(mode_.dtype);
    }

    // The input of a gradient check in one direction (the data, or for forward its latent) and
    // the random weights r that objective() puts on the layer's output.
    std::pair<Tensor, Tensor> grad_probe(bool forward_dir) {
        Tensor in;
        {
            NoGradGuard ng;
            in = forward_dir ? layer_->inverse(Var(x_)).out.value().clone() : x_.clone();
        }
        Shape out_shape{opt_.batch};
        for (auto s : forward_dir ? shape_ : layer_->output_shape(shape_)) out_shape.push_back(s);
        return {in, random_like(out_shape)};
    }

    Outcome grad_inputs() {
        Outcome o;
        for (bool forward_dir : {false, true}) {
            Tensor in, r;  // not a structured binding: the lambdas below capture r
            std::tie(in, r) = grad_probe(forward_dir);
            Tensor analytic;
            {
                Var xv(in.clone(), true);
                objective(xv, forward_dir, r).backward();
                if (xv.grad().defined()) analytic = xv.grad().clone();
            }
            if (!analytic.defined())
                throw NumericError(std::string(forward_dir ? "forward" : "inverse") +
                                   ": no gradient reached the input (a direction solved numerically needs a "
                                   "differentiable last step, e.g. newton_step from <flowlab/bijector.hpp>)");
            Tensor probe = in.clone();
            fd_compare(probe, analytic, [&] { return objective_value(probe, forward_dir, r); },
                       forward_dir ? "forward input" : "inverse input", o);
        }
        return o;
    }

    Outcome grad_params() {
        auto params = layer_->named_parameters();
        if (params.empty()) return {0.0, "the layer has no parameters", true};
        Outcome o;
        for (bool forward_dir : {false, true}) {
            Tensor in, r;  // not a structured binding: the lambdas below capture r
            std::tie(in, r) = grad_probe(forward_dir);
            std::vector<Tensor> analytic;
            {
                for (auto& p : params) p.var.zero_grad();
                objective(Var(in), forward_dir, r).backward();
                for (auto& p : params) analytic.push_back(p.var.grad().defined() ? p.var.grad().clone() : Tensor());
                for (auto& p : params) p.var.zero_grad();
            }
            for (std::size_t k = 0; k < params.size(); ++k) {
                Tensor& value = params[k].var.mutable_value();
                fd_compare(value, analytic[k], [&] { return objective_value(in, forward_dir, r); },
                           std::string(forward_dir ? "forward" : "inverse") + ", parameter '" + params[k].name + "'", o);
            }
        }
        return o;
    }

    const Registry& reg_;
    std::string name_;
    Shape shape_;
    ConformanceOptions opt_;
    ConformanceHints hints_;
    Mode mode_ = kF64;
    std::string f32_note_;
    std::unique_ptr<Bijector> layer_;
    Rng data_rng_;
    Tensor x_, x2_;
    std::vector<ConformanceCheck> rows_;
};

}  // namespace

std::vector<ConformanceCheck> check_bijector(const Registry& registry, const std::string& name,
                                             const ConformanceOptions& opt) {
    const BijectorEntry& entry = registry.bijectors.get(name, "check_bijector");
    std::vector<ConformanceCheck> rows;
    std::vector<Shape> shapes = entry.hints.shapes;
    if (shapes.empty()) shapes = {{5}};
    for (const Shape& shape : shapes) {
        auto part = Checker(registry, name, shape, opt).run();
        rows.insert(rows.end(), part.begin(), part.end());
    }
    return rows;
}

}  // namespace flowlab
