// The helpers for layers without a closed-form inverse (bijector.hpp): bisection on values,
// the differentiable Newton step, and the zero log-det.
#include <catch2/catch.hpp>

#include <cmath>

#include <flowlab/bijector.hpp>
#include <flowlab/gradcheck.hpp>

#include "test_support.hpp"

using namespace flowlab;
using flowlab::test::randn;

namespace {

// y = x + w * tanh(x - c): increasing, with |f(x) - x| <= w.
Var step_fn(const Var& x, const Var& w, const Var& c) { return x + w * tanh(x - c); }
Var step_slope(const Var& x, const Var& w, const Var& c) { return 1.0 + w * (1.0 - square(tanh(x - c))); }

double max_abs_diff(const Tensor& a, const Tensor& b) {
    double m = 0.0;
    for (std::int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::fabs(a.item(i) - b.item(i)));
    return m;
}

}  // namespace

TEST_CASE("bisect_increasing finds each root to the precision of the dtype", "[numerical_inverse]") {
    for (DType dt : {DType::f64, DType::f32}) {
        const Tensor x_true = randn({6, 4}, 3, dt, 2.0);
        const Var w(Tensor::full({4}, 0.8, dt)), c(Tensor::from_vector({4}, {0.0, 0.5, -1.0, 2.0}, dt));
        const ElementwiseFn f = [&](const Var& x) { return step_fn(x, w, c); };
        const Tensor y = f(Var(x_true)).value();
        // A bracket that holds no root anywhere: it must be widened first.
        const Tensor root = bisect_increasing(f, y, Tensor::full(y.shape(), 10.0, dt), Tensor::full(y.shape(), 11.0, dt));
        INFO(dtype_name(dt));
        CHECK(max_abs_diff(root, x_true) < (dt == DType::f64 ? 1e-13 : 5e-6));
    }
}

TEST_CASE("bisect_increasing says so when no bracket holds a root", "[numerical_inverse]") {
    // tanh is bounded: tanh(x) = 2 has no solution.
    const ElementwiseFn f = [](const Var& x) { return tanh(x); };
    const Tensor y = Tensor::full({3}, 2.0, DType::f64);
    const std::string msg = flowlab::test::error_of<NumericError>(
        [&] { bisect_increasing(f, y, Tensor::full({3}, -1.0, DType::f64), Tensor::full({3}, 1.0, DType::f64)); });
    CHECK(msg.find("is f increasing in x, and is y within its range?") != std::string::npos);
}

TEST_CASE("newton_step gives a numerically solved inverse the gradients of the implicit function", "[numerical_inverse]") {
    // x(y, w, c) solves f(x; w, c) = y; its gradients come from the one differentiable step.
    auto solve = [](const std::vector<Var>& v) {
        const Var &y = v[0], &w = v[1], &c = v[2];
        const ElementwiseFn f = [&](const Var& x) { return step_fn(x, w, c); };
        const ElementwiseFn df = [&](const Var& x) { return step_slope(x, w, c); };
        Tensor lo, hi;
        {
            NoGradGuard no_grad;
            lo = (y - w).value();
            hi = (y + w).value();
        }
        return newton_step(f, df, bisect_increasing(f, y.value(), lo, hi), y);
    };
    const Tensor y = randn({5, 3}, 11, DType::f64, 1.5);
    const Tensor w = Tensor::from_vector({3}, {0.3, 0.9, 1.4}, DType::f64);
    const Tensor c = Tensor::from_vector({3}, {-0.5, 0.0, 0.7}, DType::f64);
    const GradCheckResult r = gradcheck(solve, {y, w, c});
    INFO(r.worst);
    CHECK(r.ok(1e-6));
    // The value is the root: f(x) = y.
    NoGradGuard no_grad;
    const Var x = solve({Var(y), Var(w), Var(c)});
    CHECK(max_abs_diff(step_fn(x, Var(w), Var(c)).value(), y) < 1e-13);
}

TEST_CASE("newton_step refines a rough root quadratically", "[numerical_inverse]") {
    const Var w(Tensor::full({2}, 0.5, DType::f64)), c(Tensor::zeros({2}, DType::f64));
    const ElementwiseFn f = [&](const Var& x) { return step_fn(x, w, c); };
    const ElementwiseFn df = [&](const Var& x) { return step_slope(x, w, c); };
    const Tensor x_true = randn({3, 2}, 5, DType::f64);
    const Tensor y = f(Var(x_true)).value();
    Tensor rough = x_true.clone();
    for (std::int64_t i = 0; i < rough.numel(); ++i) rough.set_item(i, rough.item(i) + 1e-4);
    const Var x = newton_step(f, df, rough, Var(y));
    CHECK(max_abs_diff(x.value(), x_true) < 1e-7);
}

TEST_CASE("zero_log_det is a zero per sample in the input's dtype", "[numerical_inverse]") {
    const Var x(randn({4, 3, 2}, 1, DType::f32));
    const Var ld = Bijector::zero_log_det(x);
    CHECK(ld.shape() == Shape{4});
    CHECK(ld.dtype() == DType::f32);
    CHECK(max_abs_diff(ld.value(), Tensor::zeros({4})) == 0.0);
    CHECK_THROWS_AS(Bijector::zero_log_det(Var(Tensor::scalar(1.0))), ShapeError);
}
