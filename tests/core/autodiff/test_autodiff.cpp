#include <catch2/catch.hpp>

#include <string>
#include <thread>

#include "flowlab/autodiff.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/ops.hpp"

using namespace flowlab;

namespace {
Tensor vec(std::vector<double> v, DType dt = DType::f64) {
    const auto n = static_cast<std::int64_t>(v.size());
    return Tensor::from_vector({n}, v, dt);
}
}  // namespace

TEST_CASE("A leaf that requires a gradient receives it from backward", "[autodiff]") {
    Var x(vec({1, 2, 3}), true);
    Var y = sum_all(x * x);
    CHECK(y.requires_grad());
    CHECK(std::string(y.op()) == "sum_all");
    y.backward();
    CHECK(x.grad().to_vector() == std::vector<double>{2, 4, 6});
}

TEST_CASE("Gradients add up when a Var is used more than once", "[autodiff]") {
    Var x(vec({1, -2}), true);
    // y = x*x + x + x: dy/dx = 2x + 2
    sum_all(x * x + x + x).backward();
    CHECK(x.grad().to_vector() == std::vector<double>{4, -2});

    Var a(vec({3}), true);
    sum_all(a - a).backward();  // the two paths cancel
    CHECK(a.grad().to_vector() == std::vector<double>{0});

    Var b(vec({3}), true);
    sum_all(b + b).backward();
    CHECK(b.grad().to_vector() == std::vector<double>{2});
}

TEST_CASE("A diamond-shaped graph sums both paths", "[autodiff]") {
    Var x(vec({0.5}), true);
    Var e = exp(x);
    Var z = e * e + e;  // d/dx = 2 e^2x + e^x
    z.backward();
    const double ex = std::exp(0.5);
    CHECK(x.grad().item() == Approx(2 * ex * ex + ex).epsilon(1e-14));
}

TEST_CASE("Leaf gradients accumulate across backward calls until zero_grad", "[autodiff]") {
    Var x(vec({1, 2}), true);
    sum_all(x * 3.0).backward();
    sum_all(x * 3.0).backward();
    CHECK(x.grad().to_vector() == std::vector<double>{6, 6});
    x.zero_grad();
    CHECK_FALSE(x.grad().defined());
    sum_all(x).backward();
    CHECK(x.grad().to_vector() == std::vector<double>{1, 1});
}

TEST_CASE("A gradient passed through to two inputs is not shared between them", "[autodiff]") {
    Var a(vec({1, 1}), true), b(vec({1, 1}), true), c(vec({1, 1}), true);
    (a + b).backward(vec({1, 2}));
    CHECK_FALSE(a.grad().same_storage(b.grad()));
    // Accumulating into a must leave b alone.
    (a + c).backward(vec({10, 20}));
    CHECK(a.grad().to_vector() == std::vector<double>{11, 22});
    CHECK(b.grad().to_vector() == std::vector<double>{1, 2});
    CHECK(c.grad().to_vector() == std::vector<double>{10, 20});
}

TEST_CASE("The output gradient given to backward is never modified", "[autodiff]") {
    Var x(vec({1, 2}), true);
    Tensor seed = vec({5, 6});
    (x + 1.0).backward(seed);
    (x + 1.0).backward(seed);
    CHECK(seed.to_vector() == std::vector<double>{5, 6});
    CHECK(x.grad().to_vector() == std::vector<double>{10, 12});
    CHECK_FALSE(x.grad().same_storage(seed));
}

TEST_CASE("Intermediate gradients are dropped after backward", "[autodiff]") {
    Var x(vec({1, 2}), true);
    Var h = x * 2.0;
    Var y = sum_all(h * h);
    y.backward();
    CHECK_FALSE(h.grad().defined());
    CHECK(x.grad().to_vector() == std::vector<double>{8, 16});
}

TEST_CASE("NoGradGuard builds no graph and restores the previous state", "[autodiff]") {
    Var x(vec({1, 2}), true);
    CHECK(grad_enabled());
    {
        NoGradGuard g;
        CHECK_FALSE(grad_enabled());
        Var y = exp(x) * x;
        CHECK_FALSE(y.requires_grad());
        CHECK(std::string(y.op()) == "leaf");
        CHECK(y.node()->inputs.empty());
        CHECK_FALSE(static_cast<bool>(y.node()->backward));
        CHECK_THROWS_AS(sum_all(y).backward(), Error);
        {
            NoGradGuard inner;
        }
        CHECK_FALSE(grad_enabled());
    }
    CHECK(grad_enabled());
    CHECK(exp(x).requires_grad());
}

TEST_CASE("NoGradGuard is per thread", "[autodiff]") {
    NoGradGuard g;
    bool other = false;
    std::thread t([&] { other = grad_enabled(); });
    t.join();
    CHECK(other);
    CHECK_FALSE(grad_enabled());
}

TEST_CASE("Ops on inputs that need no gradient record nothing", "[autodiff]") {
    Var x(vec({1, 2}));
    Var y = x * x + 1.0;
    CHECK_FALSE(y.requires_grad());
    CHECK(y.node()->inputs.empty());
    CHECK(y.value().to_vector() == std::vector<double>{2, 5});
}

TEST_CASE("A 200k-op chain runs backward and is freed without overflowing the stack", "[autodiff]") {
    Var x(Tensor::from_vector({1}, {1.0}, DType::f64), true);
    Var c(Tensor::from_vector({1}, {1.0}, DType::f64), true);
    const int n = 200000;
    {
        Var y = x;
        for (int i = 0; i < n; ++i) y = (i % 2) ? y + c : y * 1.0;
        Var loss = sum_all(y);
        CHECK(loss.value().item() == n / 2 + 1);
        loss.backward();
        // Leaving the scope frees the whole chain (a recursive teardown would crash here).
    }
    CHECK(x.grad().item() == 1.0);
    CHECK(c.grad().item() == n / 2);
    {
        // A chain that is never differentiated is freed the same way.
        Var y = x;
        for (int i = 0; i < n; ++i) y = exp(y * 0.0);
    }
}

TEST_CASE("A custom op built with make_op gets its gradients", "[autodiff]") {
    // y = x * exp(s) + t with a hand-written backward.
    auto affine = [](const Var& x, const Var& s, const Var& t) {
        Tensor y = kern::add(kern::mul(x.value(), kern::exp(s.value())), t.value());
        return make_op("affine", std::move(y), {x, s, t},
                       [x, s, t](const Tensor& gy, const Tensor& y, GradSink& g) {
                           if (g.needs(0)) g.add(0, kern::mul(gy, kern::exp(s.value())));
                           if (g.needs(1)) g.add(1, kern::mul(gy, kern::sub(y, t.value())));
                           if (g.needs(2)) g.add(2, gy.clone());
                       });
    };
    Var x(vec({1, 2}), true), s(vec({0.5, -0.5})), t(vec({3, 4}), true);
    Var y = affine(x, s, t);
    CHECK(std::string(y.op()) == "affine");
    sum_all(y).backward();
    CHECK(x.grad().item(0) == Approx(std::exp(0.5)));
    CHECK(x.grad().item(1) == Approx(std::exp(-0.5)));
    CHECK(t.grad().to_vector() == std::vector<double>{1, 1});
    CHECK_FALSE(s.grad().defined());  // s needs no gradient, so none was computed
}

TEST_CASE("A backward rule that adds a gradient of the wrong shape throws a ShapeError", "[autodiff]") {
    Var x(vec({1, 2}), true);
    Var y = make_op("bad", x.value().clone(), {x}, [](const Tensor&, const Tensor&, GradSink& g) {
        g.add(0, Tensor::zeros({3}, DType::f64));
    });
    try {
        sum_all(y).backward();
        FAIL("no exception");
    } catch (const ShapeError& e) {
        const std::string msg = e.what();
        CHECK(msg.find("bad") != std::string::npos);
        CHECK(msg.find("[3]") != std::string::npos);
        CHECK(msg.find("[2]") != std::string::npos);
    }
}

TEST_CASE("GradSink::buffer gives a zeroed gradient to accumulate into", "[autodiff]") {
    Var x(vec({1, 2, 3}), true);
    Var y = make_op("first_two", Tensor::zeros({2}, DType::f64), {x}, [](const Tensor& gy, const Tensor&, GradSink& g) {
        Tensor& b = g.buffer(0);
        b.set_item(0, b.item(0) + gy.item(0));
        b.set_item(1, b.item(1) + gy.item(1));
    });
    y.backward(vec({5, 6}));
    CHECK(x.grad().to_vector() == std::vector<double>{5, 6, 0});
}

TEST_CASE("backward needs a single-element output or an output gradient of its shape", "[autodiff]") {
    Var x(vec({1, 2}), true);
    Var y = x * 2.0;
    CHECK_THROWS_AS(y.backward(), ShapeError);
    CHECK_THROWS_AS(y.backward(vec({1, 2, 3})), ShapeError);
    y.backward(vec({1, 1}));
    CHECK(x.grad().to_vector() == std::vector<double>{2, 2});
    CHECK_THROWS_AS(Var(vec({1})).backward(), Error);
}

TEST_CASE("An f32 output gradient seeds an f64 graph after conversion", "[autodiff]") {
    Var x(vec({1, 2}), true);
    (x * 3.0).backward(vec({1, 2}, DType::f32));
    CHECK(x.grad().dtype() == DType::f64);
    CHECK(x.grad().to_vector() == std::vector<double>{3, 6});
}

TEST_CASE("detach shares the value but not the graph", "[autodiff]") {
    Var x(vec({1, 2}), true);
    Var y = x * 2.0;
    Var d = y.detach();
    CHECK_FALSE(d.requires_grad());
    CHECK(d.value().same_storage(y.value()));
    sum_all(d * x).backward();
    CHECK(x.grad().to_vector() == std::vector<double>{2, 4});
}

TEST_CASE("An undefined Var reports itself", "[autodiff]") {
    Var v;
    CHECK_FALSE(v.defined());
    CHECK_FALSE(v.requires_grad());
    CHECK(std::string(v.op()) == "undefined");
    CHECK_THROWS_AS(v.value(), Error);
}
