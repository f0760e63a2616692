#include "model/split.hpp"

#include "flowlab/kernels.hpp"
#include "flowlab/errors.hpp"

namespace flowlab {

namespace {
Shape with_channels(const Shape& s, std::int64_t c) {
    Shape out = s;
    out[0] = c;
    return out;
}
}  // namespace

SplitBijector::SplitBijector(const Shape& in, std::int64_t keep, std::vector<std::unique_ptr<Bijector>> rest,
                             std::unique_ptr<Conditioner> prior)
    : in_(in), keep_(keep), rest_(std::move(rest)), prior_(std::move(prior)) {
    if (in_.empty() || keep_ < 1 || keep_ >= in_[0])
        throw ShapeError("split: cannot keep " + std::to_string(keep_) + " of the " +
                         std::to_string(in_.empty() ? 0 : in_[0]) + " channels of input " + shape_str(in_) +
                         "; keep must be between 1 and channels - 1");
    set_event_shape(in_);
    rest_out_ = kept_shape();
    for (std::size_t i = 0; i < rest_.size(); ++i) {
        rest_out_ = rest_[i]->output_shape(rest_out_);
        add_child("rest." + std::to_string(i), rest_[i].get());
    }
    if (prior_) add_child("prior", prior_.get());
}

Shape SplitBijector::kept_shape() const { return with_channels(in_, keep_); }
Shape SplitBijector::factored_shape() const { return with_channels(in_, in_[0] - keep_); }

Shape SplitBijector::output_shape(const Shape&) const { return {numel(factored_shape()) + numel(rest_out_)}; }

bool SplitBijector::batch_independent() const {
    for (const auto& r : rest_)
        if (!r->batch_independent()) return false;
    return true;
}

FlowResult SplitBijector::run_rest_inverse(const Var& h0, const Var& context) {
    Var h = h0, ld;
    for (auto& r : rest_) {
        FlowResult fr = r->inverse(h, context);
        h = fr.out;
        ld = ld.defined() ? ld + fr.log_det : fr.log_det;
    }
    return {h, ld};
}

FlowResult SplitBijector::run_rest_forward(const Var& h0, const Var& context) {
    Var h = h0, ld;
    for (auto it = rest_.rbegin(); it != rest_.rend(); ++it) {
        FlowResult fr = (*it)->forward(h, context);
        h = fr.out;
        ld = ld.defined() ? ld + fr.log_det : fr.log_det;
    }
    return {h, ld};
}

FlowResult SplitBijector::do_inverse(const Var& x, const Var& context) {
    const std::int64_t b = x.size(0), cf = in_[0] - keep_;
    Var xk = slice(x, 1, 0, keep_);
    Var xf = slice(x, 1, keep_, cf);
    Var zf = xf, ld;
    if (prior_) {
        Var p = (*prior_)(xk, context);
        Var mu = slice(p, 1, 0, cf), log_sigma = slice(p, 1, cf, cf);
        zf = (xf - mu) * exp(-log_sigma);
        ld = -sum_per_sample(log_sigma);
    }
    FlowResult r = run_rest_inverse(xk, context);
    if (r.log_det.defined()) ld = ld.defined() ? ld + r.log_det : r.log_det;
    if (!ld.defined()) ld = Var(Tensor::zeros({b}, x.dtype()));
    Var out = concat({reshape(zf, {b, numel(factored_shape())}), reshape(r.out, {b, numel(rest_out_)})}, 1);
    return {out, ld};
}

FlowResult SplitBijector::do_forward(const Var& z, const Var& context) {
    const std::int64_t b = z.size(0), df = numel(factored_shape()), dk = numel(rest_out_);
    Var zf = reshape(slice(z, 1, 0, df), with_batch(b, factored_shape()));
    Var zk = reshape(slice(z, 1, df, dk), with_batch(b, rest_out_));
    FlowResult r = run_rest_forward(zk, context);
    Var xf = zf, ld = r.log_det;
    if (prior_) {
        const std::int64_t cf = in_[0] - keep_;
        Var p = (*prior_)(r.out, context);
        Var mu = slice(p, 1, 0, cf), log_sigma = slice(p, 1, cf, cf);
        xf = zf * exp(log_sigma) + mu;
        Var pl = sum_per_sample(log_sigma);
        ld = ld.defined() ? ld + pl : pl;
    }
    if (!ld.defined()) ld = Var(Tensor::zeros({b}, z.dtype()));
    return {concat({r.out, xf}, 1), ld};
}

Var SplitBijector::data_init(const Var& x, const Var& context) {
    Var h = slice(x, 1, 0, keep_);
    for (auto& r : rest_) h = r->data_init(h, context);
    return do_inverse(x, context).out;
}

}  // namespace flowlab
