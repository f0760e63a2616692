// The variational dequantizer: its objective on a tiny image against a hand computation, the
// gradient reaching q's parameters, and the importance-weighted evaluation bound.
#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <string>

#include "flowlab/errors.hpp"
#include "flowlab/experiment.hpp"
#include "flowlab/plugin.hpp"

#include "test_support.hpp"

using namespace flowlab;

namespace {
const Registry& registry() { return test::standard_and_image_registry(); }

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
}  // namespace

TEST_CASE("the variational dequantizer's x' and log-weight on a 1x2x2 image equal a hand computation",
          "[image][vardeq]") {
    Rng init(1);
    auto dq = registry().make_dequantizer(
        Params::parse(R"({"type": "variational", "offset": -0.5, "layers": [{"type": "actnorm2d"}]})"),
        BuildContext{{1, 2, 2}, {}, &init, &registry()});
    REQUIRE(dq->stochastic());
    // q: v = eps exp(-logs) - b (actnorm2d's forward), u = sigmoid(v).
    const double b = 0.2, logs = 0.3;
    for (auto& p : dq->named_parameters()) p.var.mutable_value().fill(p.name.find("bias") != std::string::npos ? b : logs);
    Tensor x = Tensor::from_vector({1, 1, 2, 2}, {0, 17, 128, 255});
    Rng rng(42);
    Dequantized d = dq->dequantize(x, rng);

    Rng same(42);  // the draw the dequantizer made
    Tensor eps = Tensor::empty({1, 1, 2, 2});
    same.fill_normal(eps);
    double log_q = 4 * logs;  // minus the forward log-det -H W logs
    for (int i = 0; i < 4; ++i) {
        const double e = eps.item(i), v = e * std::exp(-logs) - b, u = sigmoid(v);
        log_q += -0.5 * e * e - 0.5 * std::log(2 * M_PI) - std::log(u * (1 - u));
        CHECK(d.x.value().item(i) == Approx((x.item(i) + u) / 256.0 - 0.5).epsilon(1e-6));
        // x' lies in its bin
        CHECK(d.x.value().item(i) > x.item(i) / 256.0 - 0.5);
        CHECK(d.x.value().item(i) < (x.item(i) + 1) / 256.0 - 0.5);
    }
    CHECK(d.log_weight.value().item(0) == Approx(-4 * std::log(256.0) - log_q).epsilon(1e-6));
}

TEST_CASE("the variational bound's gradient reaches q's parameters through x' and the log-weight",
          "[image][vardeq]") {
    Rng init(2);
    auto dq = registry().make_dequantizer(
        Params::parse(R"({"type": "variational",
                          "layers": [{"type": "conv_affine_coupling", "mask": "checkerboard",
                                      "conditioner": {"type": "cnn", "hidden": 4}}],
                          "features": {"type": "cnn", "hidden": 4}, "feature_channels": 3})"),
        BuildContext{{1, 4, 4}, {}, &init, &registry()});
    // Away from the zero init, so that every parameter is on a path to the bound.
    Rng noise(5);
    for (auto& p : dq->named_parameters()) {
        Tensor n = Tensor::empty(p.var.shape());
        noise.fill_normal(n, 0.0, 0.2);
        kern::add_inplace(p.var.mutable_value(), n);
    }
    Tensor x = Tensor::full({2, 1, 4, 4}, 100.0);
    Rng rng(3);
    Dequantized d = dq->dequantize(x, rng);
    // A stand-in model term that depends on x', plus the log-weight.
    Var obj = sum_all(d.x * d.x) + sum_all(d.log_weight);
    obj.backward();
    int n = 0;
    for (auto& p : dq->named_parameters()) {
        INFO("parameter " << p.name);
        REQUIRE(p.var.grad().defined());
        CHECK(kern::sq_norm(p.var.grad()) > 0.0);
        ++n;
    }
    CHECK(n == 12);  // 2 x (3 convs x (weight, bias))
    CHECK(kern::all_finite(d.log_weight.value()));
}

TEST_CASE("the variational dequantizer rejects layers that change the number of values", "[image][vardeq]") {
    Rng init(4);
    CHECK_THROWS_AS(registry().make_dequantizer(Params::parse(R"({"type": "variational", "layers": []})"),
                                                BuildContext{{1, 4, 4}, {}, &init, &registry()}),
                    Error);
    CHECK_THROWS_AS(registry().make_dequantizer(Params::parse(R"({"type": "variational"})"),
                                                BuildContext{{16}, {}, &init, &registry()}),
                    Error);
}

namespace {
Experiment small_fmnist_experiment(const std::string& dequantizer) {
    Params cfg = load_experiment(
        FLOWLAB_SOURCE_DIR "/configs/fmnist_glow_vardeq.json",
        {"data.train_limit=64", "data.test_limit=64", "model.dequantizer=" + dequantizer,
         R"(model.layers=[{"type": "shift", "offset": -0.5}, {"type": "squeeze"},
                          {"type": "conv_affine_coupling", "conditioner": {"type": "cnn", "hidden": 8}}])"});
    return build_experiment(cfg, test::shipped_plugins_registry());
}
}  // namespace

TEST_CASE("K importance samples tighten the variational bound, and the uniform one stays put",
          "[image][vardeq][eval]") {
    Experiment exp = small_fmnist_experiment(R"({"type": "variational", "layers": [{"type": "actnorm2d"}]})");
    // q far from uniform: v = eps exp(1) - 0 puts u near 0 and 1, so log q varies by tens of
    // nats between draws and the ELBO (K = 1) sits far below log P(x).
    for (auto& p : exp.flow->dequantizer()->named_parameters())
        p.var.mutable_value().fill(p.name.find("bias") != std::string::npos ? 0.0 : -1.0);
    const EvalResult k1 = evaluate(exp, "test", 64, 1), k4 = evaluate(exp, "test", 64, 4),
                     k16 = evaluate(exp, "test", 64, 16);
    INFO("nll K=1 " << k1.nll << ", K=4 " << k4.nll << ", K=16 " << k16.nll);
    REQUIRE(std::isfinite(k16.nll));
    CHECK(k1.n == 64);
    CHECK(k4.nll < k1.nll - 1.0);
    CHECK(k16.nll < k4.nll - 1.0);
    CHECK(k16.bpd == Approx(k16.nll / (784 * std::log(2.0))));

    // Uniform q: the flow's density is smooth on the scale of a bin, so the bound barely moves
    // with K; a mis-weighted average (a missing 1/K) would shift it by log K.
    Experiment uni = small_fmnist_experiment(R"({"type": "uniform", "bits": 8})");
    const EvalResult u1 = evaluate(uni, "test", 64, 1), u16 = evaluate(uni, "test", 64, 16);
    INFO("uniform nll K=1 " << u1.nll << ", K=16 " << u16.nll);
    CHECK(std::abs(u16.nll - u1.nll) < 0.05);
}
