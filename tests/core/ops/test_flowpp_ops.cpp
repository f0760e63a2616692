// The core ops Flow++'s conditioner is built from: softmax (ops/softmax.cpp) and batched_matmul
// (ops/batched_matmul.cpp) for attention, concat_elu (ops/concat_elu.cpp) for its gated
// convolutions. Values against plain loops (f32's vectorised exponential included), gradients
// against finite differences.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include <flowlab/autodiff.hpp>
#include <flowlab/errors.hpp>
#include <flowlab/gradcheck.hpp>
#include <flowlab/kernels.hpp>
#include <flowlab/ops.hpp>
#include <flowlab/rng.hpp>

using namespace flowlab;

namespace {

Tensor rnd(Shape s, std::uint64_t seed, double scale = 1.0, DType dt = DType::f64) {
    Tensor t = Tensor::empty(std::move(s), DType::f64);
    Rng r(seed);
    r.fill_normal(t, 0.0, scale);
    return t.to(dt);
}

}  // namespace

TEST_CASE("softmax normalises along its dimension, stably, with a correct gradient", "[ops][softmax]") {
    const Tensor x = rnd({2, 3, 4}, 1, 2.0);
    for (std::int64_t dim : {0, 1, 2, -1}) {
        INFO("dim " << dim);
        const Tensor y = softmax(Var(x), dim).value();
        const std::int64_t d = dim < 0 ? dim + 3 : dim;
        // A plain reference: exp(x) / sum exp(x) over dim.
        for (std::int64_t i = 0; i < x.numel(); ++i) {
            const std::int64_t idx[3] = {i / 12, (i / 4) % 3, i % 4};
            double s = 0;
            for (std::int64_t k = 0; k < x.size(d); ++k) {
                std::int64_t j[3] = {idx[0], idx[1], idx[2]};
                j[d] = k;
                s += std::exp(x.item(j[0] * 12 + j[1] * 4 + j[2]));
            }
            CHECK(y.item(i) == Approx(std::exp(x.item(i)) / s).epsilon(1e-12));
        }
        auto res = gradcheck([dim](const std::vector<Var>& v) { return softmax(v[0], dim); }, {x});
        INFO(res.worst);
        CHECK(res.ok(1e-7));
    }
    // Large logits do not overflow; f32 keeps its dtype.
    Tensor big = Tensor::from_vector({1, 3}, {1000.0, 999.0, -1000.0}, DType::f32);
    Tensor yb = softmax(Var(big), 1).value();
    CHECK(yb.dtype() == DType::f32);
    CHECK(yb.item(0) == Approx(1.0 / (1.0 + std::exp(-1.0))).epsilon(1e-6));
    CHECK(yb.item(2) < 1e-37);  // e^-2000 as f32's exponential gives it: 1.6e-38 at most
    CHECK_THROWS_AS(softmax(Var(big), 2), ShapeError);
}

TEST_CASE("batched_matmul is one matmul per batch item, with correct gradients for every transpose",
          "[ops][batched_matmul]") {
    const std::int64_t N = 3, M = 5, K = 4, L = 6;
    for (bool ta : {false, true})
        for (bool tb : {false, true}) {
            DYNAMIC_SECTION("trans_a " << ta << " trans_b " << tb) {
                const Tensor a = rnd(ta ? Shape{N, K, M} : Shape{N, M, K}, 10 + 2 * ta + tb);
                const Tensor b = rnd(tb ? Shape{N, L, K} : Shape{N, K, L}, 20 + 2 * ta + tb);
                for (DType dt : {DType::f64, DType::f32}) {
                    const Tensor c = batched_matmul(Var(a.to(dt)), Var(b.to(dt)), ta, tb).value();
                    REQUIRE(c.shape() == Shape{N, M, L});
                    for (std::int64_t n = 0; n < N; ++n) {
                        const Tensor an = a.rows(n, 1).reshape(ta ? Shape{K, M} : Shape{M, K});
                        const Tensor bn = b.rows(n, 1).reshape(tb ? Shape{L, K} : Shape{K, L});
                        const Tensor ref = matmul(Var(an), Var(bn), ta, tb).value();
                        for (std::int64_t i = 0; i < M * L; ++i)
                            CHECK(c.item(n * M * L + i) == Approx(ref.item(i)).margin(dt == DType::f32 ? 1e-5 : 1e-13));
                    }
                }
                auto res = gradcheck(
                    [ta, tb](const std::vector<Var>& v) { return batched_matmul(v[0], v[1], ta, tb); }, {a, b});
                INFO(res.worst);
                CHECK(res.ok(1e-7));
            }
        }
    CHECK_THROWS_AS(batched_matmul(Var(rnd({2, 3, 4}, 1)), Var(rnd({3, 4, 5}, 2))), ShapeError);
    CHECK_THROWS_AS(batched_matmul(Var(rnd({2, 3, 4}, 1)), Var(rnd({2, 3, 5}, 2))), ShapeError);
    CHECK_THROWS_AS(batched_matmul(Var(rnd({3, 4}, 1)), Var(rnd({4, 5}, 2))), ShapeError);
}

TEST_CASE("f32 batched_matmul of many small products runs on the pool and matches f64", "[ops][batched_matmul]") {
    // The attention shape: 64 samples' scores [P, d] x [d, P].
    const Tensor q = rnd({64, 49, 8}, 3), k = rnd({64, 49, 8}, 4);
    const Tensor c32 = batched_matmul(Var(q.to(DType::f32)), Var(k.to(DType::f32)), false, true).value();
    const Tensor c64 = batched_matmul(Var(q), Var(k), false, true).value();
    double worst = 0;
    for (std::int64_t i = 0; i < c64.numel(); ++i) worst = std::max(worst, std::fabs(c32.item(i) - c64.item(i)));
    CHECK(worst < 1e-4);
}

TEST_CASE("f32 softmax and concat_elu, with their vectorised exponential, match f64", "[ops][softmax][concat_elu]") {
    // The f64 reference sees the same rounded inputs; x - max rounds in f32 by up to 2.4e-6
    // relative at the smallest weights (e^-40), whatever the exponential.
    const Tensor x = rnd({7, 3, 100}, 5, 6.0).to(DType::f32).to(DType::f64);
    const Tensor s64 = softmax(Var(x), 2).value();
    const Tensor s32 = softmax(Var(x.to(DType::f32)), 2).value();
    double worst = 0;
    for (std::int64_t i = 0; i < x.numel(); ++i)
        worst = std::max(worst, std::fabs(s32.item(i) - s64.item(i)) / std::max(1e-30, s64.item(i)));
    CHECK(worst < 5e-6);
    const Tensor e64 = concat_elu(Var(x), 1).value();
    const Tensor e32 = concat_elu(Var(x.to(DType::f32)), 1).value();
    CHECK(kern::max_abs_diff(e32.to(DType::f64), e64) < 2e-6);
    // Exponents far below -87 give (almost) 0 and -1, not NaN.
    Tensor far = Tensor::from_vector({1, 3}, {0.0, -200.0, 300.0}, DType::f32);
    const Tensor sf = softmax(Var(far), 1).value();
    CHECK(sf.item(2) == Approx(1.0));
    CHECK(sf.item(1) < 1e-37);
    const Tensor ef = concat_elu(Var(far), 1).value();
    CHECK(ef.item(1) == -1.0f);
    CHECK(ef.item(5) == -1.0f);
}

TEST_CASE("f32 softmax along an inner dimension and f32 sigmoid, vectorised, match f64 with their gradients",
          "[ops][softmax][sigmoid]") {
    // A mixture's component weights: softmax over dimension 1 of [B, K, C, H, W], the strided
    // path, with inner sizes below and above a vector's width.
    for (const Shape& shape : {Shape{3, 5, 2, 3, 1}, Shape{2, 4, 3, 7, 5}}) {
        INFO("shape " << shape.size() << "-d, inner " << shape[2] * shape[3] * shape[4]);
        const Tensor x = rnd(shape, 7, 4.0).to(DType::f32).to(DType::f64);
        const Tensor r = rnd(shape, 8);
        Tensor vals[2], grads[2];
        for (DType dt : {DType::f64, DType::f32}) {
            Var xv(x.to(dt), true);
            Var y = softmax(xv, 1);
            sum_all(y * Var(r.to(dt))).backward();
            vals[dt == DType::f32] = y.value().to(DType::f64);
            grads[dt == DType::f32] = xv.grad().to(DType::f64);
        }
        CHECK(kern::max_abs_diff(vals[0], vals[1]) < 2e-6);
        CHECK(kern::max_abs_diff(grads[0], grads[1]) < 2e-5);
        // Every column sums to one.
        const Tensor sums = sum(Var(vals[1]), 1).value();
        for (std::int64_t i = 0; i < sums.numel(); ++i) CHECK(sums.item(i) == Approx(1.0).epsilon(1e-6));
    }
    // The sigmoid and the ops whose backward is one (softplus, log_sigmoid), over a range that
    // reaches both branches and both tails.
    Tensor x = rnd({4, 257}, 9, 12.0).to(DType::f32).to(DType::f64);
    x.set_item(0, 0.0);
    x.set_item(1, -120.0);
    x.set_item(2, 120.0);
    for (int op = 0; op < 3; ++op) {
        INFO("op " << op);
        Tensor vals[2], grads[2];
        for (DType dt : {DType::f64, DType::f32}) {
            Var xv(x.to(dt), true);
            Var y = op == 0 ? sigmoid(xv) : op == 1 ? softplus(xv) : log_sigmoid(xv);
            sum_all(y).backward();
            vals[dt == DType::f32] = y.value().to(DType::f64);
            grads[dt == DType::f32] = xv.grad().to(DType::f64);
        }
        CHECK(kern::max_abs_diff(vals[0], vals[1]) < 2e-5 * (op == 0 ? 1.0 : 120.0));
        CHECK(kern::max_abs_diff(grads[0], grads[1]) < 1e-6);
        for (std::int64_t i = 0; i < x.numel(); ++i) CHECK(std::isfinite(grads[1].item(i)));
    }
    const Tensor s = sigmoid(Var(x.to(DType::f32))).value();
    CHECK(s.item(0) == 0.5);
    CHECK(s.item(1) == 0.0);
    CHECK(s.item(2) == 1.0);
}

TEST_CASE("concat_elu is elu of the input and its negation, joined, with a correct gradient", "[ops][concat_elu]") {
    const Tensor x = rnd({2, 3, 4}, 6, 1.5);
    for (std::int64_t dim : {0, 1, 2}) {
        INFO("dim " << dim);
        const Tensor y = concat_elu(Var(x), dim).value();
        const Tensor ref = elu(concat({Var(x), -Var(x)}, dim)).value();
        REQUIRE(y.shape() == ref.shape());
        CHECK(kern::max_abs_diff(y, ref) < 1e-15);
        auto res = gradcheck([dim](const std::vector<Var>& v) { return concat_elu(v[0], dim); }, {x});
        INFO(res.worst);
        CHECK(res.ok(1e-7));
    }
}
