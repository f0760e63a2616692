// Tests of the density plugin, loaded (with the standard plugin, whose mlp conditioner and
// base distribution it uses) the way every run loads it: as shared libraries.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>
#include <zlib.h>

#include <flowlab/conformance.hpp>
#include <flowlab/errors.hpp>
#include <flowlab/experiment.hpp>
#include <flowlab/gradcheck.hpp>
#include <flowlab/ops.hpp>
#include <flowlab/plugin.hpp>
#include <flowlab/registry.hpp>

#include "../../../plugins/density/data_readers.hpp"
#include "test_support.hpp"

using namespace flowlab;
using namespace flowlab::test;

namespace {

const Registry& registry() {
    static Registry* reg = registry_of({"standard", "density"});
    return *reg;
}

Params params(const std::string& json) { return Params::parse(json, "test"); }

std::unique_ptr<Bijector> make_layer(const std::string& json, const Shape& event, std::uint64_t seed = 1,
                                     const Shape& context = {}) {
    Rng rng(seed);
    BuildContext c{event, context, &rng, &registry()};
    return registry().make_bijector(params(json), c);
}

// Copies every parameter value of `from` into `to` (same architecture).
void copy_parameters(Module& from, Module& to) {
    auto a = from.named_parameters(), b = to.named_parameters();
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
        REQUIRE(a[i].name == b[i].name);
        b[i].var.mutable_value() = a[i].var.value().clone();
    }
}

bool all_finite(const Tensor& t) {
    for (std::int64_t i = 0; i < t.numel(); ++i)
        if (!std::isfinite(t.item(i))) return false;
    return true;
}

// Row r of the numerical Jacobian d f(x)_i / d x_j (f64 central differences) at one sample.
std::vector<std::vector<double>> numerical_jacobian(const std::function<Tensor(const Tensor&)>& f, const Tensor& x,
                                                    std::int64_t out_dim, double eps = 1e-6) {
    const std::int64_t d = x.numel();
    std::vector<std::vector<double>> J(static_cast<std::size_t>(out_dim), std::vector<double>(static_cast<std::size_t>(d)));
    for (std::int64_t j = 0; j < d; ++j) {
        Tensor up = x.clone(), down = x.clone();
        up.set_item(j, x.item(j) + eps);
        down.set_item(j, x.item(j) - eps);
        Tensor fu = f(up), fd = f(down);
        for (std::int64_t i = 0; i < out_dim; ++i)
            J[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)] = (fu.item(i) - fd.item(i)) / (2 * eps);
    }
    return J;
}

std::string temp_dir(const std::string& name) {
    auto dir = std::filesystem::temp_directory_path() / ("flowlab_density_test_" + name + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir.string();
}

// A gzip file of "stored" (uncompressed) deflate blocks, written by hand: the test binary does
// not link zlib, and the loader must read any valid gzip stream anyway.
std::uint32_t crc32_of(const std::vector<std::uint8_t>& bytes) {
    std::uint32_t crc = 0xffffffffu;
    for (std::uint8_t b : bytes) {
        crc ^= b;
        for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

void write_gzip(const std::string& path, const std::vector<std::uint8_t>& bytes) {
    std::vector<std::uint8_t> out = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff};
    auto le = [&](std::uint32_t v, int n) {
        for (int i = 0; i < n; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
    };
    std::size_t pos = 0;
    do {
        const std::size_t len = std::min<std::size_t>(65535, bytes.size() - pos);
        out.push_back(pos + len == bytes.size() ? 1 : 0);
        le(static_cast<std::uint32_t>(len), 2);
        le(static_cast<std::uint32_t>(~len & 0xffff), 2);
        out.insert(out.end(), bytes.begin() + static_cast<std::ptrdiff_t>(pos),
                   bytes.begin() + static_cast<std::ptrdiff_t>(pos + len));
        pos += len;
    } while (pos < bytes.size());
    le(crc32_of(bytes), 4);
    le(static_cast<std::uint32_t>(bytes.size()), 4);
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size()));
    REQUIRE(f.good());
}

void put_be32(std::vector<std::uint8_t>& v, std::uint32_t x) {
    for (int s = 24; s >= 0; s -= 8) v.push_back(static_cast<std::uint8_t>(x >> s));
}

// An IDX image file of n images of r x c with pixel (i, k) = (7 i + k) mod 256, and labels i mod 10.
std::vector<std::uint8_t> idx_images(std::uint32_t n, std::uint32_t r, std::uint32_t c, std::uint32_t stored) {
    std::vector<std::uint8_t> v;
    put_be32(v, 2051);
    put_be32(v, n);
    put_be32(v, r);
    put_be32(v, c);
    for (std::uint32_t i = 0; i < stored; ++i)
        for (std::uint32_t k = 0; k < r * c; ++k) v.push_back(static_cast<std::uint8_t>((7 * i + k) % 256));
    return v;
}

std::vector<std::uint8_t> idx_labels(std::uint32_t n) {
    std::vector<std::uint8_t> v;
    put_be32(v, 2049);
    put_be32(v, n);
    for (std::uint32_t i = 0; i < n; ++i) v.push_back(static_cast<std::uint8_t>(i % 10));
    return v;
}

void write_idx_dir(const std::string& dir, std::uint32_t n_train, std::uint32_t n_test) {
    write_gzip(dir + "/train-images-idx3-ubyte.gz", idx_images(n_train, 3, 4, n_train));
    write_gzip(dir + "/t10k-images-idx3-ubyte.gz", idx_images(n_test, 3, 4, n_test));
    write_gzip(dir + "/train-labels-idx1-ubyte.gz", idx_labels(n_train));
    write_gzip(dir + "/t10k-labels-idx1-ubyte.gz", idx_labels(n_test));
}

std::string message_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "";
}

}  // namespace

// ------------------------------------------------------------------------------ conformance

TEST_CASE("every density type has a one-line doc and documented parameters", "[density]") {
    const Registry& reg = registry();
    std::size_t n = 0;
    auto check = [&](const auto& table) {
        for (const auto& [name, e] : table.entries()) {
            if (e.origin.find("libflowlab_density") == std::string::npos) continue;
            ++n;
            INFO(name);
            CHECK_FALSE(e.doc.empty());
            CHECK(e.doc.find('\n') == std::string::npos);
            for (const auto& ps : e.schema) {
                INFO(name << "." << ps.name);
                CHECK_FALSE(ps.doc.empty());
            }
        }
    };
    check(reg.bijectors);
    check(reg.distributions);
    check(reg.datasets);
    check(reg.conditioners);
    CHECK(n >= 19);
}

// ------------------------------------------------------------------------------ MADE / MAF

TEST_CASE("a MADE output block depends only on the inputs before it in the chosen order", "[density][made]") {
    const std::int64_t D = 6;
    for (const std::string order : {"natural", "reverse", "random"}) {
        DYNAMIC_SECTION(order) {
            Rng rng(5);
            ConditionerSpec spec{{D}, {2 * D}, {}, true};
            auto net = registry().make_conditioner(
                params(R"({"type": "made", "hidden": [32, 24], "seed": 9, "order": ")" + order + "\"}"), spec, rng);
            perturb(*net, 3, 0.5, DType::f64);
            Tensor x = randn({1, D}, 11);
            auto f = [&](const Tensor& in) {
                NoGradGuard g;
                return (*net)(Var(in), Var()).value();
            };
            auto J = numerical_jacobian(f, x, 2 * D);
            // S_i: the inputs that output i (both blocks) depends on.
            std::vector<std::set<std::int64_t>> deps(static_cast<std::size_t>(D));
            for (std::int64_t p = 0; p < 2; ++p)
                for (std::int64_t i = 0; i < D; ++i)
                    for (std::int64_t j = 0; j < D; ++j)
                        if (std::abs(J[static_cast<std::size_t>(p * D + i)][static_cast<std::size_t>(j)]) > 1e-9)
                            deps[static_cast<std::size_t>(i)].insert(j);
            // Strictly triangular in some order: the sets are nested, of sizes 0..D-1, and no
            // output sees its own input.
            std::vector<std::int64_t> by_size(static_cast<std::size_t>(D));
            std::iota(by_size.begin(), by_size.end(), 0);
            std::sort(by_size.begin(), by_size.end(),
                      [&](auto a, auto b) { return deps[static_cast<std::size_t>(a)].size() < deps[static_cast<std::size_t>(b)].size(); });
            for (std::int64_t k = 0; k < D; ++k) {
                const auto& s = deps[static_cast<std::size_t>(by_size[static_cast<std::size_t>(k)])];
                CHECK(static_cast<std::int64_t>(s.size()) == k);
                CHECK(s.count(by_size[static_cast<std::size_t>(k)]) == 0);
                if (k > 0) {
                    const auto& prev = deps[static_cast<std::size_t>(by_size[static_cast<std::size_t>(k - 1)])];
                    CHECK(std::includes(s.begin(), s.end(), prev.begin(), prev.end()));
                    CHECK(s.count(by_size[static_cast<std::size_t>(k - 1)]) == 1);
                }
            }
            if (order == "natural") CHECK(deps[3] == std::set<std::int64_t>{0, 1, 2});
            if (order == "reverse") CHECK(deps[3] == std::set<std::int64_t>{4, 5});
        }
    }
}

TEST_CASE("a MADE on block-sparse GEMMs (f32) equals its dense layers (f64)", "[density][made]") {
    // At these sizes the natural and reverse orders give block-sparse supports, which f32 runs
    // as one GEMM per block and range; f64 runs the plain dense layers.
    const std::int64_t D = 300, B = 64;
    for (const std::string order : {"natural", "reverse"}) {
        DYNAMIC_SECTION(order) {
            std::vector<Tensor> y, grads[2];
            for (int k = 0; k < 2; ++k) {
                const DType dt = k == 0 ? DType::f32 : DType::f64;
                Rng rng(5);
                ConditionerSpec spec{{D}, {2 * D}, {}, true};
                auto net = registry().make_conditioner(
                    params(R"({"type": "made", "hidden": [400], "order": ")" + order + "\"}"), spec, rng);
                perturb(*net, 3, 0.05, dt);
                Var out = (*net)(Var(randn({B, D}, 11).to(dt)), Var());
                out.backward(randn({B, 2 * D}, 12).to(dt));
                y.push_back(out.value());
                for (const Var& p : net->parameters()) grads[k].push_back(p.grad());
            }
            CHECK(kern::max_abs_diff(y[0], y[1]) < 1e-4 * (1.0 + max_abs(y[1])));
            REQUIRE(grads[0].size() == grads[1].size());
            for (std::size_t i = 0; i < grads[0].size(); ++i) {
                INFO("parameter " << i);
                CHECK(kern::max_abs_diff(grads[0][i], grads[1][i]) < 1e-4 * (1.0 + max_abs(grads[1][i])));
            }
        }
    }
}

TEST_CASE("the MAF layer's Jacobian is triangular in its order with diagonal exp(-alpha)", "[density][made]") {
    const std::int64_t D = 5;
    auto layer = make_layer(R"({"type": "maf", "hidden": [20], "order": "reverse"})", {D});
    perturb(*layer, 4, 0.3, DType::f64);
    Tensor x = randn({1, D}, 12);
    auto f = [&](const Tensor& in) {
        NoGradGuard g;
        return layer->inverse(Var(in)).out.value();
    };
    auto J = numerical_jacobian(f, x, D);
    // Reverse order: z_i depends on x_j only for j >= i.
    double log_diag = 0.0;
    for (std::int64_t i = 0; i < D; ++i) {
        for (std::int64_t j = 0; j < i; ++j) CHECK(std::abs(J[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)]) < 1e-9);
        CHECK(std::abs(J[static_cast<std::size_t>(i)][static_cast<std::size_t>(i)]) > 1e-3);
        log_diag += std::log(std::abs(J[static_cast<std::size_t>(i)][static_cast<std::size_t>(i)]));
    }
    NoGradGuard g;
    CHECK(layer->inverse(Var(x)).log_det.value().item(0) == Approx(log_diag).epsilon(1e-6));
}

TEST_CASE("a zero-initialised MAF layer starts as the identity", "[density][made]") {
    auto layer = make_layer(R"({"type": "maf", "hidden": [16]})", {4});
    Tensor x = randn({3, 4}, 1, DType::f32);
    NoGradGuard g;
    FlowResult r = layer->inverse(Var(x));
    CHECK(kern::max_abs_diff(r.out.value(), x) == 0.0);
    CHECK(max_abs(r.log_det.value()) == 0.0);
}

TEST_CASE("the incremental inverse equals the naive D-pass inverse", "[density][made]") {
    struct Case {
        const char* name;
        std::string json;
        Shape event, context;
    };
    const std::vector<Case> cases = {
        {"maf, one hidden layer", R"({"type": "maf", "hidden": [40]})", {12}, {}},
        {"maf, three hidden layers, random order", R"({"type": "maf", "hidden": [30, 17, 25], "order": "random"})", {9}, {}},
        {"maf, no hidden layer", R"({"type": "maf", "hidden": []})", {7}, {}},
        {"maf with a context", R"({"type": "maf", "hidden": [24, 24], "order": "reverse"})", {8}, {3}},
        {"spline autoregressive", R"({"type": "spline_autoregressive", "hidden": [32], "bins": 6})", {7}, {}},
        {"iaf density direction", R"({"type": "maf", "hidden": [32], "direction": "iaf"})", {6}, {}},
        {"maf, one feature", R"({"type": "maf", "hidden": [8]})", {1}, {}},
    };
    for (const auto& c : cases) {
        for (DType dt : {DType::f64, DType::f32}) {
            DYNAMIC_SECTION(c.name << (dt == DType::f64 ? " (f64)" : " (f32)")) {
                auto json_naive = c.json;
                json_naive.insert(json_naive.size() - 1, R"(, "inverse_method": "naive")");
                auto inc = make_layer(c.json, c.event, 7, c.context);
                auto naive = make_layer(json_naive, c.event, 7, c.context);
                perturb(*inc, 21, 0.3, dt);
                copy_parameters(*inc, *naive);
                const std::int64_t B = 13;
                Tensor z = randn(batched(B, c.event), 5, dt);
                Var ctx = c.context.empty() ? Var() : Var(randn(batched(B, c.context), 6, dt));
                NoGradGuard g;
                const bool iaf = c.json.find("iaf") != std::string::npos;
                FlowResult a = iaf ? inc->inverse(Var(z), ctx) : inc->forward(Var(z), ctx);
                FlowResult b = iaf ? naive->inverse(Var(z), ctx) : naive->forward(Var(z), ctx);
                const double tol = dt == DType::f64 ? 1e-10 : 2e-4;
                CHECK(kern::max_abs_diff(a.out.value(), b.out.value()) <= tol * std::max(1.0, max_abs(b.out.value())));
                CHECK(kern::max_abs_diff(a.log_det.value(), b.log_det.value()) <= tol * std::max(1.0, max_abs(b.log_det.value())));
                // And it is the inverse of the fast direction.
                FlowResult back = iaf ? inc->forward(a.out, ctx) : inc->inverse(a.out, ctx);
                CHECK(kern::max_abs_diff(back.out.value(), z) <= tol * 10 * std::max(1.0, max_abs(a.out.value())));
            }
        }
    }
}

TEST_CASE("an iaf layer is the inverse of the maf layer with the same parameters", "[density][made]") {
    auto maf = make_layer(R"({"type": "maf", "hidden": [16], "order": "random", "seed": 4})", {5});
    auto iaf = make_layer(R"({"type": "maf", "hidden": [16], "order": "random", "seed": 4, "direction": "iaf"})", {5});
    perturb(*maf, 8, 0.3, DType::f64);
    copy_parameters(*maf, *iaf);
    Tensor x = randn({4, 5}, 3);
    NoGradGuard g;
    FlowResult a = maf->inverse(Var(x)), b = iaf->forward(Var(x));
    CHECK(kern::max_abs_diff(a.out.value(), b.out.value()) < 1e-12);
    CHECK(kern::max_abs_diff(a.log_det.value(), b.log_det.value()) < 1e-12);
}

TEST_CASE("gradients through the slow (solved) direction match finite differences", "[density][made]") {
    // The slow direction's backward is the implicit-function adjoint; check it against central
    // differences of a scalar of the output and log-det, for input, context and parameters.
    auto layer = make_layer(R"({"type": "spline_autoregressive", "hidden": [12, 12], "bins": 4, "order": "random"})",
                            {4}, 3, {2});
    perturb(*layer, 9, 0.4, DType::f64);
    Tensor z = randn({3, 4}, 10);
    Tensor c = randn({3, 2}, 11);
    Tensor r = randn({3, 4}, 12);
    auto res = gradcheck(
        [&](const std::vector<Var>& v) {
            FlowResult f = layer->forward(v[0], v[1]);
            return sum_all(f.out * Var(r)) + sum_all(f.log_det);
        },
        {z, c});
    INFO(res.worst);
    CHECK(res.ok(1e-5));
}

// ------------------------------------------------------------------------------ splines

TEST_CASE("spline coupling stays finite at and beyond the tail bound and for extreme parameters",
          "[density][spline]") {
    // One Linear conditioner layer (hidden []) whose weights we set: raw = bias, per row.
    auto layer = make_layer(R"({"type": "spline_coupling", "bins": 4, "tail_bound": 2.0,
                                "conditioner": {"type": "mlp", "hidden": []}})",
                            {2});
    const double extremes[] = {0.0, 1e4, -1e4};
    for (double big : extremes) {
        DYNAMIC_SECTION("raw parameters around " << big) {
            for (auto& p : layer->named_parameters()) {
                Tensor v = Tensor::zeros(p.var.shape(), DType::f64);
                if (p.name.find("bias") != std::string::npos)
                    for (std::int64_t i = 0; i < v.numel(); ++i) v.set_item(i, i % 2 == 0 ? big : -big * 0.5);
                p.var.mutable_value() = v;
            }
            // transformed feature 0 (parity 0): at, just inside, beyond the bound, and far out.
            Tensor x = Tensor::from_vector({8, 2}, {-2.0, 0.1, 2.0, 0.2, -1.9999999, 0.3, 1.9999999, 0.4,
                                                    -2.5, 0.5, 7.0, 0.6, 0.0, 0.7, -1e3, 0.8},
                                           DType::f64);
            Var xv(x, true);
            FlowResult z = layer->inverse(xv);
            CHECK(all_finite(z.out.value()));
            CHECK(all_finite(z.log_det.value()));
            // Identity tails beyond the bound.
            CHECK(z.out.value().item(8) == -2.5);
            CHECK(z.out.value().item(10) == 7.0);
            CHECK(z.out.value().item(14) == -1e3);
            // The bound maps to itself: the spline is continuous with its tails.
            CHECK(z.out.value().item(0) == Approx(-2.0).margin(1e-9));
            CHECK(z.out.value().item(2) == Approx(2.0).margin(1e-9));
            (sum_all(z.out) + sum_all(z.log_det)).backward();
            CHECK(all_finite(xv.grad()));
            for (auto& p : layer->named_parameters()) {
                REQUIRE(p.var.grad().defined());
                CHECK(all_finite(p.var.grad()));
                p.var.zero_grad();
            }
            FlowResult back = layer->forward(z.out);
            CHECK(all_finite(back.out.value()));
            CHECK(kern::max_abs_diff(back.out.value(), x) < (big == 0.0 ? 1e-10 : 1e-6));
            CHECK(kern::max_abs_diff(kern::neg(back.log_det.value()), z.log_det.value()) < 1e-6 * std::max(1.0, max_abs(z.log_det.value())));
        }
    }
}

TEST_CASE("a spline coupling with zero raw parameters is the identity", "[density][spline]") {
    auto layer = make_layer(R"({"type": "spline_coupling", "bins": 8})", {3});
    Tensor x = randn({5, 3}, 2, DType::f32);
    NoGradGuard g;
    FlowResult r = layer->inverse(Var(x));
    CHECK(kern::max_abs_diff(r.out.value(), x) < 1e-5);
    CHECK(max_abs(r.log_det.value()) < 1e-5);
}

// ------------------------------------------------------------------------------ normalisation

TEST_CASE("batch norm uses batch statistics in training and running statistics in evaluation",
          "[density][normalization]") {
    auto bn = make_layer(R"({"type": "batch_norm", "momentum": 0.5, "eps": 1e-5})", {3});
    perturb(*bn, 1, 0.0, DType::f64);  // the same parameters, in f64
    Tensor x = randn({64, 3}, 4, DType::f64, 3.0);
    for (std::int64_t i = 0; i < x.numel(); ++i) x.set_item(i, x.item(i) + 5.0 * static_cast<double>(i % 3));
    CHECK_FALSE(bn->batch_independent());
    FlowResult t = bn->inverse(Var(x));
    // Training mode: each feature normalised by the batch's own mean and (biased) variance.
    for (std::int64_t j = 0; j < 3; ++j) {
        double m = 0, v = 0, xm = 0, xv = 0;
        for (std::int64_t b = 0; b < 64; ++b) xm += x.item(b * 3 + j) / 64;
        for (std::int64_t b = 0; b < 64; ++b) {
            m += t.out.value().item(b * 3 + j) / 64;
            xv += std::pow(x.item(b * 3 + j) - xm, 2) / 64;
        }
        for (std::int64_t b = 0; b < 64; ++b) v += std::pow(t.out.value().item(b * 3 + j) - m, 2) / 64;
        CHECK(m == Approx(0.0).margin(1e-9));
        CHECK(v == Approx(xv / (xv + 1e-5)).epsilon(1e-9));
    }
    // The running mean moved half-way (momentum 0.5) from 0 towards the batch mean.
    std::map<std::string, Tensor> buf;
    for (auto& nb : bn->named_buffers()) buf[nb.name] = nb.tensor;
    REQUIRE(buf.count("running_mean"));
    double xm1 = 0;
    for (std::int64_t b = 0; b < 64; ++b) xm1 += x.item(b * 3 + 1) / 64;
    CHECK(buf["running_mean"].item(1) == Approx(0.5 * xm1).epsilon(1e-5));
    // Evaluation: running statistics, rows independent, an exact bijection.
    bn->set_training(false);
    CHECK(bn->batch_independent());
    NoGradGuard g;
    FlowResult e = bn->inverse(Var(x));
    CHECK(kern::max_abs_diff(e.out.value(), t.out.value()) > 0.1);
    const double rm = buf["running_mean"].item(2), rv = buf["running_var"].item(2);
    CHECK(e.out.value().item(5) == Approx((x.item(5) - rm) / std::sqrt(rv + 1e-5)).epsilon(1e-5));
    Tensor one = x.rows(0, 1);
    CHECK(kern::max_abs_diff(bn->inverse(Var(one)).out.value(), e.out.value().rows(0, 1)) < 1e-12);
    FlowResult back = bn->forward(e.out);
    CHECK(kern::max_abs_diff(back.out.value(), x) < 1e-9);
    CHECK(kern::max_abs_diff(kern::neg(back.log_det.value()), e.log_det.value()) < 1e-9);
    // Evaluation leaves the running statistics alone.
    CHECK(buf["running_mean"].item(2) == rm);
}

TEST_CASE("actnorm's data-dependent initialisation gives zero-mean unit-variance outputs", "[density][normalization]") {
    for (const Shape& event : {Shape{4}, Shape{2, 3, 3}}) {
        auto an = make_layer(R"({"type": "actnorm"})", event);
        Tensor x = randn(batched(32, event), 8, DType::f32, 4.0);
        for (std::int64_t i = 0; i < x.numel(); ++i) x.set_item(i, x.item(i) + 3.0);
        Var out;
        {
            NoGradGuard g;
            out = an->data_init(Var(x), Var());
        }
        const std::int64_t C = event[0], S = numel(event) / C;
        for (std::int64_t c = 0; c < C; ++c) {
            double m = 0, v = 0;
            const double n = 32.0 * static_cast<double>(S);
            for (std::int64_t b = 0; b < 32; ++b)
                for (std::int64_t s = 0; s < S; ++s) m += out.value().item((b * C + c) * S + s) / n;
            for (std::int64_t b = 0; b < 32; ++b)
                for (std::int64_t s = 0; s < S; ++s) v += std::pow(out.value().item((b * C + c) * S + s) - m, 2) / (n - 1);
            CHECK(m == Approx(0.0).margin(1e-5));
            CHECK(v == Approx(1.0).epsilon(1e-4));
        }
        NoGradGuard g;
        CHECK(kern::max_abs_diff(an->inverse(Var(x)).out.value(), out.value()) == 0.0);
    }
}

TEST_CASE("actnorm initialised on a constant feature fails with a clear error", "[density][normalization]") {
    auto an = make_layer(R"({"type": "actnorm"})", {4});
    Tensor x = randn({16, 4}, 9, DType::f32);
    for (std::int64_t b = 0; b < 16; ++b) x.set_item(b * 4 + 2, 0.25);
    NoGradGuard g;
    const std::string msg = message_of([&] { an->data_init(Var(x), Var()); });
    CHECK_THROWS_AS(an->data_init(Var(x), Var()), NumericError);
    CHECK(msg.find("actnorm") != std::string::npos);
    CHECK(msg.find("feature 2") != std::string::npos);
    CHECK(msg.find("constant") != std::string::npos);
    for (auto& p : an->named_parameters()) CHECK(all_finite(p.var.value()));
}

// ------------------------------------------------------------------------------ element-wise

TEST_CASE("the logit layer's log-det turns logit-space densities back into pixel-space bits/dim",
          "[density][elementwise]") {
    auto lg = make_layer(R"({"type": "logit", "lambda": 1e-6})", {3});
    Tensor x = Tensor::from_vector({1, 3}, {0.5 / 256, 128.5 / 256, 255.5 / 256}, DType::f64);
    NoGradGuard g;
    FlowResult r = lg->inverse(Var(x));
    double expect = 0;
    for (int i = 0; i < 3; ++i) {
        const double p = 1e-6 + (1 - 2e-6) * x.item(i);
        CHECK(r.out.value().item(i) == Approx(std::log(p / (1 - p))).epsilon(1e-12));
        expect += std::log(1 - 2e-6) - std::log(p) - std::log(1 - p);
    }
    CHECK(r.log_det.value().item(0) == Approx(expect).epsilon(1e-12));
    FlowResult back = lg->forward(r.out);
    CHECK(kern::max_abs_diff(back.out.value(), x) < 1e-14);
    auto sg = make_layer(R"({"type": "sigmoid", "lambda": 1e-6})", {3});
    FlowResult s = sg->forward(Var(x));
    CHECK(kern::max_abs_diff(s.out.value(), r.out.value()) < 1e-12);
}

// ------------------------------------------------------------------------------ distributions

TEST_CASE("the learnable base distributions have correct densities and temperature", "[density][distributions]") {
    Rng rng(3);
    BuildContext c{{2}, {}, &rng, &registry()};
    auto gm = registry().make_distribution(params(R"({"type": "gaussian_mixture", "components": 3})"), c);
    perturb(*gm, 4, 0.5, DType::f64);
    // p integrates to 1 on a grid.
    double total = 0;
    const double h = 0.05;
    std::vector<double> pts;
    for (double a = -8; a < 8; a += h)
        for (double b = -8; b < 8; b += h) pts.insert(pts.end(), {a, b});
    Tensor grid = Tensor::from_vector({static_cast<std::int64_t>(pts.size() / 2), 2}, pts, DType::f64);
    {
        NoGradGuard g;
        Tensor lp = gm->log_prob(Var(grid)).value();
        for (std::int64_t i = 0; i < lp.numel(); ++i) total += std::exp(lp.item(i)) * h * h;
    }
    CHECK(total == Approx(1.0).epsilon(1e-3));

    auto lo = registry().make_distribution(params(R"({"type": "logistic"})"), c);
    NoGradGuard g;
    Tensor z = Tensor::from_vector({1, 2}, {0.0, 1.0}, DType::f64);
    CHECK(lo->log_prob(Var(z)).value().item(0) == Approx(std::log(0.25) + 1.0 - 2 * std::log1p(std::exp(1.0))));

    auto dg = registry().make_distribution(params(R"({"type": "diag_gaussian"})"), c);
    Rng srng(1);
    Tensor s = dg->sample(20000, srng, 0.5);
    double var = 0;
    for (std::int64_t i = 0; i < s.numel(); ++i) var += s.item(i) * s.item(i) / static_cast<double>(s.numel());
    CHECK(std::sqrt(var) == Approx(0.5).epsilon(0.02));
}

// ------------------------------------------------------------------------------ conditional

TEST_CASE("a conditional flow round-trips given its context and its output depends on it", "[density][conditional]") {
    const Shape event{4}, context{3};
    Params model = params(R"({
        "base": {"type": "conditional_diag_gaussian", "conditioner": {"type": "mlp", "hidden": [16]}},
        "layers": [
            {"type": "maf", "hidden": [16, 16]},
            {"type": "spline_coupling", "bins": 4, "conditioner": {"type": "mlp", "hidden": [16]}},
            {"type": "spline_autoregressive", "hidden": [16], "bins": 4, "order": "reverse"},
            {"type": "spline_coupling", "bins": 4, "parity": 1, "conditioner": {"type": "made", "hidden": [16]}},
            {"type": "maf", "hidden": [16], "direction": "iaf"}
        ]})");
    Rng rng(2);
    auto flow = build_flow(model, event, context, registry(), rng);
    perturb(*flow, 6, 0.2, DType::f64);
    Tensor x = randn({6, 4}, 7);
    Tensor c1 = randn({6, 3}, 8), c2 = randn({6, 3}, 9);
    NoGradGuard g;
    FlowResult z1 = flow->inverse(Var(x), Var(c1));
    FlowResult z2 = flow->inverse(Var(x), Var(c2));
    CHECK(kern::max_abs_diff(z1.out.value(), z2.out.value()) > 1e-3);
    FlowResult back = flow->forward(z1.out, Var(c1));
    CHECK(kern::max_abs_diff(back.out.value(), x) < 1e-9);
    CHECK(kern::max_abs_diff(kern::neg(back.log_det.value()), z1.log_det.value()) < 1e-9);
    // The base depends on the context too, and sampling takes one context row per sample.
    Tensor lp1 = flow->log_prob(Var(x), Var(c1)).value();
    CHECK(all_finite(lp1));
    Rng srng(4);
    Tensor s = flow->sample(6, srng, 1.0, c1);
    CHECK(s.shape() == Shape{6, 4});
    CHECK(all_finite(s));
    CHECK_THROWS_AS(flow->sample(6, srng, 1.0, Tensor()), Error);
}

// ------------------------------------------------------------------------------ data

TEST_CASE("the IDX loader reads gzip'd images and labels with a validation split", "[density][data]") {
    const std::string dir = temp_dir("idx");
    write_idx_dir(dir, 7, 4);
    Dataset d = registry().make_dataset(
        params(R"({"type": "fashion_mnist", "path": ")" + dir + R"(", "valid": 2, "context": "label"})"), 0);
    CHECK(d.event_shape == Shape{12});
    CHECK(d.context_shape == Shape{10});
    CHECK(d.discrete);
    CHECK(d.bits == 8);
    REQUIRE(d.train.size() == 5);
    REQUIRE(d.valid.size() == 2);
    REQUIRE(d.test.size() == 4);
    // pixel (i, k) = (7 i + k) mod 256; the validation split is the last two training images.
    CHECK(d.train.x.item(3 * 12 + 5) == 26.0);
    CHECK(d.valid.x.item(0 * 12 + 1) == 36.0);
    CHECK(d.train.context.item(3 * 10 + 3) == 1.0);
    CHECK(kern::sum_all(d.train.context) == 5.0);
    CHECK(d.valid.context.item(1 * 10 + 6) == 1.0);
    Dataset img = registry().make_dataset(
        params(R"({"type": "mnist", "path": ")" + dir + R"(", "flatten": false, "train_limit": 3, "test_limit": 1})"), 0);
    CHECK(img.event_shape == Shape{1, 3, 4});
    CHECK(img.train.x.shape() == Shape{3, 1, 3, 4});
    CHECK(img.test.size() == 1);
    CHECK_FALSE(img.train.context.defined());
    std::filesystem::remove_all(dir);
}

TEST_CASE("a missing, truncated or corrupt IDX file is an IoError naming the file", "[density][data]") {
    const std::string dir = temp_dir("idx_bad");
    const std::string missing = message_of(
        [&] { registry().make_dataset(params(R"({"type": "fashion_mnist", "path": ")" + dir + "/nowhere\"}"), 0); });
    CHECK(missing.find("train-images-idx3-ubyte.gz") != std::string::npos);
    CHECK(missing.find("dataset-fashion-mnist") != std::string::npos);

    write_idx_dir(dir, 5, 2);
    // The header announces 5 images, the file holds 3.
    write_gzip(dir + "/train-images-idx3-ubyte.gz", idx_images(5, 3, 4, 3));
    const std::string p = R"({"type": "fashion_mnist", "path": ")" + dir + "\"}";
    CHECK_THROWS_AS(registry().make_dataset(params(p), 0), IoError);
    std::string msg = message_of([&] { registry().make_dataset(params(p), 0); });
    CHECK(msg.find("train-images-idx3-ubyte.gz") != std::string::npos);
    CHECK(msg.find("truncated") != std::string::npos);

    // A gzip stream cut in the middle.
    write_gzip(dir + "/train-images-idx3-ubyte.gz", idx_images(5, 3, 4, 5));
    {
        std::ifstream in(dir + "/train-images-idx3-ubyte.gz", std::ios::binary);
        std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        std::ofstream out(dir + "/train-images-idx3-ubyte.gz", std::ios::binary | std::ios::trunc);
        out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
    }
    msg = message_of([&] { registry().make_dataset(params(p), 0); });
    CHECK(msg.find("train-images-idx3-ubyte.gz") != std::string::npos);
    CHECK_THROWS_AS(registry().make_dataset(params(p), 0), IoError);

    // Not an IDX file at all.
    write_gzip(dir + "/train-images-idx3-ubyte.gz", {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17});
    msg = message_of([&] { registry().make_dataset(params(p), 0); });
    CHECK(msg.find("not an IDX image file") != std::string::npos);
    std::filesystem::remove_all(dir);
}

TEST_CASE("npy and csv tables are split and standardised with training statistics", "[density][data]") {
    const std::string dir = temp_dir("tables");
    const std::int64_t n = 50, d = 3;
    std::vector<double> vals;
    for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < d; ++j) vals.push_back(static_cast<double>(i * (j + 1)) + 10.0 * static_cast<double>(j));
    {
        std::string header = "{'descr': '<f8', 'fortran_order': False, 'shape': (50, 3), }";
        while ((10 + header.size() + 1) % 64 != 0) header += ' ';
        header += '\n';
        std::ofstream out(dir + "/t.npy", std::ios::binary);
        out.write("\x93NUMPY\x01\x00", 8);
        const auto hl = static_cast<std::uint16_t>(header.size());
        out.put(static_cast<char>(hl & 0xff));
        out.put(static_cast<char>(hl >> 8));
        out << header;
        out.write(reinterpret_cast<const char*>(vals.data()), static_cast<std::streamsize>(vals.size() * sizeof(double)));
    }
    {
        std::ofstream out(dir + "/t.csv");
        out << "a,b,c\n";
        for (std::int64_t i = 0; i < n; ++i)
            out << vals[static_cast<std::size_t>(i * d)] << "," << vals[static_cast<std::size_t>(i * d + 1)] << ","
                << vals[static_cast<std::size_t>(i * d + 2)] << "\n";
    }
    for (const std::string type : {"npy", "csv"}) {
        DYNAMIC_SECTION(type) {
            Dataset ds = registry().make_dataset(
                params(R"({"type": ")" + type + R"(", "path": ")" + dir + "/t." + type + R"(", "test_fraction": 0.2})"), 3);
            CHECK(ds.event_shape == Shape{3});
            REQUIRE(ds.train.size() == 40);
            REQUIRE(ds.test.size() == 10);
            for (std::int64_t j = 0; j < d; ++j) {
                double m = 0, v = 0;
                for (std::int64_t i = 0; i < 40; ++i) m += ds.train.x.item(i * d + j) / 40;
                for (std::int64_t i = 0; i < 40; ++i) v += std::pow(ds.train.x.item(i * d + j) - m, 2) / 39;
                CHECK(m == Approx(0.0).margin(1e-5));
                CHECK(v == Approx(1.0).epsilon(1e-4));
            }
            // The test rows use the same (training) statistics: column 1 is twice column 0.
            for (std::int64_t i = 0; i < 10; ++i)
                CHECK(ds.test.x.item(i * d) == Approx(ds.test.x.item(i * d + 1)).margin(1e-5));
        }
    }
    {
        std::ofstream out(dir + "/bad.csv");
        out << "1,2\n3,x\n";
    }
    const std::string msg =
        message_of([&] { registry().make_dataset(params(R"({"type": "csv", "path": ")" + dir + "/bad.csv\"}"), 0); });
    CHECK(msg.find("bad.csv:2") != std::string::npos);
    std::filesystem::remove_all(dir);
}

// A real (deflate-compressed) gzip file: `body`, then `zeros` zero bytes, compressed as they
// stream in, so gigabytes of zeros cost the test little memory.
void write_deflated_gzip(const std::string& path, const std::vector<std::uint8_t>& body, std::size_t zeros) {
    z_stream z{};
    REQUIRE(deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK);  // 15 + 16: gzip wrapper
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    std::vector<std::uint8_t> out(1 << 16), zero(1 << 20, 0);
    auto feed = [&](const std::uint8_t* p, std::size_t n, int flush) {
        z.next_in = const_cast<std::uint8_t*>(p);
        z.avail_in = static_cast<unsigned>(n);
        do {
            z.next_out = out.data();
            z.avail_out = static_cast<unsigned>(out.size());
            REQUIRE(deflate(&z, flush) != Z_STREAM_ERROR);
            f.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size() - z.avail_out));
        } while (z.avail_out == 0);
    };
    feed(body.data(), body.size(), Z_NO_FLUSH);
    for (std::size_t left = zeros; left > 0;) {
        const std::size_t k = std::min(left, zero.size());
        feed(zero.data(), k, Z_NO_FLUSH);
        left -= k;
    }
    feed(nullptr, 0, Z_FINISH);
    deflateEnd(&z);
    REQUIRE(f.good());
}

long max_rss_kb() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss;
}

TEST_CASE("an IDX header whose sizes overflow 64 bits is an IoError, not an out-of-bounds read", "[density][data]") {
    // n = 4, rows = cols = 2^31: n * rows * cols = 2^64 wraps to 0 bytes needed.
    std::vector<std::uint8_t> header = idx_images(4, 1u << 31, 1u << 31, 0);
    header.insert(header.end(), 64, 7);
    std::string msg = message_of([&] { density::parse_idx_images(header, "x.idx"); });
    CHECK(msg.find("x.idx: header: 4 images of 2147483648x2147483648 overflow 64-bit sizes") != std::string::npos);
    CHECK_THROWS_AS(density::parse_idx_images(header, "x.idx"), IoError);

    const std::string dir = temp_dir("idx_overflow");
    write_idx_dir(dir, 5, 2);
    write_gzip(dir + "/train-images-idx3-ubyte.gz", header);
    const std::string p = R"({"type": "fashion_mnist", "path": ")" + dir + "\"}";
    CHECK_THROWS_AS(registry().make_dataset(params(p), 0), IoError);
    msg = message_of([&] { registry().make_dataset(params(p), 0); });
    CHECK(msg.find("train-images-idx3-ubyte.gz: header:") != std::string::npos);
    // Empty images are refused too (rows * cols = 0 made 0-wide events).
    write_gzip(dir + "/train-images-idx3-ubyte.gz", idx_images(5, 0, 4, 0));
    CHECK_THROWS_AS(registry().make_dataset(params(p), 0), IoError);
    std::filesystem::remove_all(dir);
}

TEST_CASE("a gzip'd IDX file with trailing data is refused without inflating it all", "[density][data]") {
    const std::string dir = temp_dir("idx_trailing");
    write_idx_dir(dir, 5, 2);
    const std::string file = dir + "/train-images-idx3-ubyte.gz";
    // 512 MiB of zeros after the 5 images the header announces (about 0.5 MB compressed).
    write_deflated_gzip(file, idx_images(5, 3, 4, 5), std::size_t{512} << 20);
    const long rss_before = max_rss_kb();
    const std::string p = R"({"type": "fashion_mnist", "path": ")" + dir + "\"}";
    CHECK_THROWS_AS(registry().make_dataset(params(p), 0), IoError);
    const std::string msg = message_of([&] { registry().make_dataset(params(p), 0); });
    CHECK(msg.find("train-images-idx3-ubyte.gz: trailing data after the 5 images of 3x4") != std::string::npos);
    CHECK(max_rss_kb() - rss_before < 64 * 1024);  // far less than the 512 MiB it would inflate to

    // The same file without the trailing zeros loads: the reader stops exactly at the end.
    write_deflated_gzip(file, idx_images(5, 3, 4, 5), 0);
    CHECK(registry().make_dataset(params(p), 0).train.size() == 5);
    // A label file with one label too many.
    std::vector<std::uint8_t> labels = idx_labels(5);
    labels.push_back(3);
    write_gzip(dir + "/train-labels-idx1-ubyte.gz", labels);
    CHECK_THROWS_AS(registry().make_dataset(params(R"({"type": "fashion_mnist", "context": "label", "path": ")" + dir + "\"}"), 0),
                    IoError);
    CHECK_THROWS_AS(density::parse_idx_labels(labels, "l.idx", 5), IoError);
    labels.pop_back();
    CHECK(density::parse_idx_labels(labels, "l.idx", 5).size() == 5);
    std::filesystem::remove_all(dir);
}

// A .npy file with this header dict and `data_bytes` bytes of data.
void write_npy_file(const std::string& path, std::string header, std::size_t data_bytes) {
    while ((10 + header.size() + 1) % 64 != 0) header += ' ';
    header += '\n';
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write("\x93NUMPY\x01\x00", 8);
    out.put(static_cast<char>(header.size() & 0xff));
    out.put(static_cast<char>(header.size() >> 8));
    out << header << std::string(data_bytes, '\0');
    REQUIRE(out.good());
}

TEST_CASE("a corrupt .npy file is an IoError naming the file and what is wrong in it", "[density][data]") {
    const std::string dir = temp_dir("npy_bad");
    const std::string file = dir + "/fmnist.npy";
    const std::string p = R"({"type": "npy", "path": ")" + file + "\"}";
    auto fault_of = [&](const std::string& header, std::size_t data_bytes) {
        write_npy_file(file, header, data_bytes);
        CHECK_THROWS_AS(registry().make_dataset(params(p), 0), IoError);
        return message_of([&] { registry().make_dataset(params(p), 0); });
    };
    CHECK(fault_of("{'descr': '<c16', 'fortran_order': False, 'shape': (4, 2), }", 128)
              .find("fmnist.npy: header: unknown dtype '<c16'; supported: <f4, <f8") != std::string::npos);
    // "<f" made std::stoi throw ("stoi", reported as a config error).
    CHECK(fault_of("{'descr': '<f', 'fortran_order': False, 'shape': (4, 2), }", 64).find("unknown dtype '<f'") !=
          std::string::npos);
    // A negative dimension became a huge vector::resize.
    CHECK(fault_of("{'descr': '<f8', 'fortran_order': False, 'shape': (-5, 3), }", 64)
              .find("fmnist.npy: header: negative dimension") != std::string::npos);
    CHECK(fault_of("{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", 64)
              .find("overflows 64-bit sizes") != std::string::npos);
    CHECK(fault_of("{'descr': '<f8', 'fortran_order': False, 'shape': (4x, 2), }", 64).find("fmnist.npy: header:") !=
          std::string::npos);
    CHECK(fault_of("{'descr': '<f8', 'fortran_order': Maybe, 'shape': (4, 2), }", 64).find("fortran_order") !=
          std::string::npos);
    CHECK(fault_of("{'descr': '<f8', 'shape': (4, 2), }", 64).find("missing 'fortran_order'") != std::string::npos);
    CHECK(fault_of("{'descr': '<f8', 'fortran_order': False, 'shape': (4, 2), }", 40).find("truncated") !=
          std::string::npos);
    CHECK(fault_of("{'descr': '<f8', 'fortran_order': False, 'shape': (4, 2), }", 72).find("trailing data") !=
          std::string::npos);
    CHECK(fault_of("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2, 2), }", 64).find("3-D") != std::string::npos);
    // A header length past the end of the file.
    {
        std::ofstream out(file, std::ios::binary | std::ios::trunc);
        out.write("\x93NUMPY\x01\x00\xff\xff{'descr'", 18);
    }
    CHECK_THROWS_AS(registry().make_dataset(params(p), 0), IoError);
    // A directory given as the data file.
    std::filesystem::remove(file);
    std::filesystem::create_directories(file);
    const std::string msg = message_of([&] { registry().make_dataset(params(p), 0); });
    CHECK(msg.find("fmnist.npy: is a directory") != std::string::npos);
    CHECK_THROWS_AS(registry().make_dataset(params(p), 0), IoError);
    // A well-formed file still reads, in Fortran order too.
    std::vector<std::uint8_t> bytes;
    {
        write_npy_file(dir + "/ok.npy", "{'descr': '|u1', 'fortran_order': True, 'shape': (2, 3), }", 0);
        std::ifstream in(dir + "/ok.npy", std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        for (std::uint8_t v : {1, 4, 2, 5, 3, 6}) bytes.push_back(v);
    }
    const density::Table t = density::parse_npy(bytes, "ok.npy");
    CHECK(t.n == 2);
    CHECK(t.d == 3);
    CHECK(t.v == std::vector<double>{1, 2, 3, 4, 5, 6});
    std::filesystem::remove_all(dir);
}

TEST_CASE("a CSV file starting with a UTF-8 byte-order mark keeps its first data row", "[density][data]") {
    const density::Table t = density::parse_csv("\xEF\xBB\xBF" "1,2\n3,4\n5,6\n", "bom.csv");
    CHECK(t.n == 3);
    CHECK(t.v == std::vector<double>{1, 2, 3, 4, 5, 6});
    // With a header row after the mark, the header is still recognised.
    CHECK(density::parse_csv("\xEF\xBB\xBF" "a,b\r\n1,2\r\n", "bom.csv").n == 1);
    const std::string dir = temp_dir("csv_bom");
    {
        std::ofstream out(dir + "/bom.csv", std::ios::binary);
        out << "\xEF\xBB\xBF";
        for (int i = 0; i < 20; ++i) out << i << "," << 2 * i << "\n";
    }
    Dataset d = registry().make_dataset(
        params(R"({"type": "csv", "path": ")" + dir + R"(/bom.csv", "test_fraction": 0.0, "shuffle": false, "standardize": false})"), 0);
    REQUIRE(d.train.size() == 20);
    CHECK(d.train.x.item(0) == 0.0);
    CHECK(d.train.x.item(1) == 0.0);
    std::filesystem::remove_all(dir);
}

TEST_CASE("a CSV cell with an embedded NUL byte is an IoError naming the file, row and column", "[density][data]") {
    const std::string text("1,2\n3,4\n5,1\0junk\n", 17);
    CHECK_THROWS_AS(density::parse_csv(text, "nul.csv"), IoError);
    CHECK(message_of([&] { density::parse_csv(text, "nul.csv"); }).find("nul.csv:3: column 2: an embedded NUL byte") !=
          std::string::npos);
    const std::string dir = temp_dir("csv_nul");
    {
        std::ofstream out(dir + "/nul.csv", std::ios::binary);
        out << text;
    }
    const std::string p = R"({"type": "csv", "path": ")" + dir + "/nul.csv\"}";
    CHECK_THROWS_AS(registry().make_dataset(params(p), 0), IoError);
    CHECK(message_of([&] { registry().make_dataset(params(p), 0); }).find("nul.csv:3: column 2") != std::string::npos);
    // A non-numeric cell names its column too, and a directory is not a CSV file.
    CHECK(message_of([&] { density::parse_csv("1,2\n3,x\n", "bad.csv"); }).find("bad.csv:2: column 2: 'x' is not a number") !=
          std::string::npos);
    CHECK(message_of([&] { registry().make_dataset(params(R"({"type": "csv", "path": ")" + dir + "\"}"), 0); })
              .find("is a directory") != std::string::npos);
    std::filesystem::remove_all(dir);
}

TEST_CASE("labeled moons carry a one-hot context of their moon", "[density][data][conditional]") {
    Dataset d = registry().make_dataset(params(R"({"type": "labeled_moons", "train": 400, "test": 10})"), 1);
    CHECK(d.context_shape == Shape{2});
    REQUIRE(d.train.context.shape() == Shape{400, 2});
    double outer = 0;
    for (std::int64_t i = 0; i < 400; ++i) {
        const bool is_outer = d.train.context.item(2 * i) == 1.0;
        CHECK(d.train.context.item(2 * i) + d.train.context.item(2 * i + 1) == 1.0);
        outer += is_outer ? 1 : 0;
        // the outer moon lies above y = -0.25 and the inner one below 0.75 (noise 0.05)
        if (is_outer) CHECK(d.train.x.item(2 * i + 1) > -0.3);
        else CHECK(d.train.x.item(2 * i + 1) < 0.8);
    }
    CHECK(outer == 200);
}

// ------------------------------------------------------------------------------ W4 benchmark

// Workload W4 for W2's model: samples/s at batch 100 with the incremental solve, against the
// naive D-pass inversion on the same latents. Hidden (run with "[.w4]"): it takes a minute.
// FLOWLAB_W4_CHECKPOINT=path uses trained weights (e.g. runs/fmnist_maf/checkpoint...).
TEST_CASE("W2 sampling with the incremental solve matches the naive inversion, timing both", "[.w4]") {
    auto build = [&](bool naive) {
        std::vector<std::string> sets = {"data.train_limit=200", "data.test_limit=100"};
        if (naive)
            for (int l = 1; l <= 5; ++l) sets.push_back("model.layers." + std::to_string(l) + ".inverse_method=naive");
        Params cfg = load_experiment(FLOWLAB_SOURCE_DIR "/configs/fmnist_maf.json", sets);
        Experiment exp = build_experiment(cfg, registry());
        if (const char* ck = std::getenv("FLOWLAB_W4_CHECKPOINT")) load_weights(exp, ck);
        else perturb(*exp.flow, 3, 0.01, DType::f32);  // untrained: small random weights
        exp.flow->set_training(false);
        return exp;
    };
    Experiment fast = build(false), naive = build(true);
    auto timed = [](Experiment& e, Tensor& out) {
        Rng rng(42);
        auto t0 = std::chrono::steady_clock::now();
        out = e.flow->sample(100, rng, 1.0);
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    Tensor a, b;
    timed(fast, a);  // warm-up
    std::vector<double> t;
    for (int r = 0; r < 5; ++r) t.push_back(timed(fast, a));
    std::sort(t.begin(), t.end());
    const double t_naive = timed(naive, b);
    // Rows whose samples are finite in both (a briefly trained flow can overflow f32 at T = 1).
    double worst = 0, scale = 0;
    std::int64_t finite_rows = 0;
    for (std::int64_t r = 0; r < 100; ++r) {
        bool ok = true;
        for (std::int64_t j = 0; j < 784; ++j) ok = ok && std::isfinite(a.item(r * 784 + j)) && std::isfinite(b.item(r * 784 + j));
        if (!ok) continue;
        ++finite_rows;
        for (std::int64_t j = 0; j < 784; ++j) {
            worst = std::max(worst, std::abs(a.item(r * 784 + j) - b.item(r * 784 + j)));
            scale = std::max(scale, std::abs(b.item(r * 784 + j)));
        }
    }
    std::printf("W4 (W2 model, batch 100): incremental %.1f samples/s (median of 5: %.3f s), naive %.2f samples/s "
                "(%.1f s), speed-up %.0fx; %lld/100 rows finite, max |difference| %.3g (max |x| %.3g)\n",
                100.0 / t[2], t[2], 100.0 / t_naive, t_naive, t_naive / t[2], static_cast<long long>(finite_rows), worst,
                scale);
    CHECK(finite_rows > 0);
    CHECK(worst <= 1e-3 * std::max(1.0, scale));
    // The speed-up is printed, not asserted: timings belong to benchmarks (apps/bench), and a
    // sanitizer build or a busy machine changes them.
}
