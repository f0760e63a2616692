// Skinny products (a side of at most 4: a 2-d coupling's 1 -> 128 and 128 -> 2 layers and their
// gradients) keep their summation order on every path: each output starts from 0 and takes its
// products in a fixed order as FMAs, the dot form in 16 lanes added in order. The AVX-512
// kernels (skinny_avx512.cpp) must give exactly those bits - trained models depend on them - so
// they are checked bit for bit against a scalar statement of the order.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "backend/gemm_avx512.hpp"
#include "flowlab/rng.hpp"
#include "flowlab/tensor.hpp"
#include "ops/ops_internal.hpp"

using namespace flowlab;

namespace {

Tensor random_f32(Shape s, std::uint64_t seed) {
    Tensor t = Tensor::empty(std::move(s), DType::f64);
    Rng(seed).fill_normal(t, 0.0, 1.0);
    return t.to(DType::f32);
}

struct Case {
    std::int64_t m, n, k;
    bool ta, tb, bias, relu;
    float beta;
};

float at(const Tensor& t, std::int64_t r, std::int64_t c) { return t.f32()[r * t.size(1) + c]; }

// The order the skinny loops promise, in scalar float with explicit FMAs.
Tensor reference(const Case& c, const Tensor& a, const Tensor& b, const Tensor& c0, const Tensor& bias) {
    auto A = [&](std::int64_t i, std::int64_t p) { return c.ta ? at(a, p, i) : at(a, i, p); };
    auto B = [&](std::int64_t p, std::int64_t j) { return c.tb ? at(b, j, p) : at(b, p, j); };
    Tensor out = c0.clone();
    const bool dot_form = c.n <= 4 && c.n < c.m;
    for (std::int64_t i = 0; i < c.m; ++i)
        for (std::int64_t j = 0; j < c.n; ++j) {
            float s;
            const float old = at(c0, i, j);
            if (dot_form && !c.ta) {
                float lanes[16] = {};
                for (std::int64_t p = 0; p < c.k; ++p) lanes[p % 16] = std::fma(A(i, p), B(p, j), lanes[p % 16]);
                s = 0.0f;
                for (float l : lanes) s += l;
            } else {
                // The axpy order (and the transposed dot form's, which sums the same way).
                s = !dot_form && c.beta != 0.0f ? (c.beta == 1.0f ? old : old * c.beta) : 0.0f;
                for (std::int64_t p = 0; p < c.k; ++p) s = std::fma(A(i, p), B(p, j), s);
                if (dot_form && c.beta != 0.0f) s = s + old;
            }
            if (c.bias) s += bias.f32()[j];
            if (c.relu) s = s < 0.0f ? 0.0f : s;
            out.f32()[i * c.n + j] = s;
        }
    return out;
}

}  // namespace

TEST_CASE("Skinny products keep their summation order bit for bit on every form", "[backend][gemm]") {
    const std::vector<Case> cases = {
        // axpy form: the 1 -> 128 layer (k = 1, bias, ReLU), a tail vector past 128 columns,
        // B stored transposed (a layer's input gradient), beta 1 and 0.5.
        {37, 130, 1, false, false, true, true, 0.0f},
        {37, 130, 2, false, true, false, false, 0.0f},
        {37, 17, 3, false, false, true, false, 1.0f},
        {20, 300, 4, false, true, false, true, 0.5f},
        // axpy form with A transposed: the first layer's weight gradient [1, 128] over 300 rows.
        {1, 130, 300, true, false, false, false, 0.0f},
        {3, 40, 200, true, false, false, false, 1.0f},
        // dot form: 1 to 4 columns, depths with and without a tail of the 16 lanes.
        {37, 1, 128, false, true, false, false, 0.0f},
        {37, 2, 128, false, false, true, false, 0.0f},
        {37, 3, 100, false, false, true, true, 0.0f},
        {19, 4, 7, false, true, false, false, 0.0f},
        {50, 2, 33, false, false, false, false, 0.0f},
        // transposed dot form: the last layer's weight gradient [128, 2] over 300 rows, fresh and
        // accumulated.
        {128, 2, 300, true, false, false, false, 0.0f},
        {128, 2, 300, true, false, false, false, 1.0f},
        {64, 3, 45, true, true, true, false, 0.0f},
    };
    std::uint64_t seed = 4100;
    for (const Case& c : cases) {
        INFO("m " << c.m << " n " << c.n << " k " << c.k << " ta " << c.ta << " tb " << c.tb << " beta " << c.beta);
        REQUIRE(detail::gemm_is_skinny(c.m, c.n, c.k));
        const Tensor a = random_f32(c.ta ? Shape{c.k, c.m} : Shape{c.m, c.k}, ++seed);
        const Tensor b = random_f32(c.tb ? Shape{c.n, c.k} : Shape{c.k, c.n}, ++seed);
        const Tensor bias = random_f32({c.n}, ++seed);
        const Tensor c0 = random_f32({c.m, c.n}, ++seed);
        Tensor got = c0.clone();
        detail::gemm_impl("test", a, c.ta, b, c.tb, got, 1.0, c.beta, c.bias ? &bias : nullptr, c.relu);
        const Tensor want = reference(c, a, b, c0, bias);
        if (backend::avx512::available()) {
            CHECK(kern::max_abs_diff(got, want) == 0.0);
        } else {
            // The portable loops give these bits where the compiler contracts to FMAs.
            CHECK(kern::max_abs_diff(got, want) < 1e-4);
        }
    }
}

TEST_CASE("A skinny product's rows, gated by a ReLU's output, equal the whole product then the mask",
          "[backend][gemm]") {
    // A layer's input gradient through a ReLU: G [40, 2] W^T (W [130, 2]) on rows 5..29,
    // then zero where the ReLU's output is not positive - including -0 and NaN there.
    const std::int64_t m = 40, n = 130, k = 2;
    const Tensor g = random_f32({m, k}, 4200), w = random_f32({n, k}, 4201);
    Tensor gate = random_f32({m, n}, 4202);
    gate.f32()[5 * n + 3] = -0.0f;
    gate.f32()[6 * n + 7] = std::nanf("");
    Tensor whole = Tensor::zeros({m, n}, DType::f32);
    detail::gemm_impl("test", g, false, w, true, whole, 1.0, 0.0, nullptr);
    Tensor rows = Tensor::zeros({m, n}, DType::f32);
    detail::gemm_rows(g.f32(), w.f32(), true, rows.f32(), m, n, k, 5, 30, nullptr, false, gate.f32());
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t j = 0; j < n; ++j) {
            const float want = i < 5 || i >= 30 ? 0.0f : (gate.f32()[i * n + j] > 0.0f ? whole.f32()[i * n + j] : 0.0f);
            if (rows.f32()[i * n + j] != want) FAIL("row " << i << " column " << j);
        }
    CHECK(rows.f32()[5 * n + 3] == 0.0f);
    CHECK(rows.f32()[6 * n + 7] == 0.0f);
}
