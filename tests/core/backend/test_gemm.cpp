// backend::sgemm_small: flowlab's own AVX-512 kernel (gemm_avx512.cpp) against a double loop and
// against oneDNN's sgemm_tile, over the shapes its blocking has edges at (6-row blocks of 64
// columns, 14-row blocks of 16 and 32, the last few columns with the lanes over rows, 256-step
// slices of k), with every epilogue and strided operands.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

#include "backend/onednn.hpp"
#include "flowlab/rng.hpp"
#include "flowlab/tensor.hpp"

using namespace flowlab;

namespace {

std::vector<float> random_floats(std::int64_t n, std::uint64_t seed) {
    Tensor t = Tensor::empty({n}, DType::f64);
    Rng rng(seed);
    rng.fill_normal(t, 0.0, 1.0);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = static_cast<float>(t.item(i));
    return v;
}

struct Case {
    std::int64_t m, n, k;
    bool ta, bias, relu;
    float beta;
    std::int64_t pad;  // extra columns of every operand's rows (strided views)
};

// C as the kernel is asked for it, in double.
std::vector<double> reference(const Case& c, const std::vector<float>& a, std::int64_t lda, const std::vector<float>& b,
                              std::int64_t ldb, const std::vector<float>& c0, std::int64_t ldc,
                              const std::vector<float>& bias) {
    std::vector<double> out(c0.begin(), c0.end());
    for (std::int64_t i = 0; i < c.m; ++i)
        for (std::int64_t j = 0; j < c.n; ++j) {
            double s = 0.0;
            for (std::int64_t p = 0; p < c.k; ++p)
                s += static_cast<double>(c.ta ? a[static_cast<std::size_t>(p * lda + i)]
                                              : a[static_cast<std::size_t>(i * lda + p)]) *
                     b[static_cast<std::size_t>(p * ldb + j)];
            if (c.bias) s += bias[static_cast<std::size_t>(j)];
            s += c.beta * c0[static_cast<std::size_t>(i * ldc + j)];
            if (c.relu && s < 0) s = 0;
            out[static_cast<std::size_t>(i * ldc + j)] = s;
        }
    return out;
}

std::vector<float> run(const Case& c, const std::vector<float>& a, std::int64_t lda, const std::vector<float>& b,
                       std::int64_t ldb, std::vector<float> cv, std::int64_t ldc, const std::vector<float>& bias,
                       bool small) {
    const backend::Gemm g{.m = c.m, .n = c.n, .k = c.k, .trans_a = c.ta, .trans_b = false, .bias = c.bias,
                          .relu = c.relu, .beta = c.beta};
    if (small)
        backend::sgemm_small(g, lda, ldb, ldc, a.data(), b.data(), cv.data(), bias.data());
    else
        backend::sgemm_tile(g, lda, ldb, ldc, a.data(), b.data(), cv.data(), bias.data());
    return cv;
}

}  // namespace

TEST_CASE("sgemm_small's own kernel matches a double loop and oneDNN at every blocking edge", "[backend][gemm]") {
    const bool was = backend::use_own_gemm(true);
    if (!backend::own_gemm()) {
        WARN("this CPU has no AVX-512: sgemm_small runs oneDNN, nothing of the own kernel to test");
        return;
    }
    std::vector<Case> cases;
    for (std::int64_t m : {1, 5, 6, 7, 13, 14, 15, 29, 196})
        for (std::int64_t n : {1, 16, 17, 36, 64, 100, 130})
            for (std::int64_t k : {1, 18, 300}) cases.push_back({m, n, k, (m + n + k) % 2 == 0, n % 2 == 0, k != 1, 0.0f, 0});
    // Every epilogue on a shape with all edges, and strided operands.
    for (bool ta : {false, true})
        for (bool bias : {false, true})
            for (bool relu : {false, true})
                for (float beta : {0.0f, 1.0f, 0.5f})
                    for (std::int64_t pad : {0, 3})
                        for (std::int64_t k : {200, 270}) cases.push_back({31, 100, k, ta, bias, relu, beta, pad});
    for (const Case& c : cases) {
        INFO("m " << c.m << " n " << c.n << " k " << c.k << " ta " << c.ta << " bias " << c.bias << " relu " << c.relu
                  << " beta " << c.beta << " pad " << c.pad);
        const std::int64_t lda = (c.ta ? c.m : c.k) + c.pad, ldb = c.n + c.pad, ldc = c.n + c.pad;
        const auto a = random_floats((c.ta ? c.k : c.m) * lda, 1), b = random_floats(c.k * ldb, 2),
                   c0 = random_floats(c.m * ldc, 3), bias = random_floats(c.n, 4);
        const std::vector<double> want = reference(c, a, lda, b, ldb, c0, ldc, bias);
        const std::vector<float> own = run(c, a, lda, b, ldb, c0, ldc, bias, true);
        const std::vector<float> onednn = run(c, a, lda, b, ldb, c0, ldc, bias, false);
        double worst = 0.0, worst_onednn = 0.0;
        for (std::size_t i = 0; i < want.size(); ++i) {
            const double scale = std::sqrt(static_cast<double>(c.k)) + 1.0;
            worst = std::max(worst, std::fabs(own[i] - want[i]) / scale);
            worst_onednn = std::max(worst_onednn, std::fabs(own[i] - onednn[i]) / scale);
        }
        CHECK(worst < 1e-5);
        CHECK(worst_onednn < 1e-5);
        // Elements outside the m x n block (the pad) are left alone.
        for (std::int64_t i = 0; i < c.m; ++i)
            for (std::int64_t j = c.n; j < ldc; ++j)
                CHECK(own[static_cast<std::size_t>(i * ldc + j)] == c0[static_cast<std::size_t>(i * ldc + j)]);
        // The same inputs, the same bits.
        CHECK(run(c, a, lda, b, ldb, c0, ldc, bias, true) == own);
    }
    backend::use_own_gemm(was);
}

TEST_CASE("sgemm_small's column blocks do not change a column's bits", "[backend][gemm]") {
    // Columns [0, 64) of a 100-column product run in 4-vector blocks, [64, 96) in 2-vector ones
    // and [96, 100), when k is one slice, with the lanes over rows; the same columns asked for
    // on their own (B and C as strided views) run in other blocks and must give the same bits:
    // each output sums over k in one order.
    const bool was = backend::use_own_gemm(true);
    if (!backend::own_gemm()) {
        backend::use_own_gemm(was);
        return;
    }
    for (const auto& [ta, k] : {std::pair{false, std::int64_t{300}}, std::pair{true, std::int64_t{300}},
                                std::pair{false, std::int64_t{200}}}) {
        const std::int64_t m = 29, n = 100;
        const std::int64_t lda = ta ? m : k;
        const auto a = random_floats((ta ? k : m) * lda, 5), b = random_floats(k * n, 6), c0 = random_floats(m * n, 7),
                   bias = random_floats(n, 8);
        const Case whole{m, n, k, ta, true, true, 0.5f, 0};
        const std::vector<float> all = run(whole, a, lda, b, n, c0, n, bias, true);
        for (std::int64_t j0 : {0, 16, 48, 64, 80, 84}) {
            INFO("ta " << ta << " k " << k << " columns from " << j0);
            const std::int64_t w = std::min<std::int64_t>(32, n - j0);
            const backend::Gemm g{.m = m, .n = w, .k = k, .trans_a = ta, .trans_b = false, .bias = true, .relu = true,
                                  .beta = 0.5f};
            std::vector<float> part = c0;
            backend::sgemm_small(g, lda, n, n, a.data(), b.data() + j0, part.data() + j0, bias.data() + j0);
            std::int64_t differ = 0;
            for (std::int64_t i = 0; i < m; ++i)
                for (std::int64_t j = j0; j < j0 + w; ++j)
                    differ += part[static_cast<std::size_t>(i * n + j)] != all[static_cast<std::size_t>(i * n + j)];
            CHECK(differ == 0);
        }
    }
    backend::use_own_gemm(was);
}

TEST_CASE("sgemm_small's gate gives the bits of the product, then the mask and column sums", "[backend][gemm]") {
    // The fused epilogue of a ReLU's backward: C = gate > 0 ? C : 0, colsum += C's rows in order.
    // Against the plain product followed by that loop, on the kernel's every column block (4-,
    // 2- and 1-vector blocks, the narrow tail) and with several slices of k, on both kernels.
    for (bool own : {true, false}) {
        const bool was = backend::use_own_gemm(own);
        for (const auto& [m, n, k] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{37, 100, 128}, {29, 130, 300},
                                     {40, 36, 36}, {20, 18, 128}}) {
            INFO("own " << own << " m " << m << " n " << n << " k " << k);
            const auto a = random_floats(m * k, 11), b = random_floats(k * n, 12), gate = random_floats(m * n, 13),
                       start = random_floats(n, 14);
            std::vector<float> gate_with_edges = gate;
            gate_with_edges[0] = -0.0f;
            gate_with_edges[1] = std::nanf("");
            const backend::Gemm g{.m = m, .n = n, .k = k};
            std::vector<float> want(static_cast<std::size_t>(m * n)), want_sum = start;
            backend::sgemm_small(g, k, n, n, a.data(), b.data(), want.data(), nullptr);
            for (std::int64_t i = 0; i < m; ++i)
                for (std::int64_t j = 0; j < n; ++j) {
                    float& v = want[static_cast<std::size_t>(i * n + j)];
                    v = gate_with_edges[static_cast<std::size_t>(i * n + j)] > 0.0f ? v : 0.0f;
                    want_sum[static_cast<std::size_t>(j)] += v;
                }
            std::vector<float> got(static_cast<std::size_t>(m * n)), got_sum = start;
            backend::sgemm_small(g, k, n, n, a.data(), b.data(), got.data(), nullptr, gate_with_edges.data(), n,
                                 got_sum.data());
            CHECK(got == want);
            CHECK(got_sum == want_sum);
        }
        backend::use_own_gemm(was);
    }
}

TEST_CASE("sgemm_small leaves A with rows a multiple of 1 KB apart to oneDNN, with the same result", "[backend][gemm]") {
    // lda = 256 floats: the own kernel's broadcasts would all miss L1; oneDNN takes the product.
    const Case c{20, 40, 256, false, true, true, 0.0f, 0};
    const auto a = random_floats(c.m * 256, 5), b = random_floats(c.k * c.n, 6), c0 = random_floats(c.m * c.n, 7),
               bias = random_floats(c.n, 8);
    const std::vector<double> want = reference(c, a, 256, b, c.n, c0, c.n, bias);
    const std::vector<float> got = run(c, a, 256, b, c.n, c0, c.n, bias, true);
    for (std::size_t i = 0; i < want.size(); ++i) CHECK(std::fabs(got[i] - want[i]) < 1e-4);
}
