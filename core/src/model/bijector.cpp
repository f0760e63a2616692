// Bijector's checked entry points and broadcast_log_det.
#include "flowlab/bijector.hpp"

#include "flowlab/errors.hpp"
#include "flowlab/kernels.hpp"
#include "model/checks.hpp"

namespace flowlab {

using namespace model;

namespace {

std::string layer_name(const Bijector& b, const char* direction) {
    const std::string& n = b.type_name();
    return (n.empty() ? std::string("layer") : "layer '" + n + "'") + " (" + direction + ")";
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

}  // namespace flowlab
