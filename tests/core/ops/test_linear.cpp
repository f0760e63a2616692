// The linear layers (ops/linear.cpp; linear_relu with the ReLU in the GEMM's epilogue) against
// the same maths as separate ops, in f64 and in f32, over skinny shapes (vector loops) and wide
// ones (oneDNN, split into tiles).
#include <catch2/catch.hpp>

#include <flowlab/autodiff.hpp>
#include <flowlab/gradcheck.hpp>
#include <flowlab/kernels.hpp>
#include <flowlab/ops.hpp>
#include <flowlab/rng.hpp>

using namespace flowlab;

namespace {

Tensor rnd(Shape s, std::uint64_t seed, DType dt = DType::f64) {
    Tensor t = Tensor::empty(std::move(s), DType::f64);
    Rng r(seed);
    r.fill_uniform(t, -1.0, 1.0);
    return t.to(dt);
}

struct Result {
    std::vector<Tensor> t;  // y, dx, dw, db
};

// relu?(x w + b) through linear / linear_relu, or as matmul, add and relu.
Result run(bool fused, bool relu, DType dt, const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& gy) {
    Var vx(x.to(dt), true), vw(w.to(dt), true), vb(b.to(dt), true);
    Var y;
    if (fused)
        y = relu ? linear_relu(vx, vw, vb) : linear(vx, vw, vb);
    else {
        y = add(matmul(vx, vw), vb);
        if (relu) y = flowlab::relu(y);
    }
    y.backward(gy.to(dt));
    return {{y.value(), vx.grad(), vw.grad(), vb.grad()}};
}

}  // namespace

TEST_CASE("linear layers equal the separate ops on every path", "[ops][linear]") {
    struct Case {
        std::int64_t rows, k, n;
    };
    // k or n <= 4: skinny (vector loops); the rest wide (oneDNN, the 512 x 128 x 128 one in tiles).
    const std::vector<Case> cases = {{37, 1, 128}, {64, 2, 33}, {5, 4, 9}, {37, 128, 2}, {19, 33, 1},
                                     {512, 128, 128}, {37, 19, 23}};
    std::uint64_t seed = 100;
    for (const Case& c : cases)
        for (bool relu : {false, true}) {
            const Tensor x = rnd({c.rows, c.k}, ++seed), w = rnd({c.k, c.n}, ++seed), b = rnd({c.n}, ++seed);
            const Tensor gy = rnd({c.rows, c.n}, ++seed);
            const Result ref = run(false, relu, DType::f64, x, w, b, gy);
            for (DType dt : {DType::f32, DType::f64}) {
                const Result got = run(true, relu, dt, x, w, b, gy);
                const Result sep = run(false, relu, dt, x, w, b, gy);
                for (std::size_t i = 0; i < 4; ++i) {
                    INFO("rows " << c.rows << " k " << c.k << " n " << c.n << (relu ? " relu" : "") << " "
                                 << dtype_name(dt) << " output " << i);
                    CHECK(got.t[i].dtype() == dt);
                    CHECK(kern::max_abs_diff(got.t[i], ref.t[i]) < 1e-4);
                    CHECK(kern::max_abs_diff(got.t[i], sep.t[i]) < 1e-4);
                }
            }
        }
}

TEST_CASE("linear_relu keeps NaN and sums a shared weight's gradients", "[ops][linear]") {
    Tensor x = rnd({8, 2}, 7, DType::f32);
    x.set_item(3, std::nan(""));
    Var y = linear_relu(Var(x), Var(rnd({2, 16}, 8, DType::f32)), Var(rnd({16}, 9, DType::f32)));
    CHECK_FALSE(kern::all_finite(y.value()));  // a diverged input stays visible through the ReLU

    // One weight used by two layers: both gradients add up in it, as with separate ops.
    const Tensor x1 = rnd({16, 2}, 10), w1 = rnd({2, 2}, 11);
    auto two_layers = [](const std::vector<Var>& v) { return linear_relu(linear_relu(v[0], v[1]), v[1]); };
    GradCheckResult r = gradcheck(two_layers, {x1, w1});
    CHECK(r.ok(1e-5));
}
