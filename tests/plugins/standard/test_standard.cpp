// Tests of the standard plugin, loaded the way every run loads it: as a shared library.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numbers>
#include <string>
#include <vector>

#include <flowlab/errors.hpp>
#include <flowlab/gradcheck.hpp>
#include <flowlab/ops.hpp>
#include <flowlab/plugin.hpp>
#include <flowlab/registry.hpp>

#include "test_support.hpp"

using namespace flowlab;
using namespace flowlab::test;

namespace {

const std::string kPluginPath = FLOWLAB_TEST_PLUGIN_DIR "/libflowlab_standard.so";

struct Loaded {
    Registry reg;
    PluginRecord record;
    Loaded() { record = load_plugin(reg, kPluginPath); }
};

// One registry for the whole file: the library is never unloaded anyway.
Loaded& loaded() {
    static Loaded l;
    return l;
}
const Registry& registry() { return loaded().reg; }

Params params(const std::string& json) { return Params::parse(json, "test"); }

std::unique_ptr<Bijector> make_layer(const std::string& json, const Shape& event, Rng& rng,
                                     const Shape& context = {}) {
    BuildContext c{event, context, &rng, &registry()};
    return registry().make_bijector(params(json), c);
}

// The layer's output and log-det side by side, so one check covers both.
Var out_and_log_det(const FlowResult& r) {
    const std::int64_t B = r.out.size(0);
    return concat({reshape(r.out, {B, -1}), reshape(r.log_det, {B, 1})}, 1);
}

// Central differences of loss() with respect to a few elements of every parameter, against
// the gradient backward() leaves in the parameters.
double worst_param_grad_error(Module& m, const std::function<Var()>& loss) {
    for (auto& p : m.named_parameters()) p.var.zero_grad();
    loss().backward();
    double worst = 0.0;
    const double eps = 1e-6;
    for (auto& p : m.named_parameters()) {
        REQUIRE(p.var.grad().defined());
        Tensor& v = p.var.mutable_value();
        const std::int64_t n = v.numel();
        for (std::int64_t i : {std::int64_t{0}, n / 2, n - 1}) {
            const double orig = v.item(i);
            double f[2];
            for (int k = 0; k < 2; ++k) {
                v.set_item(i, orig + (k == 0 ? eps : -eps));
                NoGradGuard ng;
                f[k] = loss().value().item();
            }
            v.set_item(i, orig);
            const double numeric = (f[0] - f[1]) / (2 * eps);
            const double analytic = p.var.grad().item(i);
            const double err = std::abs(numeric - analytic) / std::max({1.0, std::abs(numeric), std::abs(analytic)});
            if (err > worst) {
                worst = err;
                UNSCOPED_INFO(p.name << "[" << i << "]: analytic " << analytic << " numeric " << numeric);
            }
        }
    }
    return worst;
}

// Distance from (x, y) to the upper (or lower) half of the unit circle around (cx, cy).
double arc_distance(double x, double y, double cx, double cy, bool upper) {
    const double dx = x - cx, dy = y - cy;
    if (upper ? dy >= 0 : dy <= 0) return std::abs(std::hypot(dx, dy) - 1.0);
    return std::min(std::hypot(dx - 1.0, dy), std::hypot(dx + 1.0, dy));
}

}  // namespace

TEST_CASE("the standard plugin registers every listed type with its file as the origin", "[standard]") {
    Loaded& l = loaded();
    CHECK(l.record.name == "standard");
    const std::string origin = l.record.path;
    CHECK(origin.find("libflowlab_standard.so") != std::string::npos);

    auto check = [&](const auto& table, const std::vector<std::string>& names) {
        for (const auto& n : names) {
            INFO(table.kind() << " " << n);
            const auto* e = table.find(n);
            REQUIRE(e != nullptr);
            CHECK(e->origin == origin);
            CHECK(!e->doc.empty());
            CHECK(e->factory);
            for (const auto& spec : e->schema) {
                INFO("parameter " << spec.name);
                CHECK(!spec.doc.empty());
                CHECK(!spec.required());
            }
        }
    };
    check(l.reg.bijectors, {"affine_coupling", "additive_coupling", "reverse", "random_permutation"});
    check(l.reg.conditioners, {"mlp"});
    check(l.reg.distributions, {"standard_normal"});
    check(l.reg.optimizers, {"adam", "sgd"});
    check(l.reg.schedules, {"constant", "linear_warmup", "cosine", "step"});
    check(l.reg.dequantizers, {"identity", "uniform"});
    check(l.reg.datasets, {"moons", "eight_gaussians", "checkerboard", "circles", "pinwheel", "spirals"});
    // Bijectors tell the conformance suite what to test.
    for (const auto& [name, e] : l.reg.bijectors.entries())
        if (e.origin == origin) CHECK(e.hints.shapes.size() >= 2);
}

TEST_CASE("a zero-initialised affine coupling is the identity with log-det 0", "[standard]") {
    Rng rng(1);
    for (const char* json : {R"({"type": "affine_coupling"})", R"({"type": "affine_coupling", "mask": "half", "parity": 1})"}) {
        for (std::int64_t d : {2, 5}) {
            INFO(json << " D=" << d);
            auto layer = make_layer(json, {d}, rng);
            Tensor x = randn({16, d}, 3, DType::f32);
            FlowResult inv = layer->inverse(Var(x));
            CHECK(kern::max_abs_diff(inv.out.value(), x) == 0.0);
            CHECK(inv.log_det.shape() == Shape{16});
            CHECK(max_abs(inv.log_det.value()) == 0.0);
            FlowResult fwd = layer->forward(Var(x));
            CHECK(kern::max_abs_diff(fwd.out.value(), x) == 0.0);
            CHECK(max_abs(fwd.log_det.value()) == 0.0);
        }
    }
}

TEST_CASE("the W1 model of 8 couplings with a 1-128-128-2 MLP has PyTorch's parameter count and init", "[standard]") {
    Rng rng(0);
    std::int64_t total = 0;
    for (int k = 0; k < 8; ++k) {
        auto layer = make_layer(R"({"type": "affine_coupling", "parity": )" + std::to_string(k % 2) + "}", {2}, rng);
        total += layer->num_parameters();
        if (k > 0) continue;
        auto ps = layer->named_parameters();
        REQUIRE(ps.size() == 6);
        CHECK(ps[0].var.shape() == Shape{1, 128});  // weight [in, out]
        CHECK(ps[4].var.shape() == Shape{128, 2});
        // U(-1/sqrt(in), 1/sqrt(in)), and the last layer zero.
        CHECK(max_abs(ps[0].var.value()) <= 1.0);
        CHECK(max_abs(ps[0].var.value()) > 0.9);
        CHECK(max_abs(ps[2].var.value()) <= 1.0 / std::sqrt(128.0) + 1e-7);
        CHECK(max_abs(ps[2].var.value()) > 0.9 / std::sqrt(128.0));
        CHECK(max_abs(ps[4].var.value()) == 0.0);
        CHECK(max_abs(ps[5].var.value()) == 0.0);
    }
    CHECK(total == 136208);
}

TEST_CASE("the W1 coupling transforms the parity dim with column 0 as s_raw and column 1 as t", "[standard]") {
    Rng rng(2);
    for (int parity : {0, 1}) {
        auto layer = make_layer(R"({"type": "affine_coupling", "conditioner": {"type": "mlp", "hidden": []}, "parity": )" +
                                    std::to_string(parity) + "}",
                                {2}, rng);
        // One Linear layer 1 -> 2: raw = x_c * w + b. Set w = 0, b = (0.3, -0.7).
        auto ps = layer->named_parameters();
        REQUIRE(ps.size() == 2);
        ps[1].var.mutable_value() = Tensor::from_vector({2}, {0.3, -0.7});
        Tensor x = Tensor::from_vector({1, 2}, {1.5, -2.0});
        FlowResult r = layer->inverse(Var(x));
        const double s = std::tanh(0.3);
        const double xt = x.item(parity), xc = x.item(1 - parity);
        CHECK(r.out.value().item(parity) == Approx(xt * std::exp(s) - 0.7).epsilon(1e-6));
        CHECK(r.out.value().item(1 - parity) == xc);
        CHECK(r.log_det.value().item(0) == Approx(s).epsilon(1e-6));
    }
}

TEST_CASE("couplings and permutations round-trip and their log-dets cancel and match the Jacobian", "[standard]") {
    struct Case {
        std::string json;
        Shape event;
    };
    const std::vector<Case> cases = {
        {R"({"type": "affine_coupling", "conditioner": {"type": "mlp", "hidden": [8, 8]}})", {2}},
        {R"({"type": "affine_coupling", "parity": 1, "conditioner": {"type": "mlp", "hidden": [8], "activation": "tanh"}})", {5}},
        {R"({"type": "affine_coupling", "mask": "half", "scale_clamp": 0, "conditioner": {"type": "mlp", "hidden": [8]}})", {5}},
        {R"({"type": "affine_coupling", "mask": "half", "parity": 1, "scale_clamp": 2.5, "conditioner": {"type": "mlp", "hidden": [8], "activation": "elu"}})", {2, 3}},
        {R"({"type": "additive_coupling", "conditioner": {"type": "mlp", "hidden": [8]}})", {5}},
        {R"({"type": "additive_coupling", "mask": "half", "parity": 1, "conditioner": {"type": "mlp", "hidden": [8]}})", {2}},
        {R"({"type": "reverse"})", {5}},
        {R"({"type": "random_permutation", "seed": 7})", {6}},
    };
    for (const auto& c : cases) {
        INFO(c.json << " event " << shape_str(c.event));
        Rng rng(5);
        auto layer = make_layer(c.json, c.event, rng);
        perturb(*layer, 11, 0.3, DType::f64);
        Tensor x = randn(batched(6, c.event), 21);
        FlowResult inv = layer->inverse(Var(x));
        FlowResult back = layer->forward(inv.out);
        CHECK(kern::max_abs_diff(back.out.value(), x) < 1e-12);
        CHECK(max_abs(kern::add(inv.log_det.value(), back.log_det.value())) < 1e-12);
        FlowResult fwd = layer->forward(Var(x));
        CHECK(kern::max_abs_diff(layer->inverse(fwd.out).out.value(), x) < 1e-12);

        const std::int64_t D = numel(c.event);
        for (std::int64_t row = 0; row < 2; ++row) {
            Tensor xr = kern::slice(x.reshape({6, D}), 0, row, 1);
            const double numeric = numerical_log_abs_det(
                [&](const Tensor& in) {
                    NoGradGuard ng;
                    return layer->inverse(Var(in.reshape(batched(1, c.event)))).out.value().reshape({1, D});
                },
                xr);
            CHECK(inv.log_det.value().item(row) == Approx(numeric).margin(1e-6));
        }
    }
}

TEST_CASE("the fused coupling ops pass gradcheck in f64 for inputs and parameters", "[standard]") {
    const std::vector<std::pair<std::string, Shape>> cases = {
        {R"({"type": "affine_coupling", "conditioner": {"type": "mlp", "hidden": [8, 8]}})", {2}},
        {R"({"type": "affine_coupling", "parity": 1, "conditioner": {"type": "mlp", "hidden": [6]}})", {5}},
        {R"({"type": "affine_coupling", "mask": "half", "scale_clamp": 0, "conditioner": {"type": "mlp", "hidden": [6]}})", {5}},
        {R"({"type": "affine_coupling", "mask": "half", "scale_clamp": 3, "conditioner": {"type": "mlp", "hidden": [6], "activation": "tanh"}})", {2, 2}},
        {R"({"type": "additive_coupling", "parity": 1, "conditioner": {"type": "mlp", "hidden": [6]}})", {5}},
    };
    for (const auto& [json, event] : cases) {
        for (bool inverse : {true, false}) {
            INFO(json << " event " << shape_str(event) << (inverse ? " inverse" : " forward"));
            Rng rng(9);
            auto layer = make_layer(json, event, rng);
            perturb(*layer, 13, 0.5, DType::f64);
            auto run = [&, inverse](const Var& x) { return inverse ? layer->inverse(x) : layer->forward(x); };

            auto res = gradcheck([&](const std::vector<Var>& v) { return out_and_log_det(run(v[0])); },
                                 {randn(batched(4, event), 31)});
            INFO(res.worst);
            CHECK(res.ok(1e-6));

            Var x(randn(batched(4, event), 32));
            Var w(randn(batched(4, event), 33));
            Var w_ld(randn({4}, 34));
            const double err = worst_param_grad_error(*layer, [&] {
                FlowResult r = run(x);
                return sum_all(r.out * w) + sum_all(r.log_det * w_ld);
            });
            CHECK(err < 1e-6);
        }
    }
}

TEST_CASE("coupling layers give row i of the output from row i of the input only", "[standard]") {
    Rng rng(4);
    auto layer = make_layer(R"({"type": "affine_coupling", "conditioner": {"type": "mlp", "hidden": [8]}})", {5}, rng);
    perturb(*layer, 3, 0.5, DType::f64);
    Tensor x = randn({7, 5}, 8);
    FlowResult all = layer->inverse(Var(x));
    for (std::int64_t i = 0; i < 7; ++i) {
        FlowResult one = layer->inverse(Var(kern::slice(x, 0, i, 1)));
        CHECK(kern::max_abs_diff(one.out.value(), kern::slice(all.out.value(), 0, i, 1)) < 1e-14);
        CHECK(one.log_det.value().item(0) == Approx(all.log_det.value().item(i)).margin(1e-14));
    }
}

TEST_CASE("an f32 coupling matches the same coupling in f64", "[standard]") {
    Rng rng(6);
    auto layer = make_layer(R"({"type": "affine_coupling", "conditioner": {"type": "mlp", "hidden": [16]}})", {2}, rng);
    perturb(*layer, 3, 0.5, DType::f32);
    Tensor x = randn({64, 2}, 8, DType::f32);
    FlowResult r32 = layer->inverse(Var(x));
    for (auto& p : layer->named_parameters()) p.var.mutable_value() = p.var.value().to(DType::f64);
    FlowResult r64 = layer->inverse(Var(x.to(DType::f64)));
    CHECK(r32.out.dtype() == DType::f32);
    CHECK(kern::max_abs_diff(r32.out.value().to(DType::f64), r64.out.value()) < 1e-5);
    CHECK(kern::max_abs_diff(r32.log_det.value().to(DType::f64), r64.log_det.value()) < 1e-5);
}

TEST_CASE("a conditioned coupling feeds the context to its MLP", "[standard]") {
    Rng rng(7);
    auto layer = make_layer(R"({"type": "affine_coupling", "conditioner": {"type": "mlp", "hidden": [8]}})", {4}, rng,
                            {3});
    CHECK(layer->named_parameters()[0].var.shape() == Shape{2 + 3, 8});
    perturb(*layer, 3, 0.5, DType::f64);
    Tensor x = randn({5, 4}, 1);
    Var c1(randn({5, 3}, 2)), c2(randn({5, 3}, 3));
    FlowResult a = layer->inverse(Var(x), c1);
    FlowResult b = layer->inverse(Var(x), c2);
    CHECK(kern::max_abs_diff(a.out.value(), b.out.value()) > 1e-3);
    CHECK(kern::max_abs_diff(layer->forward(a.out, c1).out.value(), x) < 1e-12);
    CHECK_THROWS_AS(layer->inverse(Var(x)), Error);
}

TEST_CASE("a coupling needs at least two features", "[standard]") {
    Rng rng(1);
    CHECK_THROWS_AS(make_layer(R"({"type": "affine_coupling"})", {1}, rng), Error);
    CHECK_THROWS_AS(make_layer(R"({"type": "affine_coupling", "mask": "diagonal"})", {4}, rng), ConfigError);
}

TEST_CASE("reverse and random_permutation reorder features as documented", "[standard]") {
    Rng rng(3);
    Tensor x = Tensor::from_vector({1, 4}, {10, 20, 30, 40}, DType::f64);
    auto rev = make_layer(R"({"type": "reverse"})", {4}, rng);
    CHECK(rev->inverse(Var(x)).out.value().to_vector() == std::vector<double>{40, 30, 20, 10});
    CHECK(rev->inverse(Var(x)).log_det.value().to_vector() == std::vector<double>{0});

    auto p1 = make_layer(R"({"type": "random_permutation", "seed": 5})", {8}, rng);
    auto p2 = make_layer(R"({"type": "random_permutation", "seed": 5})", {8}, rng);
    auto p3 = make_layer(R"({"type": "random_permutation"})", {8}, rng);
    auto p4 = make_layer(R"({"type": "random_permutation"})", {8}, rng);
    Tensor y = Tensor::from_vector({1, 8}, {0, 1, 2, 3, 4, 5, 6, 7}, DType::f64);
    auto v1 = p1->inverse(Var(y)).out.value().to_vector();
    auto v3 = p3->inverse(Var(y)).out.value().to_vector();
    CHECK(v1 == p2->inverse(Var(y)).out.value().to_vector());
    CHECK(v3 != p4->inverse(Var(y)).out.value().to_vector());  // layers drawn from the init seed differ
    std::vector<double> sorted = v1;
    std::sort(sorted.begin(), sorted.end());
    CHECK(sorted == y.to_vector());
    CHECK(v1 != y.to_vector());
}

TEST_CASE("standard_normal gives the Gaussian log-density, its gradient, and tempered samples", "[standard]") {
    Rng rng(0);
    BuildContext c{{3}, {}, &rng, &registry()};
    auto base = registry().make_distribution(params(R"({"type": "standard_normal"})"), c);
    Tensor z = Tensor::from_vector({2, 3}, {0.0, 1.0, -2.0, 0.5, 0.5, 0.5}, DType::f64);
    Var zv(z, true);
    Var lp = base->log_prob(zv);
    const double c0 = 1.5 * std::log(2.0 * std::numbers::pi);
    CHECK(lp.value().item(0) == Approx(-2.5 - c0));
    CHECK(lp.value().item(1) == Approx(-0.375 - c0));
    auto res = gradcheck([&](const std::vector<Var>& v) { return base->log_prob(v[0]); }, {z});
    CHECK(res.ok(1e-7));

    Rng srng(42);
    Tensor s = base->sample(20000, srng, 0.5);
    REQUIRE(s.shape() == Shape{20000, 3});
    double sq = 0.0;
    for (std::int64_t i = 0; i < s.numel(); ++i) sq += s.item(i) * s.item(i);
    CHECK(std::sqrt(sq / static_cast<double>(s.numel())) == Approx(0.5).epsilon(0.02));
}

TEST_CASE("dequantizers add uniform noise in the bin and report the bin width", "[standard]") {
    Rng rng(0);
    BuildContext c{{4}, {}, &rng, &registry()};
    Tensor x = Tensor::from_vector({2, 4}, {0, 255, 17, 128, 3, 4, 5, 6});
    auto uni = registry().make_dequantizer(params(R"({"type": "uniform"})"), c);
    Rng drng(1);
    Dequantized d = uni->dequantize(x, drng);
    for (std::int64_t i = 0; i < x.numel(); ++i) {
        CHECK(d.x.value().item(i) >= x.item(i) / 256.0);
        CHECK(d.x.value().item(i) < (x.item(i) + 1.0) / 256.0);
    }
    CHECK(d.log_weight.value().item(1) == Approx(-4.0 * std::log(256.0)));
    auto shifted = registry().make_dequantizer(params(R"({"type": "uniform", "bits": 1, "offset": -0.5})"), c);
    Rng drng2(1);
    Dequantized e = shifted->dequantize(Tensor::from_vector({1, 4}, {0, 1, 0, 1}), drng2);
    CHECK(e.x.value().item(0) >= -0.5);
    CHECK(e.x.value().item(1) < 0.5);
    CHECK(e.log_weight.value().item(0) == Approx(-4.0 * std::log(2.0)));

    auto id = registry().make_dequantizer(params(R"({"type": "identity"})"), c);
    Dequantized f = id->dequantize(x, drng);
    CHECK(kern::max_abs_diff(f.x.value(), x) == 0.0);
    CHECK(max_abs(f.log_weight.value()) == 0.0);
}

TEST_CASE("adam's first two steps equal PyTorch's formula computed by hand", "[standard]") {
    for (DType dt : {DType::f64, DType::f32}) {
        Var w(Tensor::from_vector({3}, {0.5, -1.0, 2.0}, dt), true);
        auto opt = registry().make_optimizer(params(R"({"type": "adam", "lr": 0.01, "weight_decay": 0.1})"),
                                             {{"w", w}});
        CHECK(opt->base_lr() == 0.01);
        const std::vector<std::vector<double>> grads = {{0.1, -0.2, 0.0}, {0.3, 0.05, -1.0}};
        std::vector<double> p = {0.5, -1.0, 2.0}, m(3, 0.0), v(3, 0.0);
        const double lr = 0.004;  // the scheduled lr, not the base lr
        for (int t = 1; t <= 2; ++t) {
            w.mutable_grad() = Tensor::from_vector({3}, grads[t - 1], dt);
            opt->step(lr);
            for (int i = 0; i < 3; ++i) {
                const double g = grads[t - 1][i] + 0.1 * p[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                const double denom = std::sqrt(v[i]) / std::sqrt(1.0 - std::pow(0.999, t)) + 1e-8;
                p[i] -= lr / (1.0 - std::pow(0.9, t)) * m[i] / denom;
            }
            const double tol = dt == DType::f64 ? 1e-12 : 1e-6;
            for (int i = 0; i < 3; ++i) CHECK(w.value().item(i) == Approx(p[i]).margin(tol));
        }
        CHECK(opt->steps_taken() == 2);
        auto st = opt->state();
        REQUIRE(st.size() == 2);
        CHECK(st[0].name == "w.exp_avg");
        CHECK(st[1].name == "w.exp_avg_sq");
        CHECK(st[0].tensor.item(1) == Approx(m[1]).margin(1e-9));
        CHECK(st[1].tensor.item(2) == Approx(v[2]).margin(1e-9));
    }
}

TEST_CASE("adam and sgd apply a gradient scale as scaling the gradients first would", "[standard]") {
    // Clipping passes its factor to step(); the optimizer applies it as it reads each gradient,
    // which gives the bits of scaling the gradient in place and stepping with 1 - up to the last
    // bit with weight decay, where the compiler may fuse the scaling and the decay into one FMA.
    for (const char* cfg : {R"({"type": "adam"})", R"({"type": "adam", "weight_decay": 0.01})",
                            R"({"type": "sgd", "momentum": 0.9})"}) {
        INFO(cfg);
        Rng r(4);
        Tensor w0 = Tensor::empty({1000}), g = Tensor::empty({1000});
        r.fill_uniform(w0, -1.0, 1.0);
        r.fill_uniform(g, -3.0, 3.0);
        Var fused(w0.clone(), true), separate(w0.clone(), true);
        auto a = registry().make_optimizer(params(cfg), {{"w", fused}});
        auto b = registry().make_optimizer(params(cfg), {{"w", separate}});
        for (int t = 0; t < 3; ++t) {
            const double scale = 0.37 + 0.2 * t;
            fused.mutable_grad() = g.clone();
            a->step(0.01, scale);
            separate.mutable_grad() = g.clone();
            kern::scale_inplace(separate.mutable_grad(), scale);
            b->step(0.01);
        }
        const bool decay = std::string(cfg).find("weight_decay") != std::string::npos;
        CHECK(kern::max_abs_diff(fused.value(), separate.value()) <= (decay ? 1e-6 : 0.0));
        CHECK(kern::max_abs_diff(fused.value(), w0) > 0.01);
    }
}

TEST_CASE("adam skips parameters without a gradient", "[standard]") {
    Var a(Tensor::from_vector({2}, {1.0, 2.0}), true), b(Tensor::from_vector({1}, {3.0}), true);
    auto opt = registry().make_optimizer(params(R"({"type": "adam"})"), {{"a", a}, {"b", b}});
    a.mutable_grad() = Tensor::from_vector({2}, {1.0, 1.0});
    opt->step(0.1);
    CHECK(a.value().item(0) == Approx(0.9).margin(1e-6));  // the first Adam step moves by lr
    CHECK(b.value().item(0) == 3.0);
}

TEST_CASE("sgd with momentum follows PyTorch's update", "[standard]") {
    Var w(Tensor::from_vector({1}, {1.0}, DType::f64), true);
    auto opt = registry().make_optimizer(params(R"({"type": "sgd", "momentum": 0.9})"), {{"w", w}});
    w.mutable_grad() = Tensor::from_vector({1}, {2.0}, DType::f64);
    opt->step(0.1);
    CHECK(w.value().item(0) == Approx(1.0 - 0.2));  // buf = g
    w.mutable_grad() = Tensor::from_vector({1}, {1.0}, DType::f64);
    opt->step(0.1);
    CHECK(w.value().item(0) == Approx(0.8 - 0.1 * (0.9 * 2.0 + 1.0)));
    REQUIRE(opt->state().size() == 1);
    CHECK(opt->state()[0].name == "w.momentum_buffer");
}

TEST_CASE("schedules give the documented factors at known steps", "[standard]") {
    auto sched = [](const std::string& json) { return registry().make_schedule(params(json)); };
    auto constant = sched(R"({"type": "constant"})");
    CHECK(constant->factor(0, 100) == 1.0);
    CHECK(constant->factor(99, 100) == 1.0);

    auto warm = sched(R"({"type": "linear_warmup", "warmup_steps": 200})");
    CHECK(warm->factor(0, 1000) == Approx(1.0 / 200));
    CHECK(warm->factor(99, 1000) == Approx(0.5));
    CHECK(warm->factor(199, 1000) == 1.0);
    CHECK(warm->factor(500, 1000) == 1.0);

    auto cosine = sched(R"({"type": "cosine", "warmup_steps": 10, "min_factor": 0.1})");
    CHECK(cosine->factor(4, 110) == Approx(0.5));
    CHECK(cosine->factor(10, 110) == Approx(1.0));
    CHECK(cosine->factor(60, 110) == Approx(0.55));
    CHECK(cosine->factor(110, 110) == Approx(0.1));
    CHECK(cosine->factor(109, 110) > 0.1);

    auto step = sched(R"({"type": "step", "step_size": 100, "gamma": 0.5})");
    CHECK(step->factor(0, 1000) == 1.0);
    CHECK(step->factor(99, 1000) == 1.0);
    CHECK(step->factor(100, 1000) == 0.5);
    CHECK(step->factor(250, 1000) == 0.25);
}

TEST_CASE("moons follows the W1 spec: two arcs, half outer, noise 0.05, not standardised", "[standard]") {
    Dataset d = registry().make_dataset(params(R"({"type": "moons"})"), 0);
    CHECK(d.event_shape == Shape{2});
    REQUIRE(d.train.x.shape() == Shape{10000, 2});
    REQUIRE(d.test.x.shape() == Shape{2000, 2});
    CHECK(d.train.x.dtype() == DType::f32);
    const Tensor& x = d.train.x;
    double xmin = 1e9, xmax = -1e9, sx = 0, sy = 0, outer_y = 0;
    std::int64_t outer = 0, outer_first_half = 0;
    for (std::int64_t i = 0; i < 10000; ++i) {
        const double a = x.item(2 * i), b = x.item(2 * i + 1);
        xmin = std::min(xmin, a);
        xmax = std::max(xmax, a);
        sx += a;
        sy += b;
        // Which arc is nearer: the upper half of the unit circle around (0, 0) or the lower
        // half of the one around (1, 0.5).
        const double d_outer = arc_distance(a, b, 0.0, 0.0, true);
        const double d_inner = arc_distance(a, b, 1.0, 0.5, false);
        if (d_outer < d_inner) {
            ++outer;
            outer_y += b;
            outer_first_half += i < 5000;
        }
    }
    CHECK(xmin > -1.25);
    CHECK(xmin < -0.95);
    CHECK(xmax < 2.25);
    CHECK(xmax > 1.95);
    CHECK(outer > 4950);
    CHECK(outer < 5050);
    CHECK(outer_y / static_cast<double>(outer) == Approx(2.0 / std::numbers::pi).margin(0.02));
    CHECK(sx / 10000 == Approx(0.5).margin(0.02));
    CHECK(sy / 10000 == Approx(0.25).margin(0.02));
    // Shuffled: the outer points are spread over the whole split.
    CHECK(outer_first_half > 2300);
    CHECK(outer_first_half < 2700);
}

TEST_CASE("toy datasets are deterministic per seed and differ across seeds and splits", "[standard]") {
    for (const char* name : {"moons", "eight_gaussians", "checkerboard", "circles", "pinwheel", "spirals"}) {
        INFO(name);
        const Params p = params(std::string(R"({"type": ")") + name + R"(", "train": 500, "test": 300, "valid": 100})");
        Dataset a = registry().make_dataset(p, 3);
        Dataset b = registry().make_dataset(p, 3);
        Dataset c = registry().make_dataset(p, 4);
        REQUIRE(a.train.x.shape() == Shape{500, 2});
        REQUIRE(a.test.x.shape() == Shape{300, 2});
        REQUIRE(a.valid.x.shape() == Shape{100, 2});
        CHECK(kern::all_finite(a.train.x));
        CHECK(kern::max_abs_diff(a.train.x, b.train.x) == 0.0);
        CHECK(kern::max_abs_diff(a.test.x, b.test.x) == 0.0);
        CHECK(kern::max_abs_diff(a.train.x, c.train.x) > 0.0);
        CHECK(kern::max_abs_diff(kern::slice(a.train.x, 0, 0, 300), a.test.x) > 0.0);
        // A split does not depend on the size of another one.
        Dataset e = registry().make_dataset(
            params(std::string(R"({"type": ")") + name + R"(", "train": 500, "test": 7})"), 3);
        CHECK(kern::max_abs_diff(a.train.x, e.train.x) == 0.0);
        // Everything lies within a few units of the origin.
        CHECK(max_abs(a.train.x) < 6.0);
    }
}

TEST_CASE("a toy dataset larger than memory is a config error with the size it needs", "[standard]") {
    // 2n doubles wrapped past 64 bits (a length_error) or failed to allocate (std::bad_alloc).
    for (const std::string n : {"9223372036854775807", "1000000000000000"}) {
        std::string msg;
        try {
            registry().make_dataset(params(R"({"type": "moons", "test": )" + n + "}"), 0);
        } catch (const ConfigError& e) {
            msg = e.what();
        }
        INFO(msg);
        CHECK(msg.find("test:/test: " + n + " points need about") != std::string::npos);
        CHECK(msg.find("use fewer points") != std::string::npos);
    }
}

TEST_CASE("toy datasets have their usual shapes", "[standard]") {
    auto train = [](const std::string& json) { return registry().make_dataset(params(json), 1).train.x; };
    SECTION("eight_gaussians clusters sit at radius 4/1.414") {
        Tensor x = train(R"({"type": "eight_gaussians", "train": 4000, "noise": 0.01})");
        for (std::int64_t i = 0; i < 4000; ++i)
            CHECK(std::hypot(x.item(2 * i), x.item(2 * i + 1)) == Approx(4.0 / 1.414).margin(0.05));
    }
    SECTION("checkerboard points sit on the dark cells of [-4, 4]^2") {
        Tensor x = train(R"({"type": "checkerboard", "train": 4000})");
        for (std::int64_t i = 0; i < 4000; ++i) {
            const double a = x.item(2 * i), b = x.item(2 * i + 1);
            CHECK(std::abs(a) <= 4.0);
            CHECK(std::abs(b) <= 4.0);
            const auto cell = static_cast<long>(std::floor(a / 2.0)) + static_cast<long>(std::floor(b / 2.0));
            CHECK(((cell % 2) + 2) % 2 == 0);
        }
    }
    SECTION("circles have radii 3 and 1.5 in equal numbers") {
        Tensor x = train(R"({"type": "circles", "train": 2000, "noise": 0.0})");
        std::int64_t outer = 0;
        for (std::int64_t i = 0; i < 2000; ++i) {
            const double r = std::hypot(x.item(2 * i), x.item(2 * i + 1));
            CHECK((std::abs(r - 3.0) < 1e-5 || std::abs(r - 1.5) < 1e-5));
            outer += r > 2.0;
        }
        CHECK(outer == 1000);
    }
}
