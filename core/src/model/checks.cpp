#include "model/checks.hpp"

#include "flowlab/errors.hpp"

namespace flowlab::model {

std::string batched_str(const Shape& event) {
    std::string s = "[B";
    for (auto d : event) s += ", " + std::to_string(d);
    return s + "]";
}

Shape event_of(const Shape& s) { return Shape(s.begin() + 1, s.end()); }

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

}  // namespace flowlab::model
