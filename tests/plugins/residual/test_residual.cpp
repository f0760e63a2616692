// The residual plugin: conformance of both blocks in exact mode, the log-det estimators against
// the exact log-det (values and gradients), the Neumann gradient's memory, spectral
// normalisation against independently measured operator norms, the fixed-point inverse, the
// evaluation mode's determinism, and a resumed run that is the same bits as an uninterrupted one.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include <flowlab/config.hpp>
#include <flowlab/conformance.hpp>
#include <flowlab/conv.hpp>
#include <flowlab/errors.hpp>
#include <flowlab/experiment.hpp>
#include <flowlab/ops.hpp>
#include <flowlab/trainer.hpp>

#include "test_support.hpp"

using namespace flowlab;
namespace fs = std::filesystem;

namespace {

Registry& registry() {
    static Registry* reg = test::registry_of({"standard", "density", "residual"});
    return *reg;
}

std::unique_ptr<Bijector> make(const std::string& type, const std::string& params_json, const Shape& event,
                               std::uint64_t seed = 7) {
    Rng rng(seed);
    Params p = Params::parse(params_json).with("type", "\"" + type + "\"");
    return registry().make_bijector(p, BuildContext{event, {}, &rng, &registry()});
}

void require_all_pass(const std::vector<ConformanceCheck>& rows) {
    REQUIRE_FALSE(rows.empty());
    for (const auto& r : rows) {
        INFO(r.type << " " << r.shape << " " << r.check << ": worst " << r.worst << ", tolerance " << r.tolerance
                    << "; " << r.detail);
        CHECK(r.passed);
        CHECK(r.detail.find("ran in f32") == std::string::npos);
    }
}

// Power iteration and fixed points run to convergence, so that two blocks with the same
// parameters compute the same function whatever each was asked before.
const std::string kConverged =
    R"("power_iterations": 2000, "eval_power_iterations": 2000, "power_tolerance": 1e-13, )"
    R"("inverse_tolerance": 1e-13, "inverse_max_iterations": 10000)";
// For many draws in training mode from power-iteration vectors already converged: one iteration
// per call keeps the normalised weights where they are, where kConverged's 2000 per call made
// each draw cost 2000 passes.
const std::string kConvergedOnce =
    R"("power_iterations": 1, "eval_power_iterations": 2000, "power_tolerance": 1e-13, )"
    R"("inverse_tolerance": 1e-13, "inverse_max_iterations": 10000)";

Tensor log_det_of(Bijector& b, const Tensor& x) {
    NoGradGuard ng;
    return b.inverse(Var(x)).log_det.value().clone();
}

Tensor buffer(const Module& m, const std::string& name) {
    for (const auto& b : m.named_buffers())
        if (b.name == name) return b.tensor;
    FAIL("no buffer " << name);
    return Tensor();
}
Var parameter(const Module& m, const std::string& name) {
    for (const auto& p : m.named_parameters())
        if (p.name == name) return p.var;
    FAIL("no parameter " << name);
    return Var();
}

// ||A|| of a linear map by power iteration on A^T A; `adjoint` must be independent of the
// layer's own adjoint.
double operator_norm(const std::function<Tensor(const Tensor&)>& map, const std::function<Tensor(const Tensor&)>& adjoint,
                     Tensor v, int iterations) {
    double sigma = 0.0;
    for (int it = 0; it < iterations; ++it) {
        const double n = std::sqrt(kern::sq_norm(v));
        kern::scale_inplace(v, 1.0 / n);
        Tensor av = map(v);
        sigma = std::sqrt(kern::sq_norm(av));
        v = adjoint(av);
    }
    return sigma;
}

// The norm of a dense weight [in, out] (x -> x W), through plain matrix products.
double dense_norm(const Tensor& w) {
    const std::int64_t in = w.size(0), out = w.size(1);
    return operator_norm([&](const Tensor& v) { return kern::matmul(v.reshape({1, in}), w).reshape({out}); },
                         [&](const Tensor& y) { return kern::matmul(y.reshape({1, out}), w, false, true).reshape({in}); },
                         test::randn({in}, 99), 3000);
}

// The norm of the stride-1 "same" convolution with w on [C, H, W] images; its adjoint by the
// autodiff (conv backward data), not by the plugin's flipped kernel.
double conv_norm(const Tensor& w, std::int64_t h, std::int64_t wd) {
    const std::int64_t O = w.size(0), C = w.size(1), pad = w.size(2) / 2;
    auto map = [&](const Tensor& v) {
        return kern::conv2d_reference(v.reshape({1, C, h, wd}), w, Tensor(), 1, pad).reshape({O, h, wd});
    };
    auto adjoint = [&](const Tensor& y) {
        Var x(Tensor::zeros({1, C, h, wd}, DType::f64), true);
        Var out = conv2d(x, Var(w), Var(), 1, pad);
        out.backward(y.reshape({1, O, h, wd}));
        return x.grad().reshape({C, h, wd});
    };
    return operator_norm(map, adjoint, test::randn({C, h, wd}, 98), 3000);
}

// W / max(1, sigma / coeff), sigma = <u, A v> from the layer's buffers: the weight the block uses
// in training mode.
Tensor normalised(const Module& m, const std::string& layer, double coeff, bool conv, std::int64_t h = 0,
                  std::int64_t wd = 0) {
    Tensor w = parameter(m, "net." + layer + ".weight").value().to(DType::f64);
    Tensor u = buffer(m, "net." + layer + ".u").to(DType::f64), v = buffer(m, "net." + layer + ".v").to(DType::f64);
    Tensor av = conv ? kern::conv2d_reference(v.reshape({1, w.size(1), h, wd}), w, Tensor(), 1, w.size(2) / 2)
                     : kern::matmul(v.reshape({1, w.size(0)}), w);
    double sigma = 0.0;
    for (std::int64_t i = 0; i < av.numel(); ++i) sigma += av.item(i) * u.item(i);
    return kern::scale(w, 1.0 / std::max(1.0, sigma / coeff));
}

struct Stats {
    std::vector<double> mean, se;
};
Stats stats(const std::vector<std::vector<double>>& draws) {
    const std::size_t n = draws.size(), k = draws.front().size();
    Stats s{std::vector<double>(k, 0.0), std::vector<double>(k, 0.0)};
    for (const auto& d : draws)
        for (std::size_t j = 0; j < k; ++j) s.mean[j] += d[j] / static_cast<double>(n);
    for (std::size_t j = 0; j < k; ++j) {
        double ss = 0.0;
        for (const auto& d : draws) ss += (d[j] - s.mean[j]) * (d[j] - s.mean[j]);
        s.se[j] = std::sqrt(ss / static_cast<double>(n - 1) / static_cast<double>(n));
    }
    return s;
}

}  // namespace

TEST_CASE("both residual blocks pass the conformance suite in exact mode", "[residual][conformance]") {
    require_all_pass(check_bijector(registry(), "residual"));
    require_all_pass(check_bijector(registry(), "conv_residual"));
}

TEST_CASE("the blocks pass the conformance suite with ELU, channels-first and deeper networks",
          "[residual][conformance]") {
    auto with_hints = [](const std::string& layer, const std::string& name, std::vector<Shape> shapes,
                         const std::string& params) {
        BijectorEntry e = *registry().bijectors.find(layer);
        e.name = name;
        e.hints.shapes = std::move(shapes);
        e.hints.params_json = "{" + params + ", " + kConverged + R"(, "log_det": "exact"})";
        if (!registry().bijectors.contains(name)) registry().add_bijector(e);
        return check_bijector(registry(), name);
    };
    require_all_pass(with_hints("residual", "residual_elu_under_test", {{3}}, R"("hidden": [6, 5, 7], "activation": "elu")"));
    require_all_pass(with_hints("conv_residual", "conv_residual_elu_nchw_under_test", {{2, 3, 4}},
                                R"("hidden": [3, 5], "kernels": [3, 1, 5], "activation": "elu", "layout": "nchw")"));
    require_all_pass(with_hints("conv_residual", "conv_residual_lipswish_nhwc_under_test", {{3, 2, 2}},
                                R"("hidden": [4, 4], "kernels": [1, 3, 1], "coeff": 0.5)"));
}

TEST_CASE("the estimators' mean over many draws is the exact log-det within 3 standard errors", "[residual][estimator]") {
    struct Case {
        std::string type, net;
        Shape event;
        std::string estimator;
        int draws;
    };
    // Roulette needs Lip(g)^2 < 1 - p for a finite variance (the weights 1/P(N >= k) = 2^k at
    // p = 0.5 must lose to the terms' decay): coeff 0.8 with three layers keeps Lip(g) <= 0.51.
    const std::vector<Case> cases = {
        {"residual", R"("hidden": [16, 16], "activation": "elu")", {5}, R"("log_det": "series", "series_terms": 60)", 1000},
        {"residual", R"("hidden": [16, 16], "coeff": 0.8)", {5}, R"("log_det": "roulette")", 3000},
        {"residual", R"("hidden": [16, 16], "coeff": 0.8, "activation": "elu")", {5},
         R"("log_det": "roulette", "probe": "gaussian", "exact_terms": 1, "geometric_p": 0.3)", 3000},
        {"conv_residual", R"("hidden": [6], "kernels": [3, 3], "activation": "elu")", {2, 3, 3},
         R"("log_det": "series", "series_terms": 60, "probes": 8)", 1000},
        {"conv_residual", R"("hidden": [6], "kernels": [3, 3], "coeff": 0.8, "activation": "elu")", {2, 3, 3},
         R"("log_det": "roulette")", 3000},
    };
    for (const auto& c : cases) {
        DYNAMIC_SECTION(c.type << " " << c.estimator) {
            const std::string common = "{" + c.net + ", " + kConverged + ", ";
            auto exact = make(c.type, common + R"("log_det": "exact"})", c.event);
            auto est = make(c.type, common + c.estimator + "}", c.event);
            // The same perturbed parameters in both (the builds drew the same initial ones).
            test::perturb(*exact, 11, 0.3, DType::f64);
            test::perturb(*est, 11, 0.3, DType::f64);
            const Tensor x = test::randn(test::batched(4, c.event), 5);
            exact->set_training(true);
            est->set_training(true);
            const Tensor ref = log_det_of(*exact, x);
            std::vector<std::vector<double>> draws;
            for (int i = 0; i < c.draws; ++i) draws.push_back(log_det_of(*est, x).to_vector());
            Stats s = stats(draws);
            const double largest = test::max_abs(ref);
            for (std::int64_t j = 0; j < 4; ++j) {
                INFO("sample " << j << ": exact " << ref.item(j) << ", estimate " << s.mean[j] << " +- " << s.se[j]);
                CHECK(std::abs(s.mean[j] - ref.item(j)) <= 3.0 * s.se[j]);
                CHECK(s.se[j] < 0.1 * largest);  // fine enough to tell a wrong estimate
            }
            CHECK(largest > 0.02);  // and a log-det to find
        }
    }
}

TEST_CASE("the Neumann gradient's mean over many draws is the exact log-det's gradient", "[residual][estimator]") {
    for (const std::string type : {"residual", "conv_residual"}) {
        DYNAMIC_SECTION(type) {
            const bool conv = type == "conv_residual";
            const Shape event = conv ? Shape{2, 3, 3} : Shape{4};
            const std::string common = std::string("{") + (conv ? R"("hidden": [5], "kernels": [3, 3])" : R"("hidden": [12])") +
                                       R"(, "coeff": 0.8, )";
            auto exact = make(type, common + kConverged + R"(, "log_det": "exact"})", event);
            auto est = make(type, common + kConvergedOnce + R"(, "log_det": "roulette"})", event);
            test::perturb(*exact, 12, 0.3, DType::f64);
            test::perturb(*est, 12, 0.3, DType::f64);
            const Tensor x = test::randn(test::batched(3, event), 6);
            auto gradient = [&](Bijector& b) {
                auto params = b.named_parameters();
                for (auto& p : params) p.var.zero_grad();
                sum_all(b.inverse(Var(x)).log_det).backward();
                std::vector<double> g;
                for (auto& p : params)
                    for (double v : p.var.grad().to_vector()) g.push_back(v);
                return g;
            };
            const std::vector<double> ref = gradient(*exact);
            // The exact block's call converged its power iteration on the perturbed weights;
            // the estimator starts from those vectors, so its single iteration per draw keeps
            // the same normalised weights.
            for (const auto& b : exact->named_buffers())
                if (b.name.ends_with(".u") || b.name.ends_with(".v")) buffer(*est, b.name).copy_from(b.tensor);
            std::vector<std::vector<double>> draws;
            for (int i = 0; i < 3000; ++i) draws.push_back(gradient(*est));
            Stats s = stats(draws);
            int informative = 0;
            for (std::size_t j = 0; j < ref.size(); ++j) {
                INFO("gradient element " << j << ": exact " << ref[j] << ", estimate " << s.mean[j] << " +- " << s.se[j]);
                // 4 standard errors: this compares a few hundred elements at once.
                CHECK(std::abs(s.mean[j] - ref[j]) <= 4.0 * s.se[j] + 1e-9);
                if (std::abs(ref[j]) > 10.0 * s.se[j]) ++informative;
            }
            CHECK(informative > static_cast<int>(ref.size()) / 4);  // the draws resolve the gradient
        }
    }
}

TEST_CASE("the Neumann gradient's memory does not grow with the number of terms; the series' does",
          "[residual][estimator][memory]") {
    // The peak of tensor storage over a forward and backward pass, beyond what was alive before.
    auto peak = [](const std::string& estimator) {
        auto b = make("conv_residual", R"({"hidden": [32], "kernels": [3, 3], )" + estimator + "}", {4, 8, 8});
        b->set_training(true);
        const Tensor x = test::randn({8, 4, 8, 8}, 3, DType::f32);
        const Tensor r = test::randn({8, 4, 8, 8}, 4, DType::f32);
        const std::size_t before = tensor_live_bytes();
        reset_tensor_peak_bytes();
        {
            FlowResult res = b->inverse(Var(x));
            (sum_all(res.log_det) + sum_all(res.out * Var(r))).backward();
        }
        return static_cast<double>(tensor_peak_bytes() - before);
    };
    const double neumann4 = peak(R"("log_det": "roulette", "exact_terms": 4, "geometric_p": 1.0)");
    const double neumann32 = peak(R"("log_det": "roulette", "exact_terms": 32, "geometric_p": 1.0)");
    const double series4 = peak(R"("log_det": "series", "series_terms": 4)");
    const double series32 = peak(R"("log_det": "series", "series_terms": 32)");
    INFO("peak bytes: roulette 4 terms " << neumann4 << ", 32 terms " << neumann32 << "; series 4 terms " << series4
                                         << ", 32 terms " << series32);
    CHECK(neumann32 <= 1.05 * neumann4);
    CHECK(series32 >= 3.0 * series4);
    CHECK(neumann32 < series32 / 3.0);
}

TEST_CASE("after power iteration every weight's operator norm is below coeff", "[residual][spectral]") {
    const double coeff = 0.9;
    SECTION("dense") {
        auto b = make("residual", R"({"hidden": [40, 30], "coeff": 0.9})", {6});
        for (const char* layer : {"linear0", "linear1", "linear2"}) {
            const double norm = dense_norm(normalised(*b, layer, coeff, false));
            INFO(layer << ": " << norm);
            CHECK(norm <= coeff * (1.0 + 1e-3));
        }
    }
    SECTION("conv: the convolution's operator norm, not the reshaped kernel's") {
        auto b = make("conv_residual", R"({"hidden": [8], "kernels": [3, 5], "coeff": 0.9})", {3, 6, 5});
        for (const char* layer : {"conv0", "conv1"}) {
            const Tensor w = normalised(*b, layer, coeff, true, 6, 5);
            const double norm = conv_norm(w, 6, 5);
            // The kernel reshaped to [O, C k k] has another norm: normalising that one would be wrong.
            const double matrix_norm = dense_norm(w.reshape({w.size(0), w.numel() / w.size(0)}));
            const Tensor raw = parameter(*b, std::string("net.") + layer + ".weight").value().to(DType::f64);
            const double raw_norm = conv_norm(raw, 6, 5);
            INFO(layer << ": convolution " << norm << " (before normalisation " << raw_norm << "), reshaped kernel "
                       << matrix_norm);
            CHECK(norm <= coeff * (1.0 + 1e-3));
            // Scaled to coeff exactly when above it, left alone when below.
            CHECK(norm == Approx(std::min(raw_norm, coeff)).epsilon(1e-3));
            CHECK(std::abs(matrix_norm - norm) > 1e-2);
        }
    }
    SECTION("the power iterations of each training step track weights that move") {
        auto b = make("conv_residual", R"({"hidden": [8], "kernels": [3, 3], "coeff": 0.9})", {2, 5, 5});
        b->set_training(true);
        const Tensor x = test::randn({2, 2, 5, 5}, 1, DType::f32);
        Rng noise(5);
        for (int step = 0; step < 60; ++step) {
            for (auto& p : b->named_parameters()) {
                Tensor n = Tensor::empty(p.var.shape(), p.var.dtype());
                noise.fill_normal(n, 0.0, 0.002);  // a step of Adam at lr 2e-3, about
                kern::add_inplace(p.var.mutable_value(), n);
            }
            b->inverse(Var(x));  // a training call: power_iterations (5) iterations, stored
        }
        for (const char* layer : {"conv0", "conv1"}) {
            const double norm = conv_norm(normalised(*b, layer, coeff, true, 5, 5), 5, 5);
            INFO(layer << ": " << norm);
            CHECK(norm <= coeff * (1.0 + 1e-2));
        }
    }
    SECTION("the residual branch is a contraction: |g(x) - g(y)| < |x - y|") {
        auto b = make("conv_residual", R"({"hidden": [16, 16], "coeff": 0.97})", {2, 6, 6});
        test::perturb(*b, 3, 0.5, DType::f64);
        b->set_training(false);
        NoGradGuard ng;
        double worst = 0.0;
        for (std::uint64_t s = 0; s < 50; ++s) {
            Tensor x = test::randn({1, 2, 6, 6}, 100 + s), y = test::randn({1, 2, 6, 6}, 200 + s, DType::f64, 0.1);
            y = kern::add(x, y);
            Tensor gx = kern::sub(b->inverse(Var(x)).out.value(), x), gy = kern::sub(b->inverse(Var(y)).out.value(), y);
            worst = std::max(worst, std::sqrt(kern::sq_norm(kern::sub(gx, gy)) / kern::sq_norm(kern::sub(x, y))));
        }
        INFO("largest |g(x) - g(y)| / |x - y|: " << worst);
        CHECK(worst < 0.97);
    }
}

TEST_CASE("the fixed-point inverse converges to its tolerance and fails clearly when it cannot", "[residual][inverse]") {
    for (DType dt : {DType::f64, DType::f32}) {
        DYNAMIC_SECTION("dtype " << dtype_name(dt)) {
            auto b = make("conv_residual", R"({"hidden": [16, 16]})", {3, 6, 6});
            test::perturb(*b, 4, 0.3, dt);
            b->set_training(false);
            NoGradGuard ng;
            const Tensor x = test::randn({5, 3, 6, 6}, 8, dt);
            const Tensor z = b->inverse(Var(x)).out.value();
            const Tensor back = b->forward(Var(z)).out.value();
            // The solution's own residual |x + g(x) - z| is the tolerance's: 1e-6 relative.
            const Tensor again = b->inverse(Var(back)).out.value();
            const double scale = std::max(1.0, test::max_abs(back));
            CHECK(kern::max_abs_diff(again, z) / scale <= (dt == DType::f64 ? 1e-6 : 2e-6));
            CHECK(kern::max_abs_diff(back, x) / scale <= (dt == DType::f64 ? 3e-5 : 1e-4));
        }
    }
    auto b = make("conv_residual", R"({"hidden": [16], "kernels": [3, 3], "inverse_max_iterations": 1})", {2, 4, 4});
    test::perturb(*b, 4, 0.3, DType::f32);
    NoGradGuard ng;
    const Tensor z = b->inverse(Var(test::randn({2, 2, 4, 4}, 8, DType::f32))).out.value();
    const std::string msg = test::error_of<NumericError>([&] { b->forward(Var(z)); });
    CHECK(msg.find("conv_residual [2, 4, 4] (forward)") != std::string::npos);
    CHECK(msg.find("did not converge in 1 iterations") != std::string::npos);
    CHECK(msg.find("residual ") != std::string::npos);
    CHECK(msg.find("inverse_max_iterations") != std::string::npos);
}

TEST_CASE("bad configurations are config errors that say what to change", "[residual]") {
    const std::string big = test::error_of<ConfigError>(
        [] { make("conv_residual", R"({"log_det": "exact"})", {4, 14, 14}); });
    CHECK(big.find("exact") != std::string::npos);
    CHECK(big.find("784 values") != std::string::npos);
    CHECK(big.find("256") != std::string::npos);
    CHECK(big.find("roulette") != std::string::npos);
    CHECK(test::error_of<ConfigError>([] { make("conv_residual", R"({"kernels": [3, 2, 3]})", {2, 4, 4}); })
              .find("odd") != std::string::npos);
    CHECK(test::error_of<ConfigError>([] { make("conv_residual", R"({"hidden": [8], "kernels": [3, 1, 3]})", {2, 4, 4}); })
              .find("one kernel size per convolution") != std::string::npos);
    CHECK_THROWS_AS(make("conv_residual", "{}", {8}), ShapeError);
    CHECK_THROWS_AS(make("residual", R"({"log_det": "exakt"})", {2}), ConfigError);
}

TEST_CASE("outside training the estimators are deterministic, cancel between directions and change no state",
          "[residual][estimator]") {
    for (const std::string mode : {"roulette", "series"}) {
        DYNAMIC_SECTION(mode) {
            auto b = make("conv_residual", R"({"hidden": [8], "kernels": [3, 3], "log_det": ")" + mode + "\"}", {2, 4, 4});
            test::perturb(*b, 9, 0.2, DType::f32);
            const Tensor x = test::randn({3, 2, 4, 4}, 2, DType::f32);
            auto state = [&] {
                std::vector<std::vector<double>> s;
                for (const auto& t : b->named_buffers()) s.push_back(t.tensor.to_vector());
                return s;
            };
            b->set_training(false);
            const auto before = state();
            const std::vector<double> rng_before = buffer(*b, "estimator_rng").to_vector();
            FlowResult inv;
            Tensor again, fwd;
            {
                NoGradGuard ng;
                inv = b->inverse(Var(x));
                again = b->inverse(Var(x)).log_det.value();
                fwd = b->forward(inv.out.detach()).log_det.value();
            }
            CHECK(kern::max_abs_diff(inv.log_det.value(), again) == 0.0);
            CHECK(kern::max_abs_diff(kern::neg(fwd), inv.log_det.value()) < 1e-4);
            CHECK(state() == before);
            // In training mode each call draws new probes from the layer's own generator.
            b->set_training(true);
            NoGradGuard ng;
            const Tensor t1 = b->inverse(Var(x)).log_det.value(), t2 = b->inverse(Var(x)).log_det.value();
            CHECK(kern::max_abs_diff(t1, t2) > 0.0);
            CHECK(buffer(*b, "estimator_rng").to_vector() != rng_before);
        }
    }
}

TEST_CASE("a resumed residual-flow run is the same bits as one that was not interrupted", "[residual][trainer]") {
    const std::vector<std::string> sets = {
        R"(model.layers=[{"type": "actnorm"}, {"type": "residual", "hidden": [16, 16]},
                         {"type": "actnorm"}, {"type": "residual", "hidden": [16, 16], "log_det": "series"}])",
        R"(plugins=["standard", "density", "residual"])", "train.steps=12", "train.checkpoint_every=3",
        "train.threads=1", "eval.samples=20"};
    auto run = [&](const fs::path& dir, std::int64_t stop_after) {
        Params cfg = load_experiment(std::string(FLOWLAB_SOURCE_DIR) + "/tests/configs/tiny_moons.json", sets);
        Experiment exp = build_experiment(cfg, registry());
        TrainOptions opt;
        opt.quiet = true;
        opt.run_dir = dir.string();
        opt.stop_after = stop_after;
        TrainSummary s = train(exp, opt);
        if (stop_after > 0) {
            CHECK(s.interrupted);
            Experiment again = build_experiment(cfg, registry());
            TrainOptions more = opt;
            more.stop_after = -1;
            more.resume = true;
            s = train(again, more);
            CHECK(s.skipped_steps == 0);
            std::vector<std::vector<double>> out;
            for (const auto& p : again.flow->named_parameters()) out.push_back(p.var.value().to_vector());
            for (const auto& b : again.flow->named_buffers()) out.push_back(b.tensor.to_vector());
            return std::make_pair(out, s.test_nll);
        }
        CHECK(s.skipped_steps == 0);
        std::vector<std::vector<double>> out;
        for (const auto& p : exp.flow->named_parameters()) out.push_back(p.var.value().to_vector());
        for (const auto& b : exp.flow->named_buffers()) out.push_back(b.tensor.to_vector());
        return std::make_pair(out, s.test_nll);
    };
    const fs::path base = fs::temp_directory_path() / ("flowlab-residual-" + std::to_string(::getpid()));
    fs::remove_all(base);
    const auto whole = run(base / "whole", -1);
    const auto resumed = run(base / "resumed", 5);
    fs::remove_all(base);
    CHECK(whole.first == resumed.first);
    CHECK(whole.second == resumed.second);
    CHECK(std::isfinite(whole.second));
}
