#include <catch2/catch.hpp>

#include <cmath>
#include <initializer_list>
#include <limits>
#include <string>

#include "flowlab/errors.hpp"
#include "flowlab/gradcheck.hpp"
#include "flowlab/ops.hpp"
#include "flowlab/parallel.hpp"
#include "flowlab/rng.hpp"

#include "test_support.hpp"

using namespace flowlab;
using flowlab::test::shape_error_of;

namespace {
using Fn = std::function<Var(const std::vector<Var>&)>;

Tensor rnd(Shape s, std::uint64_t seed, double lo = -1.0, double hi = 1.0, DType dt = DType::f64) {
    Tensor t = Tensor::empty(std::move(s), dt);
    Rng(seed).fill_uniform(t, lo, hi);
    return t;
}

// Values in +-[0.2, 1]: away from the kinks of relu and abs.
Tensor off_zero(Shape s, std::uint64_t seed) {
    Tensor t = rnd(std::move(s), seed, 0.2, 1.0);
    Rng r(seed + 1000);
    for (std::int64_t i = 0; i < t.numel(); ++i)
        if (r.uniform() < 0.5) t.set_item(i, -t.item(i));
    return t;
}

void require_grads(const std::string& what, const Fn& f, const std::vector<Tensor>& inputs) {
    GradCheckResult r = gradcheck(f, inputs);
    INFO(what << ": " << r.worst << " (max rel error " << r.max_rel_error << ")");
    REQUIRE(r.ok(1e-6));
}

bool mentions(const std::string& msg, const std::string& part) { return msg.find(part) != std::string::npos; }

// An error message must mention each of `parts` (the op, the shapes): one check per part.
void check_mentions(const std::string& msg, std::initializer_list<const char*> parts) {
    INFO("message: " << msg);
    for (const char* part : parts) {
        INFO("should mention " << part);
        CHECK(mentions(msg, part));
    }
}

// Naive op(A) op(B) in double.
Tensor naive_matmul(const Tensor& a, bool ta, const Tensor& b, bool tb) {
    const std::int64_t m = ta ? a.size(1) : a.size(0), k = ta ? a.size(0) : a.size(1);
    const std::int64_t n = tb ? b.size(0) : b.size(1);
    Tensor c = Tensor::zeros({m, n}, DType::f64);
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t j = 0; j < n; ++j) {
            double s = 0;
            for (std::int64_t p = 0; p < k; ++p)
                s += a.item(ta ? p * m + i : i * k + p) * b.item(tb ? j * k + p : p * n + j);
            c.set_item(i * n + j, s);
        }
    return c;
}
}  // namespace

// ------------------------------------------------------------------------------ gradients

TEST_CASE("Binary ops have correct gradients for every broadcasting pattern", "[ops][gradcheck]") {
    struct Case {
        Shape a, b;
    };
    const std::vector<Case> cases = {
        {{3, 4}, {3, 4}},   // same shape
        {{3, 4}, {}},       // scalar
        {{3, 4}, {1}},      // one element
        {{3, 4}, {4}},      // row vector
        {{3, 4}, {1, 4}},   // [1, N]
        {{3, 4}, {3, 1}},   // column
        {{4}, {3, 4}},      // the small one first
        {{3, 1}, {1, 4}},   // both stretch
        {{2, 1, 3}, {4, 1}},
        {{2, 3, 4}, {3, 1}},
    };
    for (const auto& c : cases) {
        const std::string shapes = shape_str(c.a) + " and " + shape_str(c.b);
        const Tensor a = rnd(c.a, 1), b = rnd(c.b, 2, 0.5, 1.5);
        require_grads("add " + shapes, [](const std::vector<Var>& v) { return v[0] + v[1]; }, {a, b});
        require_grads("sub " + shapes, [](const std::vector<Var>& v) { return v[0] - v[1]; }, {a, b});
        require_grads("mul " + shapes, [](const std::vector<Var>& v) { return v[0] * v[1]; }, {a, b});
        require_grads("div " + shapes, [](const std::vector<Var>& v) { return v[0] / v[1]; }, {a, b});
        require_grads("div reversed " + shapes, [](const std::vector<Var>& v) { return v[1] / (v[0] + 2.0); }, {a, b});
    }
}

TEST_CASE("Binary ops on the same Var twice have correct gradients", "[ops][gradcheck]") {
    const Tensor a = rnd({3, 2}, 3, 0.5, 1.5);
    require_grads("x + x", [](const std::vector<Var>& v) { return v[0] + v[0]; }, {a});
    require_grads("x - x", [](const std::vector<Var>& v) { return v[0] - v[0] + v[0] * 0.5; }, {a});
    require_grads("x * x", [](const std::vector<Var>& v) { return v[0] * v[0]; }, {a});
    require_grads("x / x^2", [](const std::vector<Var>& v) { return v[0] / (v[0] * v[0]); }, {a});
}

TEST_CASE("Scalar ops and operators have correct gradients", "[ops][gradcheck]") {
    const Tensor a = rnd({2, 3}, 4);
    require_grads("add_scalar", [](const std::vector<Var>& v) { return add_scalar(v[0], 2.5); }, {a});
    require_grads("mul_scalar", [](const std::vector<Var>& v) { return mul_scalar(v[0], -1.5); }, {a});
    require_grads("neg", [](const std::vector<Var>& v) { return neg(v[0]); }, {a});
    require_grads("operators", [](const std::vector<Var>& v) {
        return (2.0 - v[0]) * 3.0 + (v[0] - 1.0) / 4.0 + (1.0 + v[0]) * (v[0] + 0.5) - (-v[0]) * 2.0;
    }, {a});
}

TEST_CASE("Unary ops have correct gradients", "[ops][gradcheck]") {
    const Tensor a = rnd({3, 5}, 5, -3.0, 3.0);
    const Tensor pos = rnd({3, 5}, 6, 0.1, 3.0);
    const Tensor nz = off_zero({3, 5}, 7);
    require_grads("exp", [](const std::vector<Var>& v) { return exp(v[0]); }, {a});
    require_grads("log", [](const std::vector<Var>& v) { return log(v[0]); }, {pos});
    require_grads("tanh", [](const std::vector<Var>& v) { return tanh(v[0]); }, {a});
    require_grads("sigmoid", [](const std::vector<Var>& v) { return sigmoid(v[0]); }, {a});
    require_grads("softplus", [](const std::vector<Var>& v) { return softplus(v[0]); }, {a});
    require_grads("log_sigmoid", [](const std::vector<Var>& v) { return log_sigmoid(v[0]); }, {a});
    require_grads("relu", [](const std::vector<Var>& v) { return relu(v[0]); }, {nz});
    require_grads("elu", [](const std::vector<Var>& v) { return elu(v[0]); }, {nz});
    require_grads("square", [](const std::vector<Var>& v) { return square(v[0]); }, {a});
    require_grads("sqrt", [](const std::vector<Var>& v) { return sqrt(v[0]); }, {pos});
    require_grads("abs", [](const std::vector<Var>& v) { return abs(v[0]); }, {nz});
}

TEST_CASE("Reductions have correct gradients", "[ops][gradcheck]") {
    const Tensor a = rnd({2, 3, 4}, 8, -2.0, 2.0);
    for (std::int64_t d : {0, 1, 2, -1}) {
        for (bool keep : {false, true}) {
            const std::string what = " dim " + std::to_string(d) + (keep ? " keepdim" : "");
            require_grads("sum" + what, [d, keep](const std::vector<Var>& v) { return sum(v[0], d, keep); }, {a});
            require_grads("mean" + what, [d, keep](const std::vector<Var>& v) { return mean(v[0], d, keep); }, {a});
            require_grads("logsumexp" + what,
                          [d, keep](const std::vector<Var>& v) { return logsumexp(v[0], d, keep); }, {a});
        }
    }
    require_grads("sum_all", [](const std::vector<Var>& v) { return sum_all(v[0]); }, {a});
    require_grads("mean_all", [](const std::vector<Var>& v) { return mean_all(v[0]); }, {a});
    require_grads("sum_per_sample 3-d", [](const std::vector<Var>& v) { return sum_per_sample(v[0]); }, {a});
    require_grads("sum_per_sample 2-d", [](const std::vector<Var>& v) { return sum_per_sample(v[0]); },
                  {rnd({5, 2}, 9)});
    require_grads("sum_per_sample 1-d", [](const std::vector<Var>& v) { return sum_per_sample(v[0]); },
                  {rnd({5}, 10)});
}

TEST_CASE("Shape ops have correct gradients", "[ops][gradcheck]") {
    const Tensor a = rnd({3, 4}, 11);
    const Tensor b = rnd({3, 2}, 12);
    const Tensor c = rnd({1, 4}, 13);
    require_grads("reshape", [](const std::vector<Var>& v) { return reshape(v[0], {2, -1}) * 2.0; }, {a});
    require_grads("slice dim 1", [](const std::vector<Var>& v) { return slice(v[0], 1, 1, 2); }, {a});
    require_grads("slice dim 0", [](const std::vector<Var>& v) { return slice(v[0], 0, 2, 1); }, {a});
    require_grads("two slices of one Var", [](const std::vector<Var>& v) {
        return slice(v[0], 1, 0, 2) * slice(v[0], 1, 2, 2);
    }, {a});
    require_grads("concat dim 1", [](const std::vector<Var>& v) { return concat({v[0], v[1]}, 1); }, {a, b});
    require_grads("concat dim 0", [](const std::vector<Var>& v) { return concat({v[0], v[1], v[0]}, 0); }, {a, c});
    require_grads("gather with repeats", [](const std::vector<Var>& v) { return gather(v[0], {3, 0, 3, 1}, 1); }, {a});
    require_grads("gather dim 0", [](const std::vector<Var>& v) { return gather(v[0], {2, 2}, 0); }, {a});
    require_grads("transpose2d", [](const std::vector<Var>& v) { return transpose2d(v[0]) * 1.5; }, {a});
}

TEST_CASE("matmul has correct gradients for every transpose combination", "[ops][gradcheck]") {
    const std::int64_t m = 3, k = 4, n = 5;
    for (bool ta : {false, true})
        for (bool tb : {false, true}) {
            const Tensor a = ta ? rnd({k, m}, 14) : rnd({m, k}, 14);
            const Tensor b = tb ? rnd({n, k}, 15) : rnd({k, n}, 15);
            require_grads(std::string("matmul ta=") + (ta ? "1" : "0") + " tb=" + (tb ? "1" : "0"),
                          [ta, tb](const std::vector<Var>& v) { return matmul(v[0], v[1], ta, tb); }, {a, b});
        }
    // The same Var on both sides exercises accumulation with beta = 1.
    require_grads("x x^T", [](const std::vector<Var>& v) { return matmul(v[0], v[0], false, true); }, {rnd({3, 4}, 16)});
    require_grads("x^T x", [](const std::vector<Var>& v) { return matmul(v[0], v[0], true, false); }, {rnd({3, 4}, 17)});
    require_grads("x x", [](const std::vector<Var>& v) { return matmul(v[0], v[0]); }, {rnd({3, 3}, 18)});
}

TEST_CASE("linear has correct gradients with and without a bias", "[ops][gradcheck]") {
    const Tensor x = rnd({5, 3}, 19), w = rnd({3, 4}, 20), b = rnd({4}, 21);
    require_grads("linear with bias", [](const std::vector<Var>& v) { return linear(v[0], v[1], v[2]); }, {x, w, b});
    require_grads("linear without bias", [](const std::vector<Var>& v) { return linear(v[0], v[1]); }, {x, w});
    require_grads("two layers sharing w", [](const std::vector<Var>& v) {
        return linear(tanh(linear(v[0], v[1], v[2])), v[1]);
    }, {rnd({5, 3}, 22), rnd({3, 3}, 23), rnd({3}, 24)});
}

TEST_CASE("gradcheck reports a wrong backward rule", "[ops][gradcheck]") {
    auto wrong = [](const std::vector<Var>& v) {
        const Var& x = v[0];
        return make_op("wrong_square", kern::mul(x.value(), x.value()), {x},
                       [x](const Tensor& gy, const Tensor&, GradSink& g) { g.add(0, kern::mul(gy, x.value())); });
    };
    GradCheckResult r = gradcheck(wrong, {rnd({4}, 25, 0.5, 1.0)});
    CHECK_FALSE(r.ok(1e-3));
    CHECK(r.max_rel_error > 0.1);
    CHECK(mentions(r.worst, "input 0"));
}

// ------------------------------------------------------------------------------ values

TEST_CASE("Broadcasting gives NumPy's values", "[ops]") {
    const Tensor a = Tensor::from_vector({2, 3}, {1, 2, 3, 4, 5, 6});
    CHECK(kern::add(a, Tensor::from_vector({3}, {10, 20, 30})).to_vector() ==
          std::vector<double>{11, 22, 33, 14, 25, 36});
    CHECK(kern::mul(a, Tensor::from_vector({2, 1}, {2, 3})).to_vector() ==
          std::vector<double>{2, 4, 6, 12, 15, 18});
    CHECK(kern::sub(Tensor::scalar(1), a).to_vector() == std::vector<double>{0, -1, -2, -3, -4, -5});
    Tensor outer = kern::mul(Tensor::from_vector({2, 1}, {1, 2}), Tensor::from_vector({1, 3}, {1, 10, 100}));
    CHECK(outer.shape() == Shape{2, 3});
    CHECK(outer.to_vector() == std::vector<double>{1, 10, 100, 2, 20, 200});
    CHECK(broadcast_shapes({2, 1, 3}, {4, 1}, "t") == Shape{2, 4, 3});
}

TEST_CASE("Large element-wise ops agree with a plain loop on any thread count", "[ops]") {
    const Tensor a = rnd({100, 1568}, 26, -1, 1, DType::f32), b = rnd({1568}, 27, -1, 1, DType::f32);
    const Tensor col = rnd({100, 1}, 28, -1, 1, DType::f32);
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        const Tensor s = kern::add(a, b), p = kern::mul(a, col), e = kern::exp(a);
        double worst = 0;
        for (std::int64_t i = 0; i < 100; ++i)
            for (std::int64_t j = 0; j < 1568; ++j) {
                const std::int64_t k = i * 1568 + j;
                worst = std::max(worst, std::abs(s.item(k) - (a.f32()[k] + b.f32()[j])));
                worst = std::max(worst, std::abs(p.item(k) - (a.f32()[k] * col.f32()[i])));
                worst = std::max(worst, std::abs(e.item(k) - std::exp(a.f32()[k])));
            }
        CHECK(worst == 0.0);
        const Tensor cs = kern::sum_to(a, {1568});
        const Tensor rs = kern::sum(a, 1);
        double cw = 0, rw = 0;
        for (std::int64_t j = 0; j < 1568; ++j) {
            double t = 0;
            for (std::int64_t i = 0; i < 100; ++i) t += a.f32()[i * 1568 + j];
            cw = std::max(cw, std::abs(cs.item(j) - t));
        }
        for (std::int64_t i = 0; i < 100; ++i) {
            double t = 0;
            for (std::int64_t j = 0; j < 1568; ++j) t += a.f32()[i * 1568 + j];
            rw = std::max(rw, std::abs(rs.item(i) - t));
        }
        CHECK(cw < 1e-4);
        CHECK(rw < 1e-3);
    }
    set_num_threads(0);
}

TEST_CASE("A sum over a middle dimension adds the rows in order, bit for bit, in every column", "[ops]") {
    // Bias gradients are such sums; their bits must not depend on how the columns are blocked
    // (strips of 128 in registers, then a tail): 300 columns = 2 strips and 44 more.
    for (DType dt : {DType::f32, DType::f64}) {
        INFO("dtype " << dtype_name(dt));
        const Tensor a = rnd({3, 70, 300}, 29, -1, 1, dt);
        const Tensor s = kern::sum(a, 1);
        REQUIRE(s.shape() == Shape{3, 300});
        std::int64_t mismatches = 0;
        for (std::int64_t o = 0; o < 3; ++o)
            for (std::int64_t j = 0; j < 300; ++j) {
                const std::int64_t first = o * 70 * 300 + j;
                double want = 0;
                if (dt == DType::f32) {
                    float t = a.f32()[first];
                    for (std::int64_t k = 1; k < 70; ++k) t += a.f32()[first + k * 300];
                    want = t;
                } else {
                    double t = a.f64()[first];
                    for (std::int64_t k = 1; k < 70; ++k) t += a.f64()[first + k * 300];
                    want = t;
                }
                mismatches += s.item(o * 300 + j) != want;
            }
        CHECK(mismatches == 0);
    }
}

TEST_CASE("Stable functions stay finite and accurate at the extremes", "[ops]") {
    const Tensor x = Tensor::from_vector({4}, {-1000, -30, 30, 1000}, DType::f32);
    Var v(x);
    const auto sp = softplus(v).value(), ls = log_sigmoid(v).value(), sg = sigmoid(v).value();
    CHECK(sp.item(0) == 0.0);
    CHECK(sp.item(1) == Approx(std::exp(-30.0)).epsilon(1e-5));
    CHECK(sp.item(2) == Approx(30.0));
    CHECK(sp.item(3) == 1000.0);
    CHECK(ls.item(0) == -1000.0);
    CHECK(ls.item(3) == 0.0);
    CHECK(sg.item(0) == 0.0);
    CHECK(sg.item(3) == 1.0);
    CHECK(kern::all_finite(sp));
    CHECK(kern::all_finite(ls));
    // Gradients at the extremes are finite too.
    Var w(x, true);
    sum_all(softplus(w) + log_sigmoid(w) + sigmoid(w)).backward();
    CHECK(kern::all_finite(w.grad()));
    CHECK(w.grad().item(0) == Approx(1.0));  // d log_sigmoid / dx -> 1 for x -> -inf
    CHECK(w.grad().item(3) == Approx(1.0));  // d softplus / dx -> 1 for x -> +inf
}

TEST_CASE("logsumexp is stable for large and all -inf inputs", "[ops]") {
    Var a(Tensor::from_vector({2, 2}, {1000, 1000, -1000, -999}, DType::f64), true);
    Var y = logsumexp(a, 1);
    CHECK(y.value().item(0) == Approx(1000 + std::log(2.0)));
    CHECK(y.value().item(1) == Approx(-999 + std::log1p(std::exp(-1.0))));
    sum_all(y).backward();
    CHECK(a.grad().item(0) == Approx(0.5));
    CHECK(a.grad().item(2) + a.grad().item(3) == Approx(1.0));
    const double inf = std::numeric_limits<double>::infinity();
    Var b(Tensor::from_vector({1, 2}, {-inf, -inf}, DType::f64), true);
    Var z = logsumexp(b, 1);
    CHECK(z.value().item(0) == -inf);
    sum_all(z).backward();
    CHECK(b.grad().to_vector() == std::vector<double>{0, 0});
}

TEST_CASE("relu passes NaN through and its gradient follows the output", "[ops]") {
    Var x(Tensor::from_vector({4}, {-1, 0, 2, std::nan("")}), true);
    Var y = relu(x);
    CHECK(y.value().item(0) == 0);
    CHECK(y.value().item(2) == 2);
    CHECK(std::isnan(y.value().item(3)));
    y.backward(Tensor::from_vector({4}, {1, 1, 1, 1}));
    CHECK(x.grad().item(0) == 0);
    CHECK(x.grad().item(1) == 0);
    CHECK(x.grad().item(2) == 1);
}

TEST_CASE("Reductions give the right values and shapes", "[ops]") {
    const Tensor a = Tensor::from_vector({2, 3}, {1, 2, 3, 4, 5, 6});
    Var v(a);
    CHECK(sum(v, 0).value().to_vector() == std::vector<double>{5, 7, 9});
    CHECK(sum(v, 1, true).value().shape() == Shape{2, 1});
    CHECK(sum(v, -1).value().to_vector() == std::vector<double>{6, 15});
    CHECK(mean(v, 1).value().to_vector() == std::vector<double>{2, 5});
    CHECK(sum_all(v).value().shape().empty());
    CHECK(sum_all(v).value().item() == 21);
    CHECK(mean_all(v).value().item() == 3.5);
    CHECK(sum_per_sample(v).value().to_vector() == std::vector<double>{6, 15});
    CHECK(kern::sum_all(a) == 21);
    CHECK(kern::sq_norm(a) == 91);
    CHECK(kern::sum_to(a, {1, 3}).to_vector() == std::vector<double>{5, 7, 9});
    CHECK(kern::sum_to(a, {2, 1}).to_vector() == std::vector<double>{6, 15});
    CHECK(kern::sum_to(a, {}).item() == 21);
    CHECK(kern::sum_to(a, {2, 3}).to_vector() == a.to_vector());
    CHECK_FALSE(kern::sum_to(a, {2, 3}).same_storage(a));
    const Tensor b = Tensor::from_vector({2, 3, 2}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
    CHECK(kern::sum_to(b, {3, 1}).to_vector() == std::vector<double>{1 + 2 + 7 + 8, 3 + 4 + 9 + 10, 5 + 6 + 11 + 12});
    CHECK(kern::sum_to(b, {2, 1, 2}).to_vector() == std::vector<double>{9, 12, 27, 30});
    CHECK(kern::sum(b, 1).to_vector() == std::vector<double>{9, 12, 27, 30});
}

TEST_CASE("all_finite and max_abs_diff see NaN and infinity", "[ops]") {
    Tensor a = Tensor::from_vector({3}, {1, 2, 3});
    CHECK(kern::all_finite(a));
    a.set_item(1, std::numeric_limits<double>::infinity());
    CHECK_FALSE(kern::all_finite(a));
    a.set_item(1, std::nan(""));
    CHECK_FALSE(kern::all_finite(a));
    const Tensor b = Tensor::from_vector({3}, {1, 2.5, 2}, DType::f64);
    CHECK(kern::max_abs_diff(Tensor::from_vector({3}, {1, 2, 3}), b) == 1.0);
    CHECK(std::isnan(kern::max_abs_diff(a, b)));
}

TEST_CASE("In-place kernels update the destination", "[ops]") {
    Tensor d = Tensor::from_vector({3}, {1, 2, 3});
    kern::add_inplace(d, Tensor::from_vector({3}, {1, 1, 1}));
    CHECK(d.to_vector() == std::vector<double>{2, 3, 4});
    kern::axpy_inplace(d, -2.0, Tensor::from_vector({3}, {1, 0, 1}));
    CHECK(d.to_vector() == std::vector<double>{0, 3, 2});
    kern::scale_inplace(d, 0.5);
    CHECK(d.to_vector() == std::vector<double>{0, 1.5, 1});
    CHECK(kern::scale(d, 2).to_vector() == std::vector<double>{0, 3, 2});
    CHECK(kern::add_scalar(d, 1).to_vector() == std::vector<double>{1, 2.5, 2});
    CHECK(kern::neg(d).to_vector() == std::vector<double>{0, -1.5, -1});
    CHECK_THROWS_AS(kern::add_inplace(d, Tensor::zeros({4})), ShapeError);
}

TEST_CASE("Shape ops move the right elements", "[ops]") {
    const Tensor a = Tensor::from_vector({2, 3}, {0, 1, 2, 3, 4, 5});
    CHECK(kern::slice(a, 1, 1, 2).to_vector() == std::vector<double>{1, 2, 4, 5});
    CHECK(kern::slice(a, -2, 1, 1).to_vector() == std::vector<double>{3, 4, 5});
    CHECK(kern::concat({a, kern::slice(a, 1, 0, 1)}, 1).to_vector() ==
          std::vector<double>{0, 1, 2, 0, 3, 4, 5, 3});
    CHECK(kern::concat({a, a}, 0).shape() == Shape{4, 3});
    Var v(a);
    CHECK(gather(v, {2, 0}, 1).value().to_vector() == std::vector<double>{2, 0, 5, 3});
    CHECK(transpose2d(v).value().to_vector() == std::vector<double>{0, 3, 1, 4, 2, 5});
    Var r = reshape(v, {3, 2});
    CHECK(r.value().same_storage(a));
    // A transpose bigger than one cache tile.
    const Tensor big = rnd({70, 45}, 29);
    const Tensor t = transpose2d(Var(big)).value();
    for (std::int64_t i = 0; i < 70; ++i)
        for (std::int64_t j = 0; j < 45; ++j) REQUIRE(t.item(j * 70 + i) == big.item(i * 45 + j));
    // f32 goes through 16 x 16 blocks in registers where the CPU has them: whole blocks, edges
    // on either side, a side shorter than a block.
    for (auto [m, n] : {std::pair<std::int64_t, std::int64_t>{128, 128}, {70, 45}, {33, 16}, {16, 33}, {1, 40}, {40, 1}, {15, 15}}) {
        const Tensor x = rnd({m, n}, 32, -1, 1, DType::f32);
        const Tensor y = transpose2d(Var(x)).value();
        REQUIRE(y.shape() == Shape{n, m});
        for (std::int64_t i = 0; i < m; ++i)
            for (std::int64_t j = 0; j < n; ++j) REQUIRE(y.item(j * m + i) == x.item(i * n + j));
    }
}

// ------------------------------------------------------------------------------ linear algebra

TEST_CASE("f32 matmul matches a naive reference for every transpose", "[ops][gemm]") {
    for (auto [m, k, n] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{7, 13, 5}, {64, 32, 48}, {1, 9, 1}, {33, 1, 17}})
        for (bool ta : {false, true})
            for (bool tb : {false, true}) {
                const Tensor a = ta ? rnd({k, m}, 30, -1, 1, DType::f32) : rnd({m, k}, 30, -1, 1, DType::f32);
                const Tensor b = tb ? rnd({n, k}, 31, -1, 1, DType::f32) : rnd({k, n}, 31, -1, 1, DType::f32);
                const Tensor c = kern::matmul(a, b, ta, tb);
                REQUIRE(c.dtype() == DType::f32);
                REQUIRE(c.shape() == Shape{m, n});
                INFO("m=" << m << " k=" << k << " n=" << n << " ta=" << ta << " tb=" << tb);
                CHECK(kern::max_abs_diff(c, naive_matmul(a, ta, b, tb)) < 1e-5 * k);
                // The f64 path computes the same product.
                const Tensor c64 = kern::matmul(a.to(DType::f64), b.to(DType::f64), ta, tb);
                CHECK(kern::max_abs_diff(c64, naive_matmul(a, ta, b, tb)) < 1e-12);
            }
}

TEST_CASE("gemm scales by alpha and accumulates with beta", "[ops][gemm]") {
    for (DType dt : {DType::f32, DType::f64}) {
        const Tensor a = rnd({6, 4}, 32, -1, 1, dt), b = rnd({5, 4}, 33, -1, 1, dt);
        Tensor c = rnd({6, 5}, 34, -1, 1, dt);
        const Tensor c0 = c.clone();
        kern::gemm(a, false, b, true, c, 2.0, 0.5);
        const Tensor ref = naive_matmul(a, false, b, true);
        double worst = 0;
        for (std::int64_t i = 0; i < 30; ++i)
            worst = std::max(worst, std::abs(c.item(i) - (2.0 * ref.item(i) + 0.5 * c0.item(i))));
        CHECK(worst < 1e-5);
        // beta = 0 ignores whatever C held, NaN included.
        c.fill(std::nan(""));
        kern::gemm(a, false, b, true, c);
        CHECK(kern::max_abs_diff(c, ref) < 1e-5);
    }
}

TEST_CASE("f32 linear matches the f64 reference forward and backward", "[ops][gemm]") {
    const Tensor x = rnd({37, 19}, 35), w = rnd({19, 23}, 36), b = rnd({23}, 37);
    const Tensor gy = rnd({37, 23}, 38);
    auto run = [&](DType dt, bool twice) {
        Var vx(x.to(dt), true), vw(w.to(dt), true), vb(b.to(dt), true);
        Var y = linear(vx, vw, vb);
        y.backward(gy.to(dt));
        if (twice) linear(vx, vw, vb).backward(gy.to(dt));  // second pass accumulates (beta = 1)
        return std::vector<Tensor>{y.value(), vx.grad(), vw.grad(), vb.grad()};
    };
    for (bool twice : {false, true}) {
        const auto r32 = run(DType::f32, twice), r64 = run(DType::f64, twice);
        for (std::size_t i = 0; i < r32.size(); ++i) {
            INFO("output " << i << (twice ? " after two passes" : ""));
            CHECK(r32[i].dtype() == DType::f32);
            CHECK(kern::max_abs_diff(r32[i], r64[i]) < 1e-4);
        }
    }
    // Values at a glance: y = x w + b on a 1x1 case.
    Var y = linear(Var(Tensor::from_vector({1, 2}, {1, 2})), Var(Tensor::from_vector({2, 1}, {3, 4})),
                   Var(Tensor::from_vector({1}, {0.5})));
    CHECK(y.value().item() == 11.5);
}

TEST_CASE("GEMMs at the training shape give the reference result", "[ops][gemm]") {
    const Tensor a = rnd({512, 128}, 39, -1, 1, DType::f32), b = rnd({128, 128}, 40, -1, 1, DType::f32);
    const Tensor bias = rnd({128}, 41, -1, 1, DType::f32);
    Var y = linear(Var(a), Var(b), Var(bias));
    const Tensor ref = kern::add(kern::matmul(a.to(DType::f64), b.to(DType::f64)), bias.to(DType::f64));
    CHECK(kern::max_abs_diff(y.value(), ref) < 1e-3);
    // A second call hits the cached primitive and gives the same bits.
    Var y2 = linear(Var(a), Var(b), Var(bias));
    CHECK(kern::max_abs_diff(y.value(), y2.value()) == 0.0);
}

// ------------------------------------------------------------------------------ errors

TEST_CASE("Shape errors name the op and both shapes", "[ops][errors]") {
    const Var a(Tensor::zeros({2, 3})), b(Tensor::zeros({4}));
    check_mentions(shape_error_of([&] { add(a, b); }), {"add", "[2, 3]", "[4]"});
    check_mentions(shape_error_of([&] { mul(a, Var(Tensor::zeros({3, 1}))); }), {"mul", "[3, 1]"});
    check_mentions(shape_error_of([&] { matmul(a, Var(Tensor::zeros({4, 5}))); }), {"matmul", "[2, 3]", "[4, 5]"});
    check_mentions(shape_error_of([&] { linear(a, Var(Tensor::zeros({2, 5}))); }), {"linear", "[2, 5]"});
    check_mentions(shape_error_of([&] { linear(a, Var(Tensor::zeros({3, 5})), Var(Tensor::zeros({4}))); }), {"[4]"});
    check_mentions(shape_error_of([&] { kern::sum_to(Tensor::zeros({2, 3}), {2}); }), {"sum_to", "[2, 3]", "[2]"});
    check_mentions(shape_error_of([&] { concat({a, Var(Tensor::zeros({2, 2}))}, 0); }), {"concat", "[2, 2]"});
    check_mentions(shape_error_of([&] { slice(a, 1, 2, 2); }), {"slice", "[2, 3]"});
    Tensor c = Tensor::zeros({2, 2});
    check_mentions(shape_error_of([&] { kern::gemm(Tensor::zeros({2, 3}), false, Tensor::zeros({3, 4}), false, c); }),
                   {"[2, 2]"});
    CHECK_THROWS_AS(gather(a, {3}, 1), ShapeError);
    CHECK_THROWS_AS(sum(a, 2), ShapeError);
    CHECK_THROWS_AS(transpose2d(b), ShapeError);
    CHECK_THROWS_AS(reshape(a, {5}), ShapeError);
}

TEST_CASE("Mixing f32 and f64 throws a ShapeError naming both dtypes", "[ops][errors]") {
    const Var a(Tensor::zeros({2}, DType::f32)), b(Tensor::zeros({2}, DType::f64));
    const std::string msg = shape_error_of([&] { add(a, b); });
    CHECK(mentions(msg, "f32"));
    CHECK(mentions(msg, "f64"));
    CHECK_THROWS_AS(matmul(Var(Tensor::zeros({2, 2})), Var(Tensor::zeros({2, 2}, DType::f64))), ShapeError);
}

TEST_CASE("Every op keeps the dtype of its inputs", "[ops]") {
    for (DType dt : {DType::f32, DType::f64}) {
        Var x(rnd({4, 3}, 42, 0.1, 1.0, dt), true);
        Var w(rnd({3, 2}, 43, -1, 1, dt), true);
        Var y = sum_per_sample(logsumexp(linear(sqrt(abs(x)) * sigmoid(x), w), 1, true)) + sum_all(softplus(x));
        CHECK(y.dtype() == dt);
        sum_all(y).backward();
        CHECK(x.grad().dtype() == dt);
        CHECK(w.grad().dtype() == dt);
    }
}

// ------------------------------------------------------------------------------ gradcheck helpers

TEST_CASE("numerical_log_abs_det matches the determinant of a linear map", "[ops][gradcheck]") {
    // f(x) = x A with det A = 2*3 - 1*4 = 2.
    const Tensor A = Tensor::from_vector({2, 2}, {2, 1, 4, 3}, DType::f64);
    auto f = [&](const Tensor& x) { return kern::matmul(x, A); };
    const double ld = numerical_log_abs_det(f, Tensor::from_vector({1, 2}, {0.3, -0.7}, DType::f64));
    CHECK(ld == Approx(std::log(2.0)).epsilon(1e-8));
    // An elementwise map: log|det| = sum log|f'|.
    auto g = [](const Tensor& x) { return kern::exp(x); };
    const Tensor x = Tensor::from_vector({1, 3}, {0.1, 0.2, -0.5}, DType::f64);
    CHECK(numerical_log_abs_det(g, x) == Approx(-0.2).margin(1e-8));
    // A singular map.
    auto s = [](const Tensor& x) { return kern::mul(x, Tensor::from_vector({2}, {1, 0}, DType::f64)); };
    CHECK(numerical_log_abs_det(s, Tensor::from_vector({1, 2}, {1, 1}, DType::f64)) ==
          -std::numeric_limits<double>::infinity());
}
