// conv2d, conv1x1, layout moves and masks (core/src/ops_conv.cpp): the f32 paths (oneDNN
// convolutions and the GEMM formulations) against a naive loop, and every backward rule against
// finite differences in f64.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "flowlab/conv.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/gradcheck.hpp"
#include "flowlab/ops.hpp"
#include "flowlab/parallel.hpp"
#include "flowlab/rng.hpp"

using namespace flowlab;

namespace {

Tensor randn(const Shape& s, std::uint64_t seed, DType dt = DType::f32, double scale = 1.0) {
    Tensor t = Tensor::empty(s, DType::f64);
    Rng rng(seed);
    rng.fill_normal(t, 0.0, scale);
    return t.to(dt);
}

// max |a - b| / max(1, |b|) over elements.
double rel_diff(const Tensor& a, const Tensor& b) {
    REQUIRE(a.shape() == b.shape());
    double worst = 0.0;
    for (std::int64_t i = 0; i < a.numel(); ++i)
        worst = std::max(worst, std::fabs(a.item(i) - b.item(i)) / std::max(1.0, std::fabs(b.item(i))));
    return worst;
}

Tensor relu_ref(Tensor t) {
    for (std::int64_t i = 0; i < t.numel(); ++i)
        if (t.item(i) < 0) t.set_item(i, 0.0);
    return t;
}

struct Case {
    std::int64_t b, c, h, w, o, k, stride, pad;
    bool bias;
};

std::string describe(const Case& c) {
    return "x [" + std::to_string(c.b) + "," + std::to_string(c.c) + "," + std::to_string(c.h) + "," +
           std::to_string(c.w) + "] -> " + std::to_string(c.o) + " channels, k" + std::to_string(c.k) + " stride " +
           std::to_string(c.stride) + " pad " + std::to_string(c.pad) + (c.bias ? " with bias" : " no bias");
}

// Shapes that reach every f32 path: oneDNN convolutions (strided, wide), the 1x1 GEMM, the
// thin-input and thin-output GEMMs.
const std::vector<Case> kCases = {
    {2, 3, 7, 6, 5, 3, 1, 1, true},     // thin in, "same"
    {2, 3, 7, 6, 5, 3, 2, 0, true},     // strided: oneDNN
    {3, 16, 5, 5, 16, 1, 1, 0, false},  // 1x1
    {2, 4, 6, 6, 24, 5, 1, 2, true},    // 5x5 "same"
    {2, 24, 6, 5, 4, 3, 1, 1, true},    // thin out
    {1, 40, 4, 4, 40, 3, 1, 1, true},   // wide 3x3: oneDNN
    {2, 2, 5, 7, 3, 3, 1, 0, true},     // "valid" padding
};

// What a layout case is for.
enum class Use {
    gradcheck,  // small enough for the finite-difference check, which perturbs every input element in turn
    fast_path,  // a fast f32 path, whose backward the f64 gradcheck does not reach
};

// A case run with given input and output layouts, and with or without the fused relu.
struct LayoutCase {
    Use use;
    Case c;
    ConvLayout li, lo;
    bool relu;
};

const std::vector<LayoutCase> kLayoutCases = {
    {Use::gradcheck, {2, 3, 5, 4, 2, 3, 1, 1, true}, ConvLayout::nchw, ConvLayout::nchw, false},
    {Use::gradcheck, {1, 2, 5, 5, 3, 3, 2, 1, true}, ConvLayout::nchw, ConvLayout::nchw, false},
    {Use::gradcheck, {2, 2, 4, 3, 2, 1, 1, 0, false}, ConvLayout::nchw, ConvLayout::nchw, false},
    {Use::gradcheck, {1, 3, 4, 4, 2, 3, 1, 1, true}, ConvLayout::nhwc, ConvLayout::nchw, true},
    {Use::gradcheck, {1, 8, 3, 3, 8, 3, 1, 1, true}, ConvLayout::blocked8, ConvLayout::nhwc, false},
    // In order: (thin in, nchw -> nhwc), (1x1, nhwc), (thin out, nhwc -> nchw),
    // (oneDNN, nhwc 3x3 wide), (oneDNN, strided nchw).
    {Use::fast_path, {3, 2, 6, 6, 32, 3, 1, 1, true}, ConvLayout::nchw, ConvLayout::nhwc, true},
    {Use::fast_path, {3, 32, 6, 6, 32, 1, 1, 0, true}, ConvLayout::nhwc, ConvLayout::nhwc, true},
    {Use::fast_path, {3, 32, 6, 6, 4, 3, 1, 1, true}, ConvLayout::nhwc, ConvLayout::nchw, false},
    {Use::fast_path, {2, 24, 5, 5, 24, 3, 1, 1, true}, ConvLayout::nhwc, ConvLayout::nhwc, true},
    {Use::fast_path, {2, 3, 7, 7, 5, 3, 2, 1, true}, ConvLayout::nchw, ConvLayout::nchw, false},
    // The thin side's expand and reduce have unrolled loops for 1-4 and 8 channels and a
    // generic one for the rest; images narrower than the kernel have no interior columns.
    {Use::fast_path, {2, 5, 4, 5, 16, 3, 1, 1, true}, ConvLayout::nhwc, ConvLayout::nhwc, true},
    {Use::fast_path, {2, 2, 3, 2, 16, 5, 1, 2, true}, ConvLayout::nchw, ConvLayout::nhwc, true},
    {Use::fast_path, {2, 16, 4, 6, 5, 5, 1, 2, true}, ConvLayout::nhwc, ConvLayout::nhwc, true},
    {Use::fast_path, {2, 16, 5, 4, 8, 3, 1, 1, false}, ConvLayout::nhwc, ConvLayout::nchw, false},
    {Use::fast_path, {1, 16, 1, 1, 3, 3, 1, 1, true}, ConvLayout::nhwc, ConvLayout::nchw, true},
    // Weight gradients over 4,096 pixels, whose B side outgrows L2: GEMMs tiled by 32 rows.
    {Use::fast_path, {4, 64, 32, 32, 96, 1, 1, 0, true}, ConvLayout::nhwc, ConvLayout::nhwc, true},
    {Use::fast_path, {4, 64, 32, 32, 4, 3, 1, 1, true}, ConvLayout::nhwc, ConvLayout::nchw, false},
};

std::vector<LayoutCase> cases_for(Use use) {
    std::vector<LayoutCase> out;
    for (const LayoutCase& g : kLayoutCases)
        if (g.use == use) out.push_back(g);
    return out;
}

std::string describe(const LayoutCase& g) {
    std::ostringstream os;
    os << describe(g.c) << " relu " << g.relu;
    return os.str();
}

Conv2dOptions options_of(const LayoutCase& g) {
    Conv2dOptions o;
    o.stride = g.c.stride;
    o.padding = g.c.pad;
    o.in_layout = g.li;
    o.out_layout = g.lo;
    o.relu = g.relu;
    return o;
}

// The case's input shape in its input layout.
Shape input_shape(const LayoutCase& g) { return layout_shape({g.c.b, g.c.c, g.c.h, g.c.w}, g.li); }

}  // namespace

TEST_CASE("conv2d in f32 matches a naive loop for every shape, stride and padding", "[conv]") {
    for (const Case& c : kCases) {
        INFO(describe(c));
        Tensor x = randn({c.b, c.c, c.h, c.w}, 1);
        Tensor w = randn({c.o, c.c, c.k, c.k}, 2, DType::f32, 0.3);
        Tensor b = c.bias ? randn({c.o}, 3) : Tensor();
        Tensor ref = kern::conv2d_reference(x.to(DType::f64), w.to(DType::f64), c.bias ? b.to(DType::f64) : Tensor(),
                                            c.stride, c.pad);
        Tensor y = conv2d(Var(x), Var(w), c.bias ? Var(b) : Var(), c.stride, c.pad).value();
        CHECK(y.shape() == ref.shape());
        CHECK(rel_diff(y, ref) < 1e-4);
    }
}

TEST_CASE("conv2d gives the same values in every pair of layouts, with and without a fused relu", "[conv]") {
    const ConvLayout layouts[] = {ConvLayout::nchw, ConvLayout::nhwc, ConvLayout::blocked8};
    const Case cases[] = {{2, 8, 5, 6, 16, 3, 1, 1, true}, {2, 8, 4, 4, 8, 1, 1, 0, true}, {2, 16, 5, 5, 8, 3, 1, 1, true}};
    for (const Case& c : cases)
        for (ConvLayout li : layouts)
            for (ConvLayout lo : layouts)
                for (bool relu : {false, true}) {
                    INFO(describe(c) << " layouts " << int(li) << " -> " << int(lo) << " relu " << relu);
                    Tensor x = randn({c.b, c.c, c.h, c.w}, 4);
                    Tensor w = randn({c.o, c.c, c.k, c.k}, 5, DType::f32, 0.3);
                    Tensor b = randn({c.o}, 6);
                    Tensor ref = kern::conv2d_reference(x, w, b, c.stride, c.pad);
                    if (relu) ref = relu_ref(ref);
                    Conv2dOptions o;
                    o.padding = c.pad;
                    o.in_layout = li;
                    o.out_layout = lo;
                    o.relu = relu;
                    Var xin = to_layout(Var(x), ConvLayout::nchw, li);
                    Tensor y = conv2d(xin, Var(w), Var(b), o).value();
                    CHECK(y.shape() == layout_shape(ref.shape(), lo));
                    Tensor back = to_layout(Var(y), lo, ConvLayout::nchw).value();
                    CHECK(rel_diff(back, ref) < 1e-4);
                }
}

TEST_CASE("conv2d gradients pass a finite-difference check in f64 for inputs, weights and bias", "[conv]") {
    for (const LayoutCase& g : cases_for(Use::gradcheck)) {
        INFO(describe(g));
        const Conv2dOptions o = options_of(g);
        std::vector<Tensor> in = {randn(input_shape(g), 7, DType::f64), randn({g.c.o, g.c.c, g.c.k, g.c.k}, 8, DType::f64, 0.5)};
        if (g.c.bias) in.push_back(randn({g.c.o}, 9, DType::f64));
        auto res = gradcheck(
            [&](const std::vector<Var>& v) { return conv2d(v[0], v[1], v.size() > 2 ? v[2] : Var(), o); }, in);
        INFO(res.worst);
        CHECK(res.ok(1e-6));
    }
}

TEST_CASE("the f32 forward and backward of each conv2d path match the f64 loop's", "[conv]") {
    for (const LayoutCase& p : cases_for(Use::fast_path)) {
        INFO(describe(p));
        const Conv2dOptions o = options_of(p);
        Tensor x = randn(input_shape(p), 10), w = randn({p.c.o, p.c.c, p.c.k, p.c.k}, 11, DType::f32, 0.3), b = randn({p.c.o}, 12);
        std::vector<Tensor> grads[2];
        Tensor values[2];
        for (DType dt : {DType::f32, DType::f64}) {
            Var xv(x.to(dt), true), wv(w.to(dt), true), bv(b.to(dt), true);
            Var y = conv2d(xv, wv, bv, o);
            values[dt == DType::f64] = y.value().to(DType::f64);
            Tensor r = randn(y.shape(), 13, dt);
            sum_all(y * Var(r)).backward();
            grads[dt == DType::f64].push_back(xv.grad().to(DType::f64));
            grads[dt == DType::f64].push_back(wv.grad().to(DType::f64));
            grads[dt == DType::f64].push_back(bv.grad().to(DType::f64));
        }
        CHECK(rel_diff(values[0], values[1]) < 1e-5);
        for (int i = 0; i < 3; ++i) {
            INFO("gradient of input " << i);
            CHECK(rel_diff(grads[0][static_cast<std::size_t>(i)], grads[1][static_cast<std::size_t>(i)]) < 2e-4);
        }
    }
}

TEST_CASE("every conv2d path runs on threads other than the one that made its primitives, and on two at once", "[conv]") {
    // Replicas share the primitive cache across threads; a primitive with the library's
    // scratchpad used the creating thread's buffer (heap corruption on the other thread).
    for (const LayoutCase& p : cases_for(Use::fast_path)) {
        INFO(describe(p));
        const Conv2dOptions o = options_of(p);
        Tensor x = randn(input_shape(p), 20), w = randn({p.c.o, p.c.c, p.c.k, p.c.k}, 21, DType::f32, 0.3), b = randn({p.c.o}, 22);
        auto run = [&] {
            Var xv(x.clone(), true), wv(w.clone(), true), bv(b.clone(), true);
            Var y = conv2d(xv, wv, bv, o);
            sum_all(y * y).backward();
            return std::vector<Tensor>{y.value().clone(), xv.grad(), wv.grad(), bv.grad()};
        };
        const std::vector<Tensor> here = run();  // makes the primitives on this thread
        // On another thread, then on two at once.
        std::vector<Tensor> there, a, b2;
        std::thread t([&] { there = run(); });
        t.join();
        std::thread t1([&] { a = run(); }), t2([&] { b2 = run(); });
        t1.join();
        t2.join();
        for (const auto* got : {&there, &a, &b2}) {
            REQUIRE(got->size() == here.size());
            for (std::size_t i = 0; i < here.size(); ++i) CHECK(rel_diff((*got)[i], here[i]) == 0.0);
        }
    }
}

TEST_CASE("conv2d reports mismatched channels, kernels and bias with both shapes", "[conv]") {
    Var x(Tensor::zeros({1, 3, 4, 4})), w(Tensor::zeros({2, 4, 3, 3}));
    CHECK_THROWS_AS(conv2d(x, w), ShapeError);
    CHECK_THROWS_WITH(conv2d(x, w), Catch::Contains("[2, 4, 3, 3]") && Catch::Contains("3 channels"));
    CHECK_THROWS_AS(conv2d(x, Var(Tensor::zeros({2, 3, 7, 7}))), ShapeError);
    CHECK_THROWS_AS(conv2d(x, Var(Tensor::zeros({2, 3, 3, 3})), Var(Tensor::zeros({3}))), ShapeError);
    CHECK_THROWS_AS(conv2d(Var(Tensor::zeros({3, 4, 4})), Var(Tensor::zeros({2, 3, 3, 3}))), ShapeError);
    CHECK_THROWS_AS(conv2d(x, Var(Tensor::zeros({2, 3, 3, 3}, DType::f64))), ShapeError);
}

TEST_CASE("conv1x1 equals a 1x1 conv2d and its gradients pass a finite-difference check", "[conv]") {
    Tensor x = randn({3, 4, 5, 3}, 20), w = randn({4, 4}, 21);
    Tensor ref = kern::conv2d_reference(x, w.reshape({4, 4, 1, 1}), Tensor(), 1, 0);
    CHECK(rel_diff(conv1x1(Var(x), Var(w)).value(), ref) < 1e-5);
    CHECK(rel_diff(conv1x1(Var(x), Var(w.reshape({4, 4, 1, 1}))).value(), ref) < 1e-5);
    auto res = gradcheck([](const std::vector<Var>& v) { return conv1x1(v[0], v[1]); },
                         {randn({2, 3, 2, 3}, 22, DType::f64), randn({5, 3}, 23, DType::f64)});
    INFO(res.worst);
    CHECK(res.ok(1e-6));
    CHECK_THROWS_AS(conv1x1(Var(x), Var(Tensor::zeros({4, 3}))), ShapeError);
}

TEST_CASE("to_layout round-trips every layout and moves gradients back", "[conv]") {
    Tensor x = randn({2, 16, 3, 5}, 30);
    for (ConvLayout l : {ConvLayout::nhwc, ConvLayout::blocked8}) {
        Var v(x, true);
        Var y = to_layout(v, ConvLayout::nchw, l);
        CHECK(y.shape() == layout_shape(x.shape(), l));
        CHECK(nchw_shape(y.shape(), l) == x.shape());
        Tensor back = to_layout(y, l, ConvLayout::nchw).value();
        CHECK(kern::max_abs_diff(back, x) == 0.0);
        Tensor r = randn(y.shape(), 31);
        sum_all(y * Var(r)).backward();
        // d/dx sum(move(x) * r) = move^-1(r)
        CHECK(kern::max_abs_diff(v.grad(), to_layout(Var(r), l, ConvLayout::nchw).value()) == 0.0);
    }
    // nhwc: element (n, c, h, w) sits at ((n H + h) W + w) C + c.
    Tensor nhwc = to_layout(Var(x), ConvLayout::nchw, ConvLayout::nhwc).value();
    CHECK(nhwc.item(((1 * 3 + 2) * 5 + 4) * 16 + 7) == x.item(((1 * 16 + 7) * 3 + 2) * 5 + 4));
    CHECK_THROWS_AS(layout_shape({1, 12, 2, 2}, ConvLayout::blocked8), ShapeError);
    CHECK_THROWS_AS(nchw_shape({1, 2, 2, 2, 4}, ConvLayout::blocked8), ShapeError);
}

TEST_CASE("checkerboard and channel masks select the documented halves", "[conv]") {
    Tensor cb = checkerboard_mask(3, 4, 0);
    CHECK(cb.shape() == Shape{1, 3, 4});
    CHECK(cb.item(0) == 1.0);            // (0, 0)
    CHECK(cb.item(1) == 0.0);            // (0, 1)
    CHECK(cb.item(1 * 4 + 1) == 1.0);    // (1, 1)
    CHECK(checkerboard_mask(3, 4, 1).item(0) == 0.0);
    CHECK(kern::sum_all(cb) == 6.0);
    Tensor cm = channel_mask(6, 0);
    CHECK(cm.shape() == Shape{6, 1, 1});
    CHECK(cm.to_vector() == std::vector<double>{1, 1, 1, 0, 0, 0});
    CHECK(channel_mask(6, 1).to_vector() == std::vector<double>{0, 0, 0, 1, 1, 1});
}

namespace {

struct StackCase {
    std::int64_t b, c, h, w, hidden, o, k0, k2;
};

// Runs conv_stack on copies of the inputs in `dt` and returns y and the 7 input gradients (f64).
std::vector<Tensor> run_stack(const StackCase& p, DType dt, bool with_grad = true, std::vector<bool> frozen = {}) {
    std::vector<Tensor> in = {randn({p.b, p.c, p.h, p.w}, 40),
                              randn({p.hidden, p.c, p.k0, p.k0}, 41, DType::f32, 0.4),
                              randn({p.hidden}, 42, DType::f32, 0.2),
                              randn({p.hidden, p.hidden, 1, 1}, 43, DType::f32, 0.15),
                              randn({p.hidden}, 44, DType::f32, 0.2),
                              randn({p.o, p.hidden, p.k2, p.k2}, 45, DType::f32, 0.1),
                              randn({p.o}, 46)};
    std::vector<Var> v;
    frozen.resize(in.size(), false);
    for (std::size_t i = 0; i < in.size(); ++i) v.emplace_back(in[i].to(dt), with_grad && !frozen[i]);
    Var y = conv_stack(v[0], v[1], v[2], v[3], v[4], v[5], v[6]);
    std::vector<Tensor> out = {y.value().to(DType::f64)};
    if (!with_grad) return out;
    sum_all(y * Var(randn(y.shape(), 47, dt))).backward();
    for (const Var& x : v) out.push_back(x.requires_grad() ? x.grad().to(DType::f64) : Tensor());
    return out;
}

}  // namespace

TEST_CASE("conv_stack in f32 (fused, a few images at a time) matches the three conv2d in f64", "[conv]") {
    // Glow's level 1 and 2 shapes at small batches, groups that do not divide the batch
    // (256 / 49 = 5 images per group: 7 images are 2 groups), 5x5 kernels, one output channel,
    // more slots than groups and groups than slots.
    for (const StackCase& p : {StackCase{3, 2, 14, 14, 32, 4, 3, 3}, StackCase{7, 4, 7, 7, 24, 8, 3, 3},
                               StackCase{2, 1, 9, 6, 16, 1, 5, 3}, StackCase{20, 2, 4, 4, 16, 4, 3, 3},
                               StackCase{45, 3, 7, 7, 8, 6, 1, 3}}) {
        INFO("b " << p.b << " c " << p.c << " " << p.h << "x" << p.w << " hidden " << p.hidden << " o " << p.o
                  << " kernels " << p.k0 << ", " << p.k2);
        const std::vector<Tensor> f32 = run_stack(p, DType::f32), f64 = run_stack(p, DType::f64);
        CHECK(rel_diff(f32[0], f64[0]) < 1e-5);
        for (std::size_t i = 1; i < f32.size(); ++i) {
            INFO("gradient of input " << i - 1);
            CHECK(rel_diff(f32[i], f64[i]) < 2e-4);
        }
        // Without a gradient (sampling) the fused path stores nothing and gives the same values.
        NoGradGuard guard;
        CHECK(rel_diff(run_stack(p, DType::f32, false)[0], f32[0]) == 0.0);
    }
}

TEST_CASE("conv_stack gives the same gradients when some inputs need none", "[conv]") {
    // Each combination skips other parts of the backward pass (and leaves other partial-sum
    // sections unwritten); the gradients still asked for keep their bits.
    const StackCase p{9, 2, 14, 14, 32, 4, 3, 3};
    const std::vector<Tensor> all = run_stack(p, DType::f32);
    for (const std::vector<bool>& frozen :
         {std::vector<bool>{true, false, false, false, false, false, false},
          std::vector<bool>{true, true, true, false, false, false, false},
          std::vector<bool>{false, false, false, true, true, false, false},
          std::vector<bool>{false, false, false, false, false, true, true},
          std::vector<bool>{true, true, true, true, true, false, false}}) {
        const std::vector<Tensor> some = run_stack(p, DType::f32, true, frozen);
        CHECK(rel_diff(some[0], all[0]) == 0.0);
        for (std::size_t i = 0; i < frozen.size(); ++i) {
            INFO("input " << i << (frozen[i] ? " (frozen)" : ""));
            if (frozen[i])
                CHECK_FALSE(some[i + 1].defined());
            else
                CHECK(rel_diff(some[i + 1], all[i + 1]) == 0.0);
        }
    }
}

TEST_CASE("conv_stack gives the same bits on 1 and 2 threads", "[conv]") {
    const StackCase p{37, 2, 14, 14, 32, 4, 3, 3};
    set_num_threads(1);
    const std::vector<Tensor> one = run_stack(p, DType::f32);
    set_num_threads(2);
    const std::vector<Tensor> two = run_stack(p, DType::f32);
    set_num_threads(0);
    for (std::size_t i = 0; i < one.size(); ++i) {
        INFO("output " << i);
        CHECK(rel_diff(two[i], one[i]) == 0.0);
    }
}
