// The linear layers (ops/linear.cpp; linear_relu with the ReLU in the GEMM's epilogue) against
// the same maths as separate ops, in f64 and in f32, over skinny shapes (vector loops) and wide
// ones (oneDNN, split into tiles).
#include <catch2/catch.hpp>

#include <cmath>

#include <flowlab/autodiff.hpp>
#include <flowlab/gradcheck.hpp>
#include <flowlab/kernels.hpp>
#include <flowlab/ops.hpp>
#include <flowlab/parallel.hpp>
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

namespace {

// The support as a 0/1 matrix [in, out].
Tensor support_matrix(const WeightSupport& s) {
    Tensor m = Tensor::zeros({s.in(), s.out()}, DType::f64);
    for (std::int64_t j = 0; j < s.column_blocks(); ++j)
        for (const auto& r : s.rows(j))
            for (std::int64_t i = r.begin; i < r.end; ++i)
                for (std::int64_t c = j * s.block(); c < std::min(s.out(), (j + 1) * s.block()); ++c)
                    m.set_item(i * s.out() + c, 1.0);
    return m;
}

}  // namespace

TEST_CASE("block_sparse_linear equals the dense layer on a masked weight", "[ops][linear]") {
    struct Case {
        std::int64_t rows, in, out;
        int mask;  // 0: staircase in two runs (MADE-like), 1: staircase with empty first blocks, 2: random
    };
    const std::vector<Case> cases = {{7, 300, 400, 0}, {100, 784, 300, 0}, {600, 200, 520, 0},
                                     {33, 260, 390, 1}, {20, 150, 140, 2},  {5, 3, 4, 0}};
    std::uint64_t seed = 500;
    for (const Case& c : cases) {
        Rng r(++seed);
        const std::int64_t period = std::max<std::int64_t>(1, c.in * 2 / 3);
        std::vector<char> keep_bits(static_cast<std::size_t>(c.in * c.out));
        for (std::int64_t i = 0; i < c.in; ++i)
            for (std::int64_t j = 0; j < c.out; ++j) {
                bool k = false;
                if (c.mask == 0) k = (j % period) * c.in / period >= i;
                if (c.mask == 1) k = j - 200 > i;
                if (c.mask == 2) k = r.uniform() < 0.5;
                keep_bits[static_cast<std::size_t>(i * c.out + j)] = k;
            }
        auto keep = [&](std::int64_t i, std::int64_t j) { return keep_bits[static_cast<std::size_t>(i * c.out + j)] != 0; };
        const auto support = WeightSupport::from_mask(c.in, c.out, keep);
        INFO("rows " << c.rows << " in " << c.in << " out " << c.out << " mask " << c.mask << " density "
                     << support->density());
        if (c.mask == 2) CHECK(support->dense());
        if (c.in == 784) CHECK(support->density() < 0.8);
        Tensor w = rnd({c.in, c.out}, ++seed);
        for (std::int64_t i = 0; i < c.in; ++i)
            for (std::int64_t j = 0; j < c.out; ++j)
                if (!keep(i, j)) w.set_item(i * c.out + j, 0.0);
        const Tensor x = rnd({c.rows, c.in}, ++seed), b = rnd({c.out}, ++seed), gy = rnd({c.rows, c.out}, ++seed);
        const Tensor inside = support_matrix(*support);
        std::int64_t missed = 0;  // kept entries outside the support
        for (std::int64_t i = 0; i < c.in; ++i)
            for (std::int64_t j = 0; j < c.out; ++j) missed += keep(i, j) && inside.item(i * c.out + j) == 0.0;
        CHECK(missed == 0);
        for (bool relu : {false, true}) {
            const Result ref = run(false, relu, DType::f64, x, w, b, gy);
            for (DType dt : {DType::f32, DType::f64}) {
                // The input is used twice, the weight gradient once: x's gradient accumulates.
                Var vx(x.to(dt), true), vw(w.to(dt), true), vb(b.to(dt), true);
                Var y = block_sparse_linear(vx, vw, vb, support, relu);
                Var loss = add(sum_all(mul(y, Var(gy.to(dt)))), sum_all(vx));
                loss.backward();
                INFO((relu ? "relu " : "") << dtype_name(dt));
                CHECK(kern::max_abs_diff(y.value(), ref.t[0]) < 1e-4);
                CHECK(kern::max_abs_diff(vx.grad(), kern::add(ref.t[1], Tensor::full(x.shape(), 1.0, DType::f64))) < 1e-4);
                // w's gradient: the dense one inside the support, zero outside.
                CHECK(kern::max_abs_diff(vw.grad(), kern::mul(ref.t[2], inside)) < 1e-4);
                CHECK(kern::max_abs_diff(vb.grad(), ref.t[3]) < 1e-4);
            }
        }
    }
}

TEST_CASE("block_sparse_linear gives the same bits on 1 and 2 threads", "[ops][linear]") {
    const std::int64_t in = 500, out = 700;
    auto keep = [](std::int64_t i, std::int64_t j) { return (j % 499) >= i; };
    const auto support = WeightSupport::from_mask(in, out, keep);
    REQUIRE_FALSE(support->dense());
    Tensor w = rnd({in, out}, 1, DType::f32);
    for (std::int64_t i = 0; i < in; ++i)
        for (std::int64_t j = 0; j < out; ++j)
            if (!keep(i, j)) w.set_item(i * out + j, 0.0);
    const Tensor x = rnd({300, in}, 2, DType::f32), gy = rnd({300, out}, 3, DType::f32);
    auto pass = [&](int threads) {
        set_num_threads(threads);
        Var vx(x, true), vw(w, true);
        Var y = block_sparse_linear(vx, vw, Var(), support, true);
        y.backward(gy);
        return std::vector<Tensor>{y.value(), vx.grad(), vw.grad()};
    };
    const auto one = pass(1), two = pass(2);
    set_num_threads(0);
    for (std::size_t i = 0; i < one.size(); ++i) CHECK(kern::max_abs_diff(one[i], two[i]) == 0.0);
}

TEST_CASE("block_sparse_linear rejects a weight that does not match its support", "[ops][linear]") {
    const auto support = WeightSupport::from_mask(4, 6, [](std::int64_t i, std::int64_t j) { return i < j; });
    Var x(rnd({2, 4}, 1, DType::f32)), w(rnd({4, 5}, 2, DType::f32));
    CHECK_THROWS_WITH(block_sparse_linear(x, w, Var(), support), Catch::Contains("does not match its support"));
    CHECK_THROWS_WITH(block_sparse_linear(x, w, Var(), nullptr), Catch::Contains("no support"));
}

namespace {

// An MLP's inputs (x, then w and b per layer) of the given widths, seeded.
std::vector<Tensor> mlp_inputs(std::int64_t rows, const std::vector<std::int64_t>& widths, std::uint64_t seed) {
    std::vector<Tensor> in = {rnd({rows, widths[0]}, seed)};
    for (std::size_t l = 0; l + 1 < widths.size(); ++l) {
        const double scale = 1.0 / std::sqrt(static_cast<double>(widths[l]));
        in.push_back(kern::scale(rnd({widths[l], widths[l + 1]}, seed + 2 * l + 1), scale));
        in.push_back(kern::scale(rnd({widths[l + 1]}, seed + 2 * l + 2), 0.3));
    }
    return in;
}

// y and every input's gradient for mlp_stack (stack) or the chain of linear_relu / linear ops,
// in `dt`; `grad` says which inputs take a gradient; `twice` runs the backward pass twice, so
// the second accumulates into the gradients of the first.
std::vector<Tensor> run_mlp(bool stack, const std::vector<Tensor>& in, DType dt, const std::vector<bool>& grad,
                            bool twice = false) {
    std::vector<Var> v;
    for (std::size_t i = 0; i < in.size(); ++i) v.emplace_back(in[i].to(dt), grad[i]);
    std::vector<Var> w, b;
    for (std::size_t i = 1; i < v.size(); i += 2) {
        w.push_back(v[i]);
        b.push_back(v[i + 1]);
    }
    Var y;
    if (stack) {
        y = mlp_stack(v[0], w, b);
    } else {
        y = v[0];
        for (std::size_t l = 0; l < w.size(); ++l) y = l + 1 < w.size() ? linear_relu(y, w[l], b[l]) : linear(y, w[l], b[l]);
    }
    std::vector<Tensor> out = {y.value()};
    const Tensor gy = rnd(y.shape(), 77, dt);
    y.backward(gy);
    if (twice) y.backward(gy);
    for (std::size_t i = 0; i < v.size(); ++i)
        if (grad[i]) out.push_back(v[i].grad());
    return out;
}

std::vector<bool> all_grads(std::size_t n) { return std::vector<bool>(n, true); }

}  // namespace

TEST_CASE("mlp_stack gives the chain's bits when its blocks are the GEMM's tiles", "[ops][linear]") {
    // A 2-d coupling's conditioner at batch 512 (W1): the 128-wide products split into 128-row
    // tiles, the narrow layers on vector loops. Every input's gradient, once and accumulated.
    // The products that skip the ReLU's zeros (backend::sgemm_sparse) run on the hidden layer;
    // with the second hidden layer's biases lowered, its gated gradient is the sparser operand
    // of the weight gradient, which then runs in column tiles that skip it; with them raised,
    // its gradient has no zeros to skip and the products run dense (on the transposed weights).
    // On 2 threads the 128-wide weight gradient runs as two partial sums over the batch's halves
    // (the chain blocks of oneDNN's product), on 1 as whole tiles.
    const std::vector<Tensor> base = mlp_inputs(512, {1, 128, 128, 2}, 900);
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        for (double shift : {0.0, -0.6, 5.0}) {
            std::vector<Tensor> in = base;
            in[4] = kern::add_scalar(in[4], shift);
            for (bool twice : {false, true}) {
                const std::vector<Tensor> a = run_mlp(true, in, DType::f32, all_grads(in.size()), twice);
                const std::vector<Tensor> b = run_mlp(false, in, DType::f32, all_grads(in.size()), twice);
                REQUIRE(a.size() == b.size());
                for (std::size_t i = 0; i < a.size(); ++i) {
                    INFO(threads << " threads, output " << i << (twice ? ", accumulated" : "")
                                 << ", biases shifted by " << shift);
                    CHECK(kern::max_abs_diff(a[i], b[i]) == 0.0);
                }
            }
        }
    }
    set_num_threads(0);
}

TEST_CASE("mlp_stack continues its batch sums block by block with the chain's bits", "[ops][linear]") {
    // On 2 threads the bias gradients and the narrow layers' weight gradients (1 -> 128 in the
    // axpy form, 128 -> 3 in the transposed dot form) are summed one chain block at a time,
    // each block on its rows' thread, carrying the previous blocks' running sums: over 640
    // rows, three chain blocks of 256 (the last one short), on 2 threads two of them homed on
    // the same thread.
    const std::vector<Tensor> in = mlp_inputs(640, {1, 128, 128, 3}, 930);
    for (int threads : {2, 3}) {
        set_num_threads(threads);
        const std::vector<Tensor> a = run_mlp(true, in, DType::f32, all_grads(in.size()));
        set_num_threads(1);
        const std::vector<Tensor> one = run_mlp(true, in, DType::f32, all_grads(in.size()));
        const std::vector<Tensor> b = run_mlp(false, in, DType::f32, all_grads(in.size()));
        REQUIRE(a.size() == b.size());
        for (std::size_t i = 0; i < a.size(); ++i) {
            INFO(threads << " threads, output " << i);
            CHECK(kern::max_abs_diff(a[i], b[i]) == 0.0);
            CHECK(kern::max_abs_diff(one[i], b[i]) == 0.0);
        }
    }
    set_num_threads(0);
}

TEST_CASE("mlp_stack matches the chain of linear ops on any widths", "[ops][linear]") {
    struct Case {
        std::int64_t rows;
        std::vector<std::int64_t> widths;
    };
    // 700 rows in 144-row blocks (the last one short), a deep stack, context-wide inputs, one
    // output; and shapes the op runs as the chain (a batch too small to split, a single layer).
    const std::vector<Case> cases = {{700, {3, 160, 96, 5}}, {1000, {2, 64, 64, 64, 64, 4}},
                                     {600, {40, 200, 1}},     {16, {2, 128, 128, 2}},
                                     {300, {5, 7}}};
    std::uint64_t seed = 950;
    for (const Case& c : cases) {
        INFO("rows " << c.rows << " layers " << c.widths.size() - 1);
        const std::vector<Tensor> in = mlp_inputs(c.rows, c.widths, seed += 20);
        const auto grads = all_grads(in.size());
        const std::vector<Tensor> ref = run_mlp(false, in, DType::f64, grads);
        const std::vector<Tensor> got = run_mlp(true, in, DType::f32, grads);
        const std::vector<Tensor> chain = run_mlp(false, in, DType::f32, grads);
        for (std::size_t i = 0; i < got.size(); ++i) {
            INFO("output " << i);
            CHECK(got[i].dtype() == DType::f32);
            CHECK(kern::max_abs_diff(got[i].to(DType::f64), ref[i]) < 1e-4);
            CHECK(kern::max_abs_diff(got[i], chain[i]) < 1e-5);
        }
        // f64 runs the chain itself.
        const std::vector<Tensor> f64 = run_mlp(true, in, DType::f64, grads);
        for (std::size_t i = 0; i < f64.size(); ++i) CHECK(kern::max_abs_diff(f64[i], ref[i]) == 0.0);
    }
}

TEST_CASE("mlp_stack differentiates only what asks for it, the same on 1 and 2 threads", "[ops][linear]") {
    const std::vector<Tensor> in = mlp_inputs(700, {3, 160, 96, 5}, 990);
    // Only x (frozen layers), only the last layer, only the first layer's bias.
    std::vector<bool> only_x(in.size(), false), only_last(in.size(), false), only_b0(in.size(), false);
    only_x[0] = true;
    only_last[in.size() - 2] = only_last[in.size() - 1] = true;
    only_b0[2] = true;
    for (const auto& grads : {only_x, only_last, only_b0}) {
        const std::vector<Tensor> got = run_mlp(true, in, DType::f32, grads);
        const std::vector<Tensor> chain = run_mlp(false, in, DType::f32, grads);
        REQUIRE(got.size() == chain.size());
        for (std::size_t i = 0; i < got.size(); ++i) CHECK(kern::max_abs_diff(got[i], chain[i]) < 1e-5);
    }
    set_num_threads(1);
    const std::vector<Tensor> one = run_mlp(true, in, DType::f32, all_grads(in.size()));
    set_num_threads(2);
    const std::vector<Tensor> two = run_mlp(true, in, DType::f32, all_grads(in.size()));
    set_num_threads(0);
    for (std::size_t i = 0; i < one.size(); ++i) {
        INFO("output " << i);
        CHECK(kern::max_abs_diff(one[i], two[i]) == 0.0);
    }
    // Without a gradient (sampling) the same values.
    NoGradGuard guard;
    std::vector<Var> w, b;
    for (std::size_t i = 1; i < in.size(); i += 2) {
        w.emplace_back(in[i].to(DType::f32));
        b.emplace_back(in[i + 1].to(DType::f32));
    }
    CHECK(kern::max_abs_diff(mlp_stack(Var(in[0].to(DType::f32)), w, b).value(), one[0]) == 0.0);
}

TEST_CASE("mlp_stack sums a weight that two of its layers share", "[ops][linear]") {
    // One 128 x 128 weight and bias used by both hidden layers (the chain runs it: two tasks
    // must not write one gradient at once); its gradient is the sum of the two layers'.
    const std::vector<Tensor> in = mlp_inputs(512, {128, 128, 128, 2}, 1200);
    auto run = [&](bool stack) {
        Var x(in[0].to(DType::f32), true), w(in[1].to(DType::f32), true), b(in[2].to(DType::f32), true);
        Var w2(in[5].to(DType::f32), true), b2(in[6].to(DType::f32), true);
        Var y = stack ? mlp_stack(x, {w, w, w2}, {b, b, b2})
                      : linear(linear_relu(linear_relu(x, w, b), w, b), w2, b2);
        // Twice: the second pass accumulates into the gradients the first one left.
        const Tensor gy = rnd(y.shape(), 78, DType::f32);
        y.backward(gy);
        y.backward(gy);
        return std::vector<Tensor>{y.value(), x.grad(), w.grad(), b.grad()};
    };
    const std::vector<Tensor> got = run(true), chain = run(false);
    for (std::size_t i = 0; i < got.size(); ++i) {
        INFO("output " << i);
        CHECK(kern::max_abs_diff(got[i], chain[i]) == 0.0);
    }
}
