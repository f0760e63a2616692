// The image plugin's layers: conformance of every bijector it registers, and the properties the
// suite cannot see (squeeze's channel order, split through the graph builder, ActNorm's data
// init, the 1x1 conv's init and log-det, the CNN conditioner's zero start and context).
#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <string>

#include "flowlab/conformance.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/experiment.hpp"
#include "flowlab/gradcheck.hpp"
#include "flowlab/plugin.hpp"

#include "test_support.hpp"

using namespace flowlab;

namespace {

// One registry with the standard and image plugins, loaded once.
const Registry& registry() { return test::standard_and_image_registry(); }

Tensor randn(const Shape& s, std::uint64_t seed, DType dt = DType::f32, double mean = 0.0, double sd = 1.0) {
    Tensor t = Tensor::empty(s, DType::f64);
    Rng rng(seed);
    rng.fill_normal(t, mean, sd);
    return t.to(dt);
}

std::unique_ptr<Bijector> make(const std::string& json, const Shape& event, Rng& rng) {
    return registry().make_bijector(Params::parse(json), BuildContext{event, {}, &rng, &registry()});
}

// Adds N(0, sd^2) noise to every parameter of `m`, leaving it in f64: at init the layers are
// the identity (or a rotation), whose log-det a numerical Jacobian would confirm too easily.
void perturb_in_f64(Module& m, std::uint64_t seed, double sd) {
    Rng noise(seed);
    for (auto& p : m.named_parameters()) {
        Tensor v = p.var.value().to(DType::f64).clone();
        Tensor n = Tensor::empty(v.shape(), DType::f64);
        noise.fill_normal(n, 0.0, sd);
        kern::add_inplace(v, n);
        p.var.mutable_value() = v;
    }
}

void require_all_pass(const std::vector<ConformanceCheck>& rows) {
    REQUIRE_FALSE(rows.empty());
    for (const auto& r : rows) {
        INFO(r.type << " " << r.shape << " " << r.check << ": " << r.detail);
        CHECK(r.passed);
    }
}

}  // namespace

TEST_CASE("the affine coupling passes conformance with a checkerboard mask and with parity 1", "[image][conformance]") {
    // A private registry copy of the entry with other hints (the registered hints test one mask).
    Registry reg;
    load_plugin(reg, std::string(FLOWLAB_TEST_PLUGIN_DIR) + "/libflowlab_image.so");
    BijectorEntry e = *reg.bijectors.find("conv_affine_coupling");
    e.name = "coupling_checkerboard_under_test";
    e.hints.shapes = {{1, 4, 4}, {3, 3, 2}};
    e.hints.params_json = R"({"mask": "checkerboard", "parity": 1, "conditioner": {"type": "cnn", "hidden": 6}})";
    reg.add_bijector(e);
    require_all_pass(check_bijector(reg, e.name));
    e.name = "coupling_parity1_under_test";
    e.hints.shapes = {{4, 3, 3}};
    e.hints.params_json = R"({"parity": 1, "conditioner": {"type": "cnn", "hidden": 6, "kernel": 1}})";
    reg.add_bijector(e);
    require_all_pass(check_bijector(reg, e.name));
}

TEST_CASE("squeeze puts pixel (2i + dy, 2j + dx) of channel c into channel 4c + 2dy + dx", "[image]") {
    Rng rng(1);
    auto sq = make(R"({"type": "squeeze"})", {2, 4, 6}, rng);
    CHECK(sq->output_shape({2, 4, 6}) == Shape{8, 2, 3});
    Tensor x = Tensor::empty({1, 2, 4, 6});
    for (std::int64_t i = 0; i < x.numel(); ++i) x.set_item(i, static_cast<double>(i));
    FlowResult r = sq->inverse(Var(x));
    REQUIRE(r.out.shape() == Shape{1, 8, 2, 3});
    for (int c = 0; c < 2; ++c)
        for (int dy = 0; dy < 2; ++dy)
            for (int dx = 0; dx < 2; ++dx)
                for (int i = 0; i < 2; ++i)
                    for (int j = 0; j < 3; ++j)
                        CHECK(r.out.value().item(((4 * c + 2 * dy + dx) * 2 + i) * 3 + j) ==
                              x.item((c * 4 + 2 * i + dy) * 6 + 2 * j + dx));
    CHECK(kern::sum_all(r.log_det.value()) == 0.0);
    CHECK(kern::max_abs_diff(sq->forward(r.out).out.value(), x) == 0.0);
    CHECK_THROWS_AS(make(R"({"type": "squeeze"})", {1, 3, 4}, rng), Error);
    CHECK_THROWS_AS(make(R"({"type": "squeeze"})", {16}, rng), Error);
}

TEST_CASE("a multi-scale flow with squeeze and split built from JSON round-trips both ways", "[image][split]") {
    const char* model = R"({
      "layers": [
        {"type": "shift", "offset": -0.5},
        {"type": "squeeze"},
        {"type": "actnorm2d"}, {"type": "invconv1x1"},
        {"type": "conv_affine_coupling", "conditioner": {"type": "cnn", "hidden": 8}},
        {"type": "split"},
        {"type": "squeeze"},
        {"type": "invconv1x1"},
        {"type": "conv_affine_coupling", "conditioner": {"type": "cnn", "hidden": 8}}
      ],
      "base": {"type": "standard_normal"}
    })";
    Rng rng(3);
    auto flow = build_flow(Params::parse(model), {1, 8, 8}, {}, registry(), rng);
    // [1,8,8] -> squeeze [4,4,4] -> split keeps 2 -> squeeze [8,2,2]; one flat latent of 64.
    const auto& info = flow->layer_info();
    REQUIRE(info.size() == 9);
    CHECK(info[5].type == "split");
    CHECK(info[5].out_shapes == std::vector<Shape>{{2, 4, 4}, {2, 4, 4}});  // kept, factored
    CHECK(info[6].in_shape == Shape{2, 4, 4});
    CHECK(info[8].out_shape == Shape{8, 2, 2});

    // Non-identity parameters, so that the round trip means something.
    Rng noise(4);
    for (auto& p : flow->named_parameters()) {
        Tensor n = Tensor::empty(p.var.shape());
        noise.fill_normal(n, 0.0, 0.1);
        kern::add_inplace(p.var.mutable_value(), n);
    }
    Tensor x = randn({3, 1, 8, 8}, 5, DType::f32, 0.5, 0.3);
    flow->data_init(x);
    NoGradGuard ng;
    FlowResult inv = flow->inverse(Var(x));
    REQUIRE(inv.out.shape() == Shape{3, 64});
    FlowResult fwd = flow->forward(inv.out);
    CHECK(kern::max_abs_diff(fwd.out.value(), x) < 1e-4);
    CHECK(kern::max_abs_diff(kern::neg(fwd.log_det.value()), inv.log_det.value()) < 1e-3);
    // latent -> data -> latent
    Tensor z = randn({2, 64}, 6);
    Tensor xs = flow->forward(Var(z)).out.value();
    CHECK(kern::max_abs_diff(flow->inverse(Var(xs)).out.value(), z) < 1e-4);
    // Sampling reassembles the factored channels: samples have the data's shape.
    Rng srng(7);
    CHECK(flow->sample(4, srng).shape() == Shape{4, 1, 8, 8});
    CHECK(kern::all_finite(flow->log_prob(Var(x)).value()));
}

TEST_CASE("a split's log-det matches a numerical Jacobian of the whole multi-scale flow in f64", "[image][split]") {
    const char* model = R"({
      "layers": [
        {"type": "squeeze"}, {"type": "invconv1x1"},
        {"type": "conv_affine_coupling", "conditioner": {"type": "cnn", "hidden": 4}},
        {"type": "split", "keep": 1},
        {"type": "actnorm2d"}, {"type": "invconv1x1"}
      ],
      "base": {"type": "standard_normal"}
    })";
    Rng rng(8);
    auto flow = build_flow(Params::parse(model), {1, 4, 4}, {}, registry(), rng);
    perturb_in_f64(*flow, 9, 0.3);
    NoGradGuard ng;
    Tensor x = randn({1, 1, 4, 4}, 10, DType::f64);
    const double analytic = flow->inverse(Var(x)).log_det.value().item(0);
    const double numeric = numerical_log_abs_det(
        [&](const Tensor& row) { return flow->inverse(Var(row.reshape({1, 1, 4, 4}))).out.value().reshape({1, 16}); },
        x.reshape({1, 16}));
    CHECK(analytic == Approx(numeric).epsilon(1e-6).margin(1e-6));
}

TEST_CASE("actnorm2d's data init leaves zero mean and unit variance per channel", "[image]") {
    Rng rng(11);
    auto an = make(R"({"type": "actnorm2d"})", {3, 5, 4}, rng);
    Tensor x = Tensor::empty({16, 3, 5, 4});
    Rng data(12);
    for (std::int64_t n = 0; n < 16; ++n)
        for (std::int64_t c = 0; c < 3; ++c)
            for (std::int64_t q = 0; q < 20; ++q)
                x.set_item((n * 3 + c) * 20 + q, 2.0 * static_cast<double>(c) - 1.0 + (0.5 + c) * data.normal());
    Tensor z = an->data_init(Var(x), Var()).value();
    for (std::int64_t c = 0; c < 3; ++c) {
        double s = 0, ss = 0;
        for (std::int64_t n = 0; n < 16; ++n)
            for (std::int64_t q = 0; q < 20; ++q) s += z.item((n * 3 + c) * 20 + q);
        const double mean = s / 320.0;
        for (std::int64_t n = 0; n < 16; ++n)
            for (std::int64_t q = 0; q < 20; ++q) ss += std::pow(z.item((n * 3 + c) * 20 + q) - mean, 2);
        INFO("channel " << c);
        CHECK(mean == Approx(0.0).margin(1e-5));
        CHECK(ss / 319.0 == Approx(1.0).epsilon(1e-4));  // unbiased, like the init
    }
    // log-det = H W sum(logs), the same for every sample.
    double sum_logs = 0;
    for (auto& p : an->named_parameters())
        if (p.name == "logs") sum_logs = kern::sum_all(p.var.value());
    CHECK(an->inverse(Var(x)).log_det.value().item(3) == Approx(20.0 * sum_logs).epsilon(1e-5));
    // A second init (e.g. after a restore) keeps the parameters.
    Tensor x2 = randn({4, 3, 5, 4}, 13, DType::f32, 5.0);
    Tensor z2 = an->data_init(Var(x2), Var()).value();
    CHECK(kern::max_abs_diff(z2, an->inverse(Var(x2)).out.value()) == 0.0);
    CHECK(std::fabs(kern::sum_all(z2) / static_cast<double>(z2.numel())) > 1.0);  // not re-centred
}

TEST_CASE("invconv1x1 starts as a rotation and its log-det matches the numerical Jacobian", "[image]") {
    Rng rng(14);
    auto ic = make(R"({"type": "invconv1x1"})", {4, 3, 2}, rng);
    NoGradGuard ng;
    // At init W is orthogonal: log|det| = 0 and norms are kept.
    Tensor x = randn({2, 4, 3, 2}, 15, DType::f32);
    FlowResult r = ic->inverse(Var(x));
    CHECK(std::fabs(r.log_det.value().item(0)) < 1e-5);
    CHECK(std::sqrt(kern::sq_norm(r.out.value())) == Approx(std::sqrt(kern::sq_norm(x))).epsilon(1e-5));
    // Perturbed, in f64: log-det = H W sum(log_s) against a numerical Jacobian.
    perturb_in_f64(*ic, 16, 0.4);
    Tensor xd = randn({1, 4, 3, 2}, 17, DType::f64);
    const double analytic = ic->inverse(Var(xd)).log_det.value().item(0);
    const double numeric = numerical_log_abs_det(
        [&](const Tensor& row) { return ic->inverse(Var(row.reshape({1, 4, 3, 2}))).out.value().reshape({1, 24}); },
        xd.reshape({1, 24}));
    CHECK(std::fabs(analytic) > 0.1);
    CHECK(analytic == Approx(numeric).epsilon(1e-6));
}

TEST_CASE("the cnn conditioner starts at zero and takes a larger context by squeezing it", "[image]") {
    Rng rng(18);
    ConditionerSpec spec{{2, 4, 4}, {4, 4, 4}, {1, 8, 8}, true};
    auto net = registry().make_conditioner(Params::parse(R"({"type": "cnn", "hidden": 16})"), spec, rng);
    Tensor x = randn({3, 2, 4, 4}, 19), ctx = randn({3, 1, 8, 8}, 20);
    Var out = (*net)(Var(x), Var(ctx));
    CHECK(out.shape() == Shape{3, 4, 4, 4});
    CHECK(kern::sq_norm(out.value()) == 0.0);
    // The context reaches the output once the last layer is not zero.
    for (auto& p : net->named_parameters())
        if (p.name.rfind("conv2", 0) == 0) p.var.mutable_value().fill(0.1);
    Tensor a = (*net)(Var(x), Var(ctx)).value();
    Tensor b = (*net)(Var(x), Var(randn({3, 1, 8, 8}, 21))).value();
    CHECK(kern::max_abs_diff(a, b) > 1e-3);
    CHECK_THROWS_AS((*net)(Var(x), Var()), ShapeError);
    ConditionerSpec bad{{2, 4, 4}, {4, 4, 4}, {1, 6, 6}, true};
    CHECK_THROWS_AS(registry().make_conditioner(Params::parse(R"({"type": "cnn"})"), bad, rng), Error);
    // 433,792 parameters in W3's Glow: each coupling's net for 4 channels at hidden 128.
    ConditionerSpec w3{{2, 14, 14}, {4, 14, 14}, {}, true};
    auto big = registry().make_conditioner(Params::parse(R"({"type": "cnn", "hidden": 128})"), w3, rng);
    CHECK(big->num_parameters() == 2 * 128 * 9 + 128 + 128 * 128 + 128 + 128 * 4 * 9 + 4);
}
