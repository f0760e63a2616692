// backend::sgemm_sparse: products that skip op(A)'s zeros (sparse_avx512.cpp) against oneDNN's
// dense sgemm_tile, bit for bit, on the shapes where its order of sums is known (brgemm's one
// chain, the JIT sgemm's halves of k), over its pieces of 64 rows of B, column blocks with a
// tail, odd row counts, every epilogue; and it declines what it should.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include "backend/gemm_avx512.hpp"
#include "backend/onednn.hpp"
#include "flowlab/rng.hpp"
#include "flowlab/tensor.hpp"

using namespace flowlab;

namespace {

// n floats, normal, about `zeros` of them 0 (ReLU-like: the negative ones when zeros = 0.5).
std::vector<float> floats(std::int64_t n, std::uint64_t seed, double zeros) {
    Tensor t = Tensor::empty({n}, DType::f64), u = Tensor::empty({n}, DType::f64);
    Rng rng(seed);
    rng.fill_normal(t, 0.0, 1.0);
    rng.fill_uniform(u, 0.0, 1.0);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i)
        v[static_cast<std::size_t>(i)] = u.item(i) < zeros ? 0.0f : static_cast<float>(t.item(i));
    return v;
}

bool same_bits(const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

struct Case {
    std::int64_t m, n, k;
    bool ta;
    std::int64_t lda;  // with ta: A is [k, lda]; else [m, lda]
    bool bias, relu, gate;
};

// {sparse path used, its C, the dense C} for one case.
struct Result {
    bool used;
    std::vector<float> sparse, dense;
};

Result run(const Case& c, double zeros, std::uint64_t seed) {
    const std::vector<float> a = floats((c.ta ? c.k : c.m) * c.lda, seed, zeros);
    const std::vector<float> b = floats(c.k * c.n, seed + 1, 0.0), bias = floats(c.n, seed + 2, 0.0);
    const std::vector<float> gate = floats(c.m * c.n, seed + 3, 0.3);
    const backend::Gemm g{.m = c.m, .n = c.n, .k = c.k, .trans_a = c.ta, .bias = c.bias, .relu = c.relu};
    Result r;
    r.sparse.assign(static_cast<std::size_t>(c.m * c.n), -7.0f);
    r.dense = r.sparse;
    r.used = backend::sgemm_sparse(g, c.lda, c.n, c.n, a.data(), b.data(), r.sparse.data(), bias.data(),
                                   c.gate ? gate.data() : nullptr, c.n);
    backend::sgemm_tile(g, c.lda, c.n, c.n, a.data(), b.data(), r.dense.data(), bias.data());
    if (c.gate)
        for (std::size_t i = 0; i < r.dense.size(); ++i) r.dense[i] = gate[i] > 0.0f ? r.dense[i] : 0.0f;
    return r;
}

}  // namespace

TEST_CASE("sgemm_sparse gives oneDNN's bits where it runs, and runs on an MLP's products", "[backend][gemm]") {
    if (!backend::own_gemm()) {
        WARN("no AVX-512 on this CPU (or FLOWLAB_GEMM=onednn): no sparse path to test");
        return;
    }
    // The products mlp_stack runs for a 128-wide hidden layer on a batch of 512: the forward
    // and the gated backward rows (128-row tiles), the weight gradient (32-row tiles of A^T).
    const Case mlp[] = {{128, 128, 128, false, 128, true, true, false},
                        {128, 128, 128, false, 128, false, false, true},
                        {32, 128, 512, true, 128, false, false, false}};
    for (const Case& c : mlp) {
        const Result r = run(c, 0.5, 11);
        INFO("m " << c.m << " n " << c.n << " k " << c.k << " ta " << c.ta);
        CHECK(r.used);
        CHECK(same_bits(r.sparse, r.dense));
    }
    // Edges: odd rows (a row without a partner), columns past a multiple of 64 and of 16, k
    // not a multiple of 16 nor of the 64-row pieces, two halves of k (the JIT sgemm's 385..768),
    // A in a wider matrix.
    const Case edges[] = {{37, 100, 77, false, 80, true, true, false},   {16, 200, 300, false, 300, true, false, true},
                          {5, 64, 512, false, 512, false, true, false},  {1, 17, 3, false, 3, true, true, true},
                          {16, 128, 385, true, 48, false, false, false}, {32, 64, 601, true, 40, false, false, false},
                          {16, 128, 300, true, 128, false, false, false}, {48, 130, 767, true, 64, false, false, false}};
    int used = 0;
    for (const Case& c : edges) {
        const Result r = run(c, 0.5, 23);
        INFO("m " << c.m << " n " << c.n << " k " << c.k << " ta " << c.ta);
        if (r.used) {
            ++used;
            CHECK(same_bits(r.sparse, r.dense));
        }
    }
    CHECK(used >= 5);
}

TEST_CASE("sgemm_sparse leaves dense operands to the dense kernel, untouched", "[backend][gemm]") {
    if (!backend::own_gemm()) {
        WARN("no AVX-512 on this CPU (or FLOWLAB_GEMM=onednn): no sparse path to test");
        return;
    }
    const Case c{128, 128, 128, false, 128, true, true, false};
    const Result r = run(c, 0.05, 5);
    CHECK_FALSE(r.used);
    for (float v : r.sparse) REQUIRE(v == -7.0f);
    // A transposed B and an accumulating product have no sparse path at all.
    const std::vector<float> a = floats(64 * 64, 1, 0.5), b = floats(64 * 64, 2, 0.0);
    std::vector<float> out(64 * 64);
    CHECK_FALSE(backend::sgemm_sparse({.m = 64, .n = 64, .k = 64, .trans_b = true}, 64, 64, 64, a.data(), b.data(),
                                      out.data(), nullptr));
    CHECK_FALSE(backend::sgemm_sparse({.m = 64, .n = 64, .k = 64, .beta = 1.0f}, 64, 64, 64, a.data(), b.data(),
                                      out.data(), nullptr));
}

TEST_CASE("sgemm_sparse keeps a NaN of A where the dense product has it", "[backend][gemm]") {
    if (!backend::own_gemm()) {
        WARN("no AVX-512 on this CPU (or FLOWLAB_GEMM=onednn): no sparse path to test");
        return;
    }
    const std::int64_t m = 8, n = 32, k = 40;
    std::vector<float> a = floats(m * k, 3, 0.5);
    a[3 * k + 17] = std::nanf("");
    const std::vector<float> b = floats(k * n, 4, 0.0);
    std::vector<float> s(static_cast<std::size_t>(m * n)), d(s.size());
    const backend::Gemm g{.m = m, .n = n, .k = k};
    REQUIRE(backend::sgemm_sparse(g, k, n, n, a.data(), b.data(), s.data(), nullptr));
    backend::sgemm_tile(g, k, n, n, a.data(), b.data(), d.data(), nullptr);
    for (std::size_t i = 0; i < s.size(); ++i) {
        INFO("element " << i);
        CHECK(std::isnan(s[i]) == std::isnan(d[i]));
        if (!std::isnan(d[i])) CHECK(s[i] == d[i]);
    }
    CHECK(std::isnan(s[3 * n]));
}

TEST_CASE("sgemm_sparse_columns gives the dense weight gradient's bits, column tile by column tile",
          "[backend][gemm]") {
    if (!backend::own_gemm()) {
        WARN("no AVX-512 on this CPU (or FLOWLAB_GEMM=onednn): no sparse path to test");
        return;
    }
    // dW [in, out] = H^T G over `rows` samples, G (the gated gradient) the sparser operand.
    struct Shape {
        std::int64_t rows, in, out;
    };
    for (const Shape s : {Shape{512, 128, 128}, Shape{384, 64, 100}, Shape{700, 96, 40}}) {
        INFO("rows " << s.rows << " in " << s.in << " out " << s.out);
        const std::vector<float> h = floats(s.rows * s.in, 41, 0.5), gr = floats(s.rows * s.out, 42, 0.6);
        const backend::Gemm g{.m = s.in, .n = s.out, .k = s.rows, .trans_a = true};
        const backend::GemmTiling t = backend::gemm_tiling(s.in, s.out, s.rows);
        const std::int64_t chain = backend::sgemm_tiles_chain(g, t);
        if (s.rows == 512) CHECK(chain > 0);  // an MLP's 128 x 128 layer on a batch of 512
        if (chain == 0) continue;
        std::vector<float> dense(static_cast<std::size_t>(s.in * s.out), -7.0f), sparse = dense;
        for (std::int64_t i = 0; i < t.count; ++i) backend::sgemm_tile_of(g, t, i, h.data(), gr.data(), dense.data());
        for (std::int64_t j0 = 0; j0 < s.out; j0 += 32)
            backend::sgemm_sparse_columns(g, chain, h.data(), s.in, gr.data(), s.out, sparse.data(), s.out, j0,
                                          std::min(s.out, j0 + 32));
        CHECK(same_bits(sparse, dense));
    }
}

TEST_CASE("sgemm_small skipping zeros gives its own kernel's bits, epilogues and column sums included",
          "[backend][gemm]") {
    if (!backend::own_gemm()) {
        WARN("no AVX-512 on this CPU (or FLOWLAB_GEMM=onednn): no sparse path to test");
        return;
    }
    // conv_stack's hidden layer (a group's pixels x 128, forward with bias and ReLU, backward
    // gated with the bias gradient's column sums), k past the kernel's 256-step slices, odd m.
    struct Shape {
        std::int64_t m, n, k;
        bool bias, relu, gate;
    };
    for (const Shape s : {Shape{196, 128, 128, true, true, false}, Shape{245, 128, 128, false, false, true},
                          Shape{37, 100, 300, true, false, true}, Shape{16, 36, 128, false, false, false}}) {
        INFO("m " << s.m << " n " << s.n << " k " << s.k);
        const std::vector<float> a = floats(s.m * s.k, 61, 0.5), b = floats(s.k * s.n, 62, 0.0);
        const std::vector<float> bias = floats(s.n, 63, 0.0), gate = floats(s.m * s.n, 64, 0.5);
        std::vector<float> dense(static_cast<std::size_t>(s.m * s.n), -7.0f), sparse = dense;
        std::vector<float> sum_d = floats(s.n, 65, 0.0), sum_s = sum_d;
        backend::Gemm g{.m = s.m, .n = s.n, .k = s.k, .bias = s.bias, .relu = s.relu};
        backend::sgemm_small(g, s.k, s.n, s.n, a.data(), b.data(), dense.data(), bias.data(),
                             s.gate ? gate.data() : nullptr, s.n, s.gate ? sum_d.data() : nullptr);
        g.sparse_a = true;
        backend::sgemm_small(g, s.k, s.n, s.n, a.data(), b.data(), sparse.data(), bias.data(),
                             s.gate ? gate.data() : nullptr, s.n, s.gate ? sum_s.data() : nullptr);
        CHECK(same_bits(sparse, dense));
        CHECK(same_bits(sum_s, sum_d));
        // The kernel itself, told to run whatever the density: it must run, with the same bits
        // (so the comparison above cannot pass by sgemm_small declining the sparse path).
        std::vector<float> direct(dense.size(), -7.0f), sum_k = floats(s.n, 65, 0.0);
        REQUIRE(backend::avx512::sparse_gemm(s.m, s.n, s.k, false, a.data(), s.k, b.data(), s.n, direct.data(), s.n,
                                             s.k, 1.0, s.bias ? bias.data() : nullptr, s.relu,
                                             s.gate ? gate.data() : nullptr, s.n, s.gate ? sum_k.data() : nullptr));
        CHECK(same_bits(direct, dense));
        CHECK(same_bits(sum_k, sum_d));
    }
}
