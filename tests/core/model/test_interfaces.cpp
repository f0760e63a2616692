// The module tree and the checked entry points of the extension interfaces.
#include <catch2/catch.hpp>

#include "test_support.hpp"

#include <cmath>
#include <functional>

#include <flowlab/bijector.hpp>
#include <flowlab/dequantizer.hpp>
#include <flowlab/distribution.hpp>
#include <flowlab/errors.hpp>
#include <flowlab/optimizer.hpp>

using namespace flowlab;
using namespace flowlab::test;

namespace {

class Leaf : public Module {
public:
    explicit Leaf(std::int64_t n) {
        w = add_parameter("w", Tensor::zeros({n}));
        stats = add_buffer("stats", Tensor::zeros({2}));
    }
    int changes = 0;
    Var w;
    Tensor stats;

protected:
    void on_training_changed(bool) override { ++changes; }
};

class Tree : public Module {
public:
    Tree() : a(3), b(4) {
        bias = add_parameter("bias", Tensor::zeros({1}));
        add_child("a", &a);
        add_child("b", &b);
    }
    void add_again() { add_parameter("bias", Tensor::zeros({1})); }
    void add_buffer_named(const std::string& name) { add_buffer(name, Tensor::zeros({1})); }
    void add_child_named(const std::string& name, Module* m) { add_child(name, m); }
    Var bias;
    Leaf a, b;
};

// y = x * exp(a) + b per feature, with switches that break it in one way each.
class ScaleShift : public Bijector {
public:
    explicit ScaleShift(std::int64_t d) {
        a_ = add_parameter("a", Tensor::zeros({d}));
        b_ = add_parameter("b", Tensor::zeros({d}));
    }
    bool wrong_log_det_shape = false;
    bool wrong_out_shape = false;

protected:
    FlowResult do_inverse(const Var& x, const Var&) override {
        Var ld = broadcast_log_det(-sum_all(a_), x);
        if (wrong_log_det_shape) ld = reshape(concat({ld, ld}, 0), {x.size(0), 2});
        Var out = (x - b_) * exp(-a_);
        if (wrong_out_shape) out = concat({out, out}, 1);
        return {out, ld};
    }
    FlowResult do_forward(const Var& z, const Var&) override {
        return {z * exp(a_) + b_, broadcast_log_det(sum_all(a_), z)};
    }

private:
    Var a_, b_;
};

class Gaussian : public BaseDistribution {
protected:
    Var do_log_prob(const Var& z, const Var&) override { return -0.5 * sum_per_sample(square(z)); }
    Tensor do_sample(std::int64_t n, Rng&, double, const Tensor&) override { return Tensor::zeros({n, 3}); }
};

class WrongDequantizer : public Dequantizer {
protected:
    Dequantized do_dequantize(const Tensor& x, Rng&, const Var&) override {
        return {Var(x), Var(Tensor::zeros({x.size(0) + 1}))};
    }
};

class CountingOptimizer : public Optimizer {
public:
    using Optimizer::Optimizer;
    double last_lr = 0.0;

protected:
    void do_step(double lr) override { last_lr = lr; }
};

}  // namespace

TEST_CASE("parameters and buffers are named with dotted paths, depth first", "[module]") {
    Tree t;
    auto params = t.named_parameters();
    REQUIRE(params.size() == 3);
    CHECK(params[0].name == "bias");
    CHECK(params[1].name == "a.w");
    CHECK(params[2].name == "b.w");
    CHECK(params[1].var.requires_grad());
    CHECK(t.named_parameters("flow")[2].name == "flow.b.w");
    CHECK(t.num_parameters() == 1 + 3 + 4);
    CHECK(t.parameters().size() == 3);
    auto buffers = t.named_buffers();
    REQUIRE(buffers.size() == 2);
    CHECK(buffers[1].name == "b.stats");
    // A buffer is shared by handle: the module sees in-place updates of the member.
    t.b.stats.fill(7.0);
    CHECK(t.named_buffers()[1].tensor.item(1) == 7.0);
}

TEST_CASE("training mode propagates to children and a name is used once", "[module]") {
    Tree t;
    t.set_training(false);
    CHECK_FALSE(t.training());
    CHECK_FALSE(t.a.training());
    CHECK(t.b.changes == 1);
    CHECK(error_of<Error>([&] { t.add_again(); }) == "module: the name 'bias' is already a parameter");
    CHECK(error_of<Error>([&] { t.add_buffer_named("a"); }) == "module: the name 'a' is already a child module");
    t.add_buffer_named("counts");
    CHECK(error_of<Error>([&] { t.add_child_named("counts", &t.a); }) == "module: the name 'counts' is already a buffer");
    // A refused child leaves its name free.
    CHECK_THROWS_AS(t.add_child_named("c", nullptr), Error);
    Leaf c(2);
    t.add_child_named("c", &c);
    CHECK(t.num_parameters() == 1 + 3 + 4 + 2);
}

TEST_CASE("a bijector input of the wrong event shape is refused naming the layer", "[interfaces]") {
    ScaleShift layer(2);
    layer.set_type_name("affine_coupling");
    layer.set_event_shape({2});
    CHECK(error_of<ShapeError>([&] { layer.inverse(Var(Tensor::zeros({512, 3}))); }) ==
          "layer 'affine_coupling' (inverse): expected input [B, 2], got [512, 3]");
    CHECK(error_of<ShapeError>([&] { layer.forward(Var(Tensor::zeros({4}))); }) ==
          "layer 'affine_coupling' (forward): expected input [B, 2], got [4]");
    CHECK(error_of<ShapeError>([&] { layer.inverse(Var()); }) == "layer 'affine_coupling' (inverse): the input is undefined");
}

TEST_CASE("a bijector's results are checked against the shapes it promised", "[interfaces]") {
    ScaleShift layer(2);
    layer.set_type_name("scale_shift");
    layer.set_event_shape({2});
    layer.wrong_log_det_shape = true;
    CHECK(error_of<ShapeError>([&] { layer.inverse(Var(Tensor::zeros({4, 2}))); }) ==
          "layer 'scale_shift' (inverse): log_det should be [4], got [4, 2]");
    layer.wrong_log_det_shape = false;
    layer.wrong_out_shape = true;
    CHECK(error_of<ShapeError>([&] { layer.inverse(Var(Tensor::zeros({4, 2}))); }) ==
          "layer 'scale_shift' (inverse): output should be [4, 2], got [4, 4]");
}

TEST_CASE("a correct bijector round-trips through the checked entry points", "[interfaces]") {
    ScaleShift layer(3);
    layer.set_event_shape({3});
    for (auto& p : layer.named_parameters()) p.var.mutable_value().fill(0.5);
    Var x(Tensor::from_vector({2, 3}, {1, 2, 3, -1, -2, -3}));
    FlowResult z = layer.inverse(x);
    FlowResult back = layer.forward(z.out);
    CHECK(kern::max_abs_diff(back.out.value(), x.value()) < 1e-5);
    CHECK(z.log_det.value().item(0) == Approx(-1.5));
    CHECK(back.log_det.value().item(1) == Approx(1.5));
    // data_init's default runs inverse and returns its output.
    CHECK(kern::max_abs_diff(layer.data_init(x, Var()).value(), z.out.value()) < 1e-6);
}

TEST_CASE("broadcast_log_det repeats a scalar per row and sums its gradient back", "[interfaces]") {
    Var s(Tensor::scalar(2.0), true);
    Var like(Tensor::zeros({5, 3}));
    Var ld = broadcast_log_det(s, like);
    REQUIRE(ld.shape() == Shape{5});
    CHECK(ld.value().item(4) == 2.0);
    sum_all(ld).backward();
    CHECK(s.grad().item() == Approx(5.0));
    CHECK_THROWS_AS(broadcast_log_det(Var(Tensor::zeros({2})), like), ShapeError);
}

TEST_CASE("base distributions and dequantizers check shapes in and out", "[interfaces]") {
    Gaussian g;
    g.set_event_shape({3});
    CHECK(g.log_prob(Var(Tensor::zeros({4, 3}))).shape() == Shape{4});
    CHECK(error_of<ShapeError>([&] { g.log_prob(Var(Tensor::zeros({4, 2}))); }) ==
          "base distribution (log_prob): expected input [B, 3], got [4, 2]");
    Rng rng(1);
    CHECK(g.sample(6, rng).shape() == Shape{6, 3});
    g.set_event_shape({2});
    CHECK(error_of<ShapeError>([&] { g.sample(6, rng); }) ==
          "base distribution (sample): samples should be [6, 2], got [6, 3]");
    WrongDequantizer d;
    CHECK(error_of<ShapeError>([&] { d.dequantize(Tensor::zeros({4, 2}), rng); }) ==
          "dequantizer: log_weight should be [4], got [5]");
}

TEST_CASE("an optimizer counts its steps and zero_grad drops gradients", "[interfaces]") {
    Var w(Tensor::full({2}, 1.0), true);
    sum_all(w * w).backward();
    REQUIRE(w.grad().defined());
    CountingOptimizer opt({{"w", w}});
    opt.step(0.5);
    opt.step(0.25);
    CHECK(opt.steps_taken() == 2);
    CHECK(opt.last_lr == 0.25);
    opt.zero_grad();
    CHECK_FALSE(w.grad().defined());
    CHECK_THROWS_AS(opt.step(std::nan("")), NumericError);

    // An optimizer that does not apply a gradient scale itself gets the gradients scaled.
    sum_all(w * w).backward();  // d/dw = 2w = 2
    opt.step(0.5, 0.25);
    CHECK(w.grad().item(0) == 0.5);
    CHECK_THROWS_AS(opt.step(0.5, std::nan("")), NumericError);
}
