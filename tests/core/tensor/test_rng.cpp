#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <set>

#include "flowlab/parallel.hpp"
#include "flowlab/rng.hpp"

using namespace flowlab;

TEST_CASE("The same seed and counter give the same values", "[rng]") {
    Rng a(42, 7), b(42, 7);
    for (int i = 0; i < 100; ++i) CHECK(a.next_u64() == b.next_u64());
    CHECK(a.counter() == 107);
    CHECK(Rng::bits(42, 7) == Rng(42, 7).next_u64());
}

TEST_CASE("Different seeds and counters give different values", "[rng]") {
    std::set<std::uint64_t> seen;
    for (std::uint64_t s = 0; s < 50; ++s)
        for (std::uint64_t c = 0; c < 50; ++c) seen.insert(Rng::bits(s, c));
    CHECK(seen.size() == 2500);
}

TEST_CASE("set_state restores a stream exactly", "[rng]") {
    Rng a(3);
    a.uniform();
    a.normal();
    const auto seed = a.seed(), counter = a.counter();
    const double next = a.uniform();
    Rng b;
    b.set_state(seed, counter);
    CHECK(b.uniform() == next);
}

TEST_CASE("Uniform values lie in 0 <= u < 1 with the right mean and variance", "[rng]") {
    Rng r(1);
    const int n = 100000;
    double s = 0, s2 = 0, lo = 1, hi = 0;
    for (int i = 0; i < n; ++i) {
        const double u = r.uniform();
        s += u;
        s2 += u * u;
        lo = std::min(lo, u);
        hi = std::max(hi, u);
    }
    CHECK(lo >= 0.0);
    CHECK(hi < 1.0);
    CHECK(s / n == Approx(0.5).margin(0.01));
    CHECK(s2 / n - (s / n) * (s / n) == Approx(1.0 / 12).margin(0.005));
}

TEST_CASE("Normal draws have mean 0 and variance 1", "[rng]") {
    Tensor t = Tensor::empty({200000}, DType::f64);
    Rng r(9);
    r.fill_normal(t, 0.0, 1.0);
    double s = 0, s2 = 0, s4 = 0;
    for (double v : t.to_vector()) {
        s += v;
        s2 += v * v;
        s4 += v * v * v * v;
    }
    const double n = 200000;
    CHECK(s / n == Approx(0.0).margin(0.01));
    CHECK(s2 / n == Approx(1.0).margin(0.02));
    CHECK(s4 / n == Approx(3.0).margin(0.1));  // a Gaussian's kurtosis
    Tensor m = Tensor::empty({100000});
    Rng(2).fill_normal(m, 3.0, 0.5);
    double sm = 0;
    for (double v : m.to_vector()) sm += v;
    CHECK(sm / 100000 == Approx(3.0).margin(0.01));
}

TEST_CASE("Fills consume numel (uniform) or 2 numel (normal) counter values", "[rng]") {
    Rng r(5, 10);
    Tensor t = Tensor::empty({3, 4});
    r.fill_uniform(t);
    CHECK(r.counter() == 22);
    r.fill_normal(t);
    CHECK(r.counter() == 46);
}

TEST_CASE("Element i of a fill uses counter + i (uniform) or counter + 2i (normal)", "[rng]") {
    Tensor u = Tensor::empty({10}, DType::f64);
    Rng(11, 100).fill_uniform(u, -2.0, 2.0);
    Tensor n = Tensor::empty({10}, DType::f64);
    Rng(11, 100).fill_normal(n);
    for (int i = 0; i < 10; ++i) {
        Rng ru(11, 100 + i);
        CHECK(u.item(i) == Approx(-2.0 + 4.0 * ru.uniform()).epsilon(1e-15));
        Rng rn(11, 100 + 2 * i);
        CHECK(n.item(i) == rn.normal());
    }
}

TEST_CASE("Fills do not depend on the thread count", "[rng]") {
    // Large enough to be split across threads when more than one is allowed.
    Tensor one = Tensor::empty({1 << 18}), two = Tensor::empty({1 << 18});
    Tensor uone = Tensor::empty({1 << 18}, DType::f64), utwo = Tensor::empty({1 << 18}, DType::f64);
    set_num_threads(1);
    Rng(77, 5).fill_normal(one);
    Rng(77, 5).fill_uniform(uone);
    set_num_threads(2);
    Rng(77, 5).fill_normal(two);
    Rng(77, 5).fill_uniform(utwo);
    set_num_threads(0);
    CHECK(std::equal(one.f32(), one.f32() + one.numel(), two.f32()));
    CHECK(std::equal(uone.f64(), uone.f64() + uone.numel(), utwo.f64()));
}

TEST_CASE("below stays in range, covers it evenly and rejects 0", "[rng]") {
    Rng r(4);
    std::vector<int> counts(7, 0);
    for (int i = 0; i < 70000; ++i) {
        const auto v = r.below(7);
        REQUIRE(v < 7);
        ++counts[v];
    }
    for (int c : counts) CHECK(c == Approx(10000).margin(500));
    CHECK(r.below(1) == 0);
    CHECK_THROWS(r.below(0));
}

TEST_CASE("permutation returns each index once and depends on the state", "[rng]") {
    Rng a(8), b(8), c(9);
    auto p = a.permutation(1000);
    auto q = b.permutation(1000);
    auto s = c.permutation(1000);
    CHECK(p == q);
    CHECK(p != s);
    auto sorted = p;
    std::sort(sorted.begin(), sorted.end());
    for (int i = 0; i < 1000; ++i) CHECK(sorted[i] == i);
    CHECK(a.permutation(0).empty());
}

TEST_CASE("split derives a new generator and advances the parent", "[rng]") {
    Rng a(1);
    Rng child = a.split();
    CHECK(a.counter() == 1);
    CHECK(child.counter() == 0);
    CHECK(child.seed() != a.seed());
    Rng again(1);
    CHECK(again.split().next_u64() == child.next_u64());
}
