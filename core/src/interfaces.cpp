// The non-virtual entry points of the extension interfaces: they check what goes in and what
// comes out, so that a plugin's shape bug is reported at the layer that has it, by name.
#include <cmath>

#include "flowlab/kernels.hpp"
#include "flowlab/bijector.hpp"
#include "flowlab/dequantizer.hpp"
#include "flowlab/distribution.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/optimizer.hpp"

namespace flowlab {

namespace {

// "[B, 2, 3]": a batched shape with the batch left symbolic.
std::string batched_str(const Shape& event) {
    std::string s = "[B";
    for (auto d : event) s += ", " + std::to_string(d);
    return s + "]";
}

Shape event_of(const Shape& s) { return Shape(s.begin() + 1, s.end()); }

std::string layer_name(const Bijector& b, const char* direction) {
    const std::string& n = b.type_name();
    return (n.empty() ? std::string("layer") : "layer '" + n + "'") + " (" + direction + ")";
}

// The input of a batched call: defined, [B, ...], and [B, event...] when the event is known.
void check_input(const Var& v, const Shape& event, const std::string& who, const char* what) {
    if (!v.defined()) throw ShapeError(who + ": the " + what + " is undefined");
    const Shape& s = v.shape();
    if (s.empty())
        throw ShapeError(who + ": expected " + what + " " + (event.empty() ? std::string("[B, ...]") : batched_str(event)) +
                         ", got a scalar");
    if (!event.empty() && event_of(s) != event)
        throw ShapeError(who + ": expected " + what + " " + batched_str(event) + ", got " + shape_str(s));
}

void check_result(const Var& v, const Shape& expected, const std::string& who, const char* what) {
    if (!v.defined()) throw ShapeError(who + ": the " + what + " is undefined");
    if (v.shape() != expected)
        throw ShapeError(who + ": " + what + " should be " + shape_str(expected) + ", got " + shape_str(v.shape()));
}

}  // namespace

FlowResult Bijector::inverse(const Var& x, const Var& context) {
    const std::string who = layer_name(*this, "inverse");
    check_input(x, in_shape_, who, "input");
    const std::int64_t b = x.size(0);
    FlowResult r = do_inverse(x, context);
    check_result(r.out, with_batch(b, output_shape(event_of(x.shape()))), who, "output");
    check_result(r.log_det, {b}, who, "log_det");
    return r;
}

FlowResult Bijector::forward(const Var& z, const Var& context) {
    const std::string who = layer_name(*this, "forward");
    // forward takes what inverse produces: the output shape of the event.
    check_input(z, in_shape_.empty() ? Shape{} : output_shape(in_shape_), who, "input");
    const std::int64_t b = z.size(0);
    FlowResult r = do_forward(z, context);
    if (in_shape_.empty()) {
        // Without a known event shape only the batch is checked.
        if (!r.out.defined() || r.out.value().dim() < 1 || r.out.size(0) != b)
            throw ShapeError(who + ": output should have " + std::to_string(b) + " rows, got " +
                             (r.out.defined() ? shape_str(r.out.shape()) : std::string("nothing")));
    } else {
        check_result(r.out, with_batch(b, in_shape_), who, "output");
    }
    check_result(r.log_det, {b}, who, "log_det");
    return r;
}

Var Bijector::data_init(const Var& x, const Var& context) { return inverse(x, context).out; }

Var broadcast_log_det(const Var& scalar_log_det, const Var& like) {
    if (!scalar_log_det.defined() || scalar_log_det.value().numel() != 1)
        throw ShapeError("broadcast_log_det: expected a one-element log-det, got " +
                         (scalar_log_det.defined() ? shape_str(scalar_log_det.shape()) : std::string("nothing")));
    if (!like.defined() || like.value().dim() < 1)
        throw ShapeError("broadcast_log_det: expected a batched tensor to take the batch size from");
    Var s = scalar_log_det.value().dim() == 0 ? scalar_log_det : reshape(scalar_log_det, {});
    // Adding a constant zero vector broadcasts the value and sums the gradient back.
    return s + Var(Tensor::zeros({like.size(0)}, scalar_log_det.dtype()));
}

Var BaseDistribution::log_prob(const Var& z, const Var& context) {
    const std::string who = "base distribution (log_prob)";
    check_input(z, shape_, who, "input");
    Var lp = do_log_prob(z, context);
    check_result(lp, {z.size(0)}, who, "log_prob");
    return lp;
}

Tensor BaseDistribution::sample(std::int64_t n, Rng& rng, double temperature, const Tensor& context) {
    if (n < 0) throw ShapeError("base distribution (sample): cannot draw " + std::to_string(n) + " samples");
    if (!(temperature >= 0.0) || !std::isfinite(temperature))
        throw NumericError("base distribution (sample): temperature must be finite and >= 0, got " +
                           std::to_string(temperature));
    Tensor t = do_sample(n, rng, temperature, context);
    if (!t.defined()) throw ShapeError("base distribution (sample): the sampler returned nothing");
    if (!shape_.empty() && t.shape() != with_batch(n, shape_))
        throw ShapeError("base distribution (sample): samples should be " + shape_str(with_batch(n, shape_)) + ", got " +
                         shape_str(t.shape()));
    return t;
}

Dequantized Dequantizer::dequantize(const Tensor& x, Rng& rng, const Var& context) {
    const std::string who = "dequantizer";
    if (!x.defined() || x.dim() < 1) throw ShapeError(who + ": expected a batched input [B, ...]");
    Dequantized d = do_dequantize(x, rng, context);
    check_result(d.x, x.shape(), who, "dequantized x");
    check_result(d.log_weight, {x.size(0)}, who, "log_weight");
    return d;
}

void Optimizer::step(double lr) {
    if (!std::isfinite(lr)) throw NumericError("optimizer: learning rate is not finite");
    do_step(lr);
    ++steps_;
}

void Optimizer::zero_grad() {
    for (auto& p : params_) p.var.zero_grad();
}

}  // namespace flowlab
