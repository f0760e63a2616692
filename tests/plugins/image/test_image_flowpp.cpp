// Flow++'s pieces in the image plugin: the fused logistic-mixture CDF op (gradients against
// finite differences in f64, round trips, stability at the extremes, the solver's error), the
// mixture couplings, the flowpp conditioner (shape, zero start, gradients, context, equality
// with the JSON block of configs/fmnist_flowpp_small.json), the attention op (a plain reference,
// gradients, equivariance to permutations of the positions) and the variational dequantizer
// built with them.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "flowlab/errors.hpp"
#include "flowlab/experiment.hpp"
#include "flowlab/gradcheck.hpp"
#include "flowlab/network.hpp"
#include "flowlab/plugin.hpp"

#include "test_support.hpp"

// The op's source, compiled in: the plugin exports only its entry point.
#include "../../../plugins/image/mixture_op.cpp"

using namespace flowlab;
using flowlab::image::MixturePlan;
using flowlab::image::mixture_transform;

namespace {

const Registry& registry() { return test::standard_and_image_registry(); }

Tensor randn_t(const Shape& s, std::uint64_t seed, double scale = 1.0, DType dt = DType::f64) {
    Tensor t = Tensor::empty(s, DType::f64);
    Rng rng(seed);
    rng.fill_normal(t, 0.0, scale);
    return t.to(dt);
}

// Four values per row, three transformed (value 1 is copied), K components.
std::shared_ptr<MixturePlan> small_plan(int K) {
    auto p = std::make_shared<MixturePlan>();
    p->layer = "test_mixture";
    p->dim = 4;
    p->slots = 3;
    p->slot = {0, -1, 1, 2};
    p->components = K;
    return p;
}

// Sets raw parameter j (see MixturePlan) of slot s in every row.
void set_param(Tensor& raw, const MixturePlan& p, std::int64_t j, std::int64_t s, double v) {
    for (std::int64_t n = 0; n < raw.size(0); ++n) raw.set_item(n * p.raw_cols() + j * p.slots + s, v);
}

// Parameters of a module to f64, perturbed (zero-initialised outputs would hide the gradients).
void perturb_f64(Module& m, std::uint64_t seed, double sd) { test::perturb(m, seed, sd, DType::f64); }

// Central differences of sum(f(...) * r) with respect to every parameter element (up to
// `per_param` of them), against backward().
double worst_param_grad_error(Module& m, const std::function<Var()>& f, const Tensor& r, int per_param = 12) {
    for (auto& p : m.named_parameters()) p.var.zero_grad();
    sum_all(f() * Var(r)).backward();
    double worst = 0;
    for (auto& p : m.named_parameters()) {
        Tensor& v = p.var.mutable_value();
        const Tensor analytic = p.var.grad().defined() ? p.var.grad().clone() : Tensor::zeros(v.shape(), DType::f64);
        const std::int64_t n = v.numel();
        const std::int64_t step = std::max<std::int64_t>(1, n / per_param);
        for (std::int64_t i = 0; i < n; i += step) {
            const double x0 = v.item(i), h = 1e-6;
            NoGradGuard ng;
            v.set_item(i, x0 + h);
            const double up = kern::sum_all(kern::mul(f().value(), r));
            v.set_item(i, x0 - h);
            const double down = kern::sum_all(kern::mul(f().value(), r));
            v.set_item(i, x0);
            const double num = (up - down) / (2 * h), a = analytic.item(i);
            const double err = std::fabs(num - a) / std::max({1.0, std::fabs(num), std::fabs(a)});
            if (err > worst) {
                worst = err;
                UNSCOPED_INFO(p.name << "[" << i << "]: analytic " << a << ", numeric " << num);
            }
        }
    }
    return worst;
}

}  // namespace

TEST_CASE("the mixture CDF op's hand-written backward matches finite differences in f64", "[image][flowpp][mixture]") {
    const int K = 3;
    auto plan = small_plan(K);
    const std::int64_t B = 3;
    Tensor x = randn_t({B, 4}, 1, 1.5);
    x.set_item(2, 6.0);    // in a tail
    x.set_item(7, -4.0);
    Tensor raw = randn_t({B, plan->raw_cols()}, 2, 0.8);
    // One log-scale far under the floor (no gradient there, on either side of the difference).
    raw.set_item(0 * plan->raw_cols() + (2 + 2 * K + 1) * plan->slots + 2, -9.0);
    const Tensor r = randn_t({B, 4}, 3);
    for (bool inverse : {true, false}) {
        DYNAMIC_SECTION((inverse ? "inverse (data -> latent)" : "forward (solved)")) {
            Tensor in = x;
            if (!inverse) {
                NoGradGuard ng;
                in = mixture_transform(Var(x), Var(raw), plan, true).out.value().clone();
            }
            auto res = gradcheck(
                [&](const std::vector<Var>& v) {
                    FlowResult f = mixture_transform(v[0], v[1], plan, inverse);
                    return sum_all(f.out * Var(r)) + 0.7 * sum_all(f.log_det);
                },
                {in, raw});
            INFO(res.worst);
            CHECK(res.ok(1e-6));
            // The output alone and the log-det alone (the parked gradient on either side).
            auto out_only = gradcheck(
                [&](const std::vector<Var>& v) { return mixture_transform(v[0], v[1], plan, inverse).out; }, {in, raw});
            auto ld_only = gradcheck(
                [&](const std::vector<Var>& v) { return mixture_transform(v[0], v[1], plan, inverse).log_det; },
                {in, raw});
            INFO(out_only.worst << " / " << ld_only.worst);
            CHECK(out_only.ok(1e-6));
            CHECK(ld_only.ok(1e-6));
        }
    }
}

TEST_CASE("the mixture CDF op inverts itself, its log-det is its derivative and zero parameters are the identity",
          "[image][flowpp][mixture]") {
    const int K = 5;
    auto plan = small_plan(K);
    const std::int64_t B = 6;
    Tensor x = randn_t({B, 4}, 4, 3.0);
    x.set_item(0, 40.0);
    x.set_item(3, -250.0);
    x.set_item(6, 1e3);
    Tensor raw = randn_t({B, plan->raw_cols()}, 5, 1.0);
    NoGradGuard ng;
    FlowResult z = mixture_transform(Var(x), Var(raw), plan, true);
    FlowResult back = mixture_transform(z.out, Var(raw), plan, false);
    for (std::int64_t i = 0; i < x.numel(); ++i)
        CHECK(back.out.value().item(i) == Approx(x.item(i)).epsilon(1e-12).margin(1e-12));
    for (std::int64_t n = 0; n < B; ++n) CHECK(back.log_det.value().item(n) == Approx(-z.log_det.value().item(n)).margin(1e-10));
    CHECK(z.out.value().item(1) == x.item(1));  // the copied value
    // The transform is element-wise: the log-det is the sum of the three derivatives.
    for (std::int64_t n = 0; n < B; ++n) {
        double sum = 0;
        for (std::int64_t j : {0, 2, 3}) {
            const double h = 1e-6 * std::max(1.0, std::fabs(x.item(n * 4 + j)));
            Tensor up = x.clone(), down = x.clone();
            up.set_item(n * 4 + j, x.item(n * 4 + j) + h);
            down.set_item(n * 4 + j, x.item(n * 4 + j) - h);
            const double d = (mixture_transform(Var(up), Var(raw), plan, true).out.value().item(n * 4 + j) -
                              mixture_transform(Var(down), Var(raw), plan, true).out.value().item(n * 4 + j)) /
                             (2 * h);
            sum += std::log(d);
        }
        CHECK(z.log_det.value().item(n) == Approx(sum).epsilon(1e-6));
    }
    // All-zero raw parameters (a zero-initialised conditioner) with mean_spread 0: K equal
    // standard logistics, a = b = 0, so logit(sigmoid(x)) = x.
    Tensor zero = Tensor::zeros({B, plan->raw_cols()}, DType::f64);
    Tensor moderate = randn_t({B, 4}, 6, 3.0);
    auto tied = std::make_shared<MixturePlan>(*plan);
    tied->mean_spread = 0.0;
    FlowResult id = mixture_transform(Var(moderate), Var(zero), tied, true);
    CHECK(kern::max_abs_diff(id.out.value(), moderate) < 1e-12);
    CHECK(test::max_abs(id.log_det.value()) < 1e-12);
    // With the default spread the means sit evenly on [-1, 1]: an odd map within 0.3 of x.
    FlowResult near = mixture_transform(Var(moderate), Var(zero), plan, true);
    CHECK(kern::max_abs_diff(near.out.value(), moderate) < 0.3);
    FlowResult mirrored = mixture_transform(-Var(moderate), Var(zero), plan, true);
    CHECK(kern::max_abs_diff(mirrored.out.value(), kern::neg(near.out.value())) < 1e-12);
}

TEST_CASE("spread means let a zero-initialised conditioner tell the components apart", "[image][flowpp][mixture]") {
    // K equal components get equal gradients, so training would keep them equal forever: the
    // mixture would stay one logistic. The fixed offsets of the means break the tie.
    const int K = 4;
    auto plan = small_plan(K);
    Tensor x = randn_t({8, 4}, 60, 2.0);
    Tensor r = randn_t({8, 4}, 61);
    auto mean_grads = [&](double spread) {
        auto p = std::make_shared<MixturePlan>(*plan);
        p->mean_spread = spread;
        Var raw(Tensor::zeros({8, plan->raw_cols()}, DType::f64), true);
        FlowResult f = mixture_transform(Var(x), raw, p, true);
        (sum_all(f.out * Var(r)) + sum_all(f.log_det)).backward();
        std::vector<double> g(K, 0.0);  // summed over rows and slots, per component
        for (std::int64_t n = 0; n < 8; ++n)
            for (std::int64_t s = 0; s < plan->slots; ++s)
                for (int k = 0; k < K; ++k)
                    g[static_cast<std::size_t>(k)] += raw.grad().item(n * plan->raw_cols() + (2 + K + k) * plan->slots + s);
        return g;
    };
    const std::vector<double> tied = mean_grads(0.0), spread = mean_grads(1.0);
    for (int k = 1; k < K; ++k) {
        CHECK(tied[static_cast<std::size_t>(k)] == Approx(tied[0]).margin(1e-12));
        CHECK(std::fabs(spread[static_cast<std::size_t>(k)] - spread[0]) > 1e-3);
    }
}

TEST_CASE("the mixture CDF op stays finite at the extremes in f32 and f64", "[image][flowpp][mixture]") {
    const int K = 4;
    auto plan = small_plan(K);
    const std::int64_t B = 4;
    Tensor raw = randn_t({B, plan->raw_cols()}, 7, 1.0);
    // Scales at the floor, far-apart means and very uneven weights.
    for (std::int64_t s = 0; s < 3; ++s) {
        for (int k = 0; k < K; ++k) {
            set_param(raw, *plan, 2 + k, s, k == 0 ? 40.0 : -40.0);
            set_param(raw, *plan, 2 + K + k, s, 20.0 * k - 30.0);
            set_param(raw, *plan, 2 + 2 * K + k, s, k % 2 ? -12.0 : 3.0);
        }
        set_param(raw, *plan, 0, s, 50.0);  // a at its clamp
    }
    Tensor x = Tensor::from_vector({B, 4}, {1e4, 0, -1e4, 1e-7, -55, 0, 35.5, 1e3, 0.5, 0, -0.5, 80, -3e3, 0, 7, -7},
                                   DType::f64);
    for (DType dt : {DType::f64, DType::f32}) {
        INFO(dtype_name(dt));
        Var xv(x.to(dt), true), rv(raw.to(dt), true);
        FlowResult z = mixture_transform(xv, rv, plan, true);
        CHECK(kern::all_finite(z.out.value()));
        CHECK(kern::all_finite(z.log_det.value()));
        (sum_all(z.out) + sum_all(z.log_det)).backward();
        CHECK(kern::all_finite(xv.grad()));
        CHECK(kern::all_finite(rv.grad()));
        Var zv(z.out.value().clone(), true), rv2(raw.to(dt), true);
        FlowResult back = mixture_transform(zv, rv2, plan, false);
        CHECK(kern::all_finite(back.out.value()));
        CHECK(kern::all_finite(back.log_det.value()));
        (sum_all(back.out) + sum_all(back.log_det)).backward();
        CHECK(kern::all_finite(zv.grad()));
        CHECK(kern::all_finite(rv2.grad()));
        if (dt == DType::f64)
            for (std::int64_t i = 0; i < x.numel(); ++i)
                CHECK(back.out.value().item(i) == Approx(x.item(i)).epsilon(1e-9).margin(1e-9));
    }
}

TEST_CASE("a mixture inverse that passes its iteration limit is a NumericError naming the layer",
          "[image][flowpp][mixture]") {
    auto plan = small_plan(3);
    plan->max_iterations = 1;
    Tensor raw = randn_t({2, plan->raw_cols()}, 8, 1.5);
    Tensor z = randn_t({2, 4}, 9, 2.0);
    const std::string msg = test::error_of<NumericError>([&] { mixture_transform(Var(z), Var(raw), plan, false); });
    CHECK(msg.find("test_mixture") != std::string::npos);
    CHECK(msg.find("inverse_iterations") != std::string::npos);
    // Through a layer: its registered name.
    Rng rng(10);
    auto layer = registry().make_bijector(
        Params::parse(R"({"type": "conv_mixture_coupling", "inverse_iterations": 1,
                          "conditioner": {"type": "cnn", "hidden": 4}})"),
        BuildContext{{2, 3, 3}, {}, &rng, &registry()});
    perturb_f64(*layer, 11, 0.5);
    Tensor zi = randn_t({2, 2, 3, 3}, 12, 2.0);
    const std::string lmsg = test::error_of<NumericError>([&] { layer->forward(Var(zi)); });
    CHECK(lmsg.find("conv_mixture_coupling") != std::string::npos);
}

TEST_CASE("the mixture couplings start near the identity and transform only their half", "[image][flowpp][mixture]") {
    Rng rng(13);
    for (const char* json :
         {R"({"type": "conv_mixture_coupling", "conditioner": {"type": "cnn", "hidden": 4}})",
          R"({"type": "conv_mixture_coupling", "mask": "checkerboard", "parity": 1,
              "conditioner": {"type": "flowpp", "hidden": 4, "heads": 2, "blocks": 1}})"}) {
        INFO(json);
        auto layer = registry().make_bijector(Params::parse(json), BuildContext{{2, 4, 4}, {}, &rng, &registry()});
        Tensor x = randn_t({3, 2, 4, 4}, 14, 2.0, DType::f32);
        FlowResult z = layer->inverse(Var(x));
        // The conditioner starts at zero: the map is logit of K logistics at means spread over
        // [-1, 1], the same for every value, within 0.3 of x.
        CHECK(kern::max_abs_diff(z.out.value(), x) < 0.3);
        CHECK(kern::max_abs_diff(layer->forward(z.out).out.value(), x) < 1e-5);
        // Exactly the identity without the spread.
        auto tied = registry().make_bijector(Params::parse(json).with("mean_spread", "0"),
                                             BuildContext{{2, 4, 4}, {}, &rng, &registry()});
        FlowResult zi = tied->inverse(Var(x));
        CHECK(kern::max_abs_diff(zi.out.value(), x) < 1e-5);
        CHECK(test::max_abs(zi.log_det.value()) < 1e-4);
    }
    auto ch = registry().make_bijector(
        Params::parse(R"({"type": "conv_mixture_coupling", "parity": 1, "conditioner": {"type": "cnn", "hidden": 4}})"),
        BuildContext{{4, 2, 2}, {}, &rng, &registry()});
    perturb_f64(*ch, 15, 0.5);
    Tensor x = randn_t({2, 4, 2, 2}, 16);
    Tensor z = ch->inverse(Var(x)).out.value();
    // parity 1 conditions on the second half: the first two channels change, the last two do not.
    for (std::int64_t n = 0; n < 2; ++n)
        for (std::int64_t i = 0; i < 16; ++i) {
            const bool kept = i >= 8;
            if (kept) CHECK(z.item(n * 16 + i) == x.item(n * 16 + i));
            else CHECK(z.item(n * 16 + i) != x.item(n * 16 + i));
        }
    // The vector layer: 2 + 3K outputs per transformed feature from its mlp.
    auto vec = registry().make_bijector(Params::parse(R"({"type": "mixture_coupling", "components": 6,
                                                          "conditioner": {"type": "mlp", "hidden": [8]}})"),
                                        BuildContext{{5}, {}, &rng, &registry()});
    CHECK(vec->num_parameters() == 2 * 8 + 8 + 8 * (2 + 3 * 6) * 3 + (2 + 3 * 6) * 3);
}

TEST_CASE("the flowpp conditioner has the requested shape, starts at zero and takes a larger context",
          "[image][flowpp]") {
    Rng rng(20);
    ConditionerSpec spec{{2, 4, 4}, {6, 4, 4}, {1, 8, 8}, true};
    auto net = registry().make_conditioner(
        Params::parse(R"({"type": "flowpp", "hidden": 8, "blocks": 2, "heads": 2})"), spec, rng);
    Tensor x = randn_t({3, 2, 4, 4}, 21, 1.0, DType::f32), ctx = randn_t({3, 1, 8, 8}, 22, 1.0, DType::f32);
    Var out = (*net)(Var(x), Var(ctx));
    CHECK(out.shape() == Shape{3, 6, 4, 4});
    CHECK(kern::sq_norm(out.value()) == 0.0);
    // Parameters: conv in (2 + 4 squeezed context channels -> 8, 3x3), per block: conv 16 -> 8 (3x3), conv 16 -> 16 (1x1), two
    // layer norms (8 + 8 each), attention (8 -> 24 and 8 -> 16, with biases); conv out 8 -> 6.
    const std::int64_t block = (16 * 8 * 9 + 8) + (16 * 16 + 16) + 2 * 16 + (8 * 24 + 24) + (8 * 16 + 16);
    CHECK(net->num_parameters() == (6 * 8 * 9 + 8) + 2 * block + (8 * 6 * 9 + 6));
    // The context reaches the output once the output conv is not zero.
    for (auto& p : net->named_parameters())
        if (p.name.find("proj_out") != std::string::npos) p.var.mutable_value().fill(0.05);
    Tensor a = (*net)(Var(x), Var(ctx)).value();
    Tensor b = (*net)(Var(x), Var(randn_t({3, 1, 8, 8}, 23, 1.0, DType::f32))).value();
    CHECK(kern::max_abs_diff(a, b) > 1e-4);
    CHECK_THROWS_AS((*net)(Var(x), Var()), ShapeError);
    CHECK_THROWS_AS(registry().make_conditioner(Params::parse(R"({"type": "flowpp", "hidden": 6, "heads": 4})"),
                                                ConditionerSpec{{2, 4, 4}, {6, 4, 4}, {}, true}, rng),
                    ConfigError);
}

TEST_CASE("the flowpp conditioner's gradients match finite differences in f64", "[image][flowpp]") {
    Rng rng(24);
    for (bool attention : {true, false}) {
        DYNAMIC_SECTION("attention " << attention) {
            ConditionerSpec spec{{2, 3, 3}, {4, 3, 3}, {1, 3, 3}, true};
            auto net = registry().make_conditioner(
                Params::parse(std::string(R"({"type": "flowpp", "hidden": 4, "blocks": 2, "heads": 2, "attention": )") +
                              (attention ? "true" : "false") + "}"),
                spec, rng);
            perturb_f64(*net, 25, 0.3);
            const Tensor x = randn_t({2, 2, 3, 3}, 26), c = randn_t({2, 1, 3, 3}, 27);
            auto res = gradcheck([&](const std::vector<Var>& v) { return (*net)(v[0], v[1]); }, {x, c});
            INFO(res.worst);
            CHECK(res.ok(1e-6));
            const Tensor r = randn_t({2, 4, 3, 3}, 28);
            CHECK(worst_param_grad_error(*net, [&] { return (*net)(Var(x), Var(c)); }, r) < 1e-6);
        }
    }
}

namespace {

// softmax(q k^T / sqrt(d)) v per head, then the output projection, by plain loops over [C, H, W].
Tensor attention_reference(const Tensor& x, const std::map<std::string, Tensor>& p, std::int64_t heads,
                           std::int64_t out) {
    const std::int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
    const Tensor& wq = p.at("qkv.weight");
    const std::int64_t W = wq.size(1) / 3, d = W / heads;
    Tensor y = Tensor::zeros({B, out, x.size(2), x.size(3)}, DType::f64);
    for (std::int64_t b = 0; b < B; ++b) {
        std::vector<double> qkv(static_cast<std::size_t>(P * 3 * W));
        for (std::int64_t q = 0; q < P; ++q)
            for (std::int64_t j = 0; j < 3 * W; ++j) {
                double s = p.at("qkv.bias").item(j);
                for (std::int64_t c = 0; c < C; ++c) s += x.item((b * C + c) * P + q) * wq.item(c * 3 * W + j);
                qkv[static_cast<std::size_t>(q * 3 * W + j)] = s;
            }
        std::vector<double> joined(static_cast<std::size_t>(P * W), 0.0);
        for (std::int64_t h = 0; h < heads; ++h)
            for (std::int64_t q = 0; q < P; ++q) {
                std::vector<double> s(static_cast<std::size_t>(P));
                double mx = -1e300;
                for (std::int64_t k = 0; k < P; ++k) {
                    double dot = 0;
                    for (std::int64_t i = 0; i < d; ++i)
                        dot += qkv[static_cast<std::size_t>(q * 3 * W + h * d + i)] *
                               qkv[static_cast<std::size_t>(k * 3 * W + W + h * d + i)];
                    s[static_cast<std::size_t>(k)] = dot / std::sqrt(static_cast<double>(d));
                    mx = std::max(mx, s[static_cast<std::size_t>(k)]);
                }
                double z = 0;
                for (auto& v : s) z += (v = std::exp(v - mx));
                for (std::int64_t i = 0; i < d; ++i) {
                    double acc = 0;
                    for (std::int64_t k = 0; k < P; ++k)
                        acc += s[static_cast<std::size_t>(k)] / z * qkv[static_cast<std::size_t>(k * 3 * W + 2 * W + h * d + i)];
                    joined[static_cast<std::size_t>(q * W + h * d + i)] = acc;
                }
            }
        for (std::int64_t q = 0; q < P; ++q)
            for (std::int64_t o = 0; o < out; ++o) {
                double s = p.at("out.bias").item(o);
                for (std::int64_t i = 0; i < W; ++i)
                    s += joined[static_cast<std::size_t>(q * W + i)] * p.at("out.weight").item(i * out + o);
                y.set_item((b * out + o) * P + q, s);
            }
    }
    return y;
}

std::unique_ptr<Op> make_attention(const std::string& extra, const Shape& in, Rng& rng) {
    return registry().make_op(Params::parse(R"({"name": "a", "type": "attention", "inputs": ["x"], )" + extra + "}"),
                              OpSpec{{in}, 0, false}, rng);
}

}  // namespace

TEST_CASE("the attention op computes multi-head attention, with correct gradients", "[image][flowpp][attention]") {
    Rng rng(30);
    auto op = make_attention(R"("out": 5, "heads": 2, "channels": 6)", {3, 2, 3}, rng);
    CHECK(op->output_shape() == Shape{5, 2, 3});
    perturb_f64(*op, 31, 0.2);
    std::map<std::string, Tensor> params;
    for (auto& p : op->named_parameters()) params[p.name] = p.var.value();
    const Tensor x = randn_t({2, 3, 2, 3}, 32);
    const Tensor y = (*op)({Var(x)}).value();
    CHECK(kern::max_abs_diff(y, attention_reference(x, params, 2, 5)) < 1e-12);
    auto res = gradcheck([&](const std::vector<Var>& v) { return (*op)({v[0]}); }, {x});
    INFO(res.worst);
    CHECK(res.ok(1e-7));
    CHECK(worst_param_grad_error(*op, [&] { return (*op)({Var(x)}); }, randn_t({2, 5, 2, 3}, 33)) < 1e-6);
    // Channels-last in and out (how a network runs it between convolutions): the same values.
    op->set_layouts({ConvLayout::nhwc}, ConvLayout::nhwc);
    const Tensor y_nhwc = (*op)({to_layout(Var(x), ConvLayout::nchw, ConvLayout::nhwc)}).value();
    CHECK(kern::max_abs_diff(to_layout(Var(y_nhwc), ConvLayout::nhwc, ConvLayout::nchw).value(), y) < 1e-12);
    CHECK_THROWS_AS(make_attention(R"("out": 5, "heads": 4)", {3, 2, 3}, rng), ConfigError);
    CHECK_THROWS_AS(make_attention(R"("out": 5)", {12}, rng), ShapeError);
}

TEST_CASE("attention is equivariant to permutations of the positions (without position embeddings)",
          "[image][flowpp][attention]") {
    Rng rng(34);
    const Shape in{4, 3, 3};
    const std::int64_t P = 9;
    std::vector<std::int64_t> perm = {4, 7, 0, 2, 8, 1, 6, 3, 5};
    // x[b, c, perm[q]] for every q: the same image with its positions shuffled.
    auto permute = [&](const Tensor& t) {
        Tensor o = t.clone();
        const std::int64_t rows = t.numel() / P;
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t q = 0; q < P; ++q) o.set_item(r * P + q, t.item(r * P + perm[static_cast<std::size_t>(q)]));
        return o;
    };
    const Tensor x = randn_t({2, 4, 3, 3}, 35);
    auto op = make_attention(R"("out": 6, "heads": 2)", in, rng);
    perturb_f64(*op, 36, 0.3);
    const Tensor y = (*op)({Var(x)}).value();
    const Tensor y_perm = (*op)({Var(permute(x))}).value();
    CHECK(kern::max_abs_diff(y_perm, permute(y)) < 1e-12);
    // A learned position embedding breaks the symmetry, as it is meant to.
    auto pos = make_attention(R"("out": 6, "heads": 2, "positions": true)", in, rng);
    perturb_f64(*pos, 37, 0.3);
    CHECK(kern::max_abs_diff((*pos)({Var(permute(x))}).value(), permute((*pos)({Var(x)}).value())) > 1e-3);
}

TEST_CASE("the flowpp conditioner is the JSON block of configs/fmnist_flowpp_small.json", "[image][flowpp][graph]") {
    // The block under model.networks, read from the shipped config, against the conditioner
    // with the same sizes: the same parameters (names and values from one seed) and outputs.
    Params cfg = load_experiment(FLOWLAB_SOURCE_DIR "/configs/fmnist_flowpp_small.json");
    NetworkLibrary lib(cfg.get_object("model").get_object("networks"));
    ConditionerSpec spec{{2, 14, 14}, {2 * 14, 14, 14}, {}, true};
    spec.networks = &lib;
    Rng r1(40), r2(40);
    auto graph = registry().make_conditioner(Params::parse(R"({"type": "graph", "network": "flowpp_block"})"), spec, r1);
    auto builtin = registry().make_conditioner(
        Params::parse(R"({"type": "flowpp", "hidden": 16, "blocks": 1, "heads": 2})"), spec, r2);
    auto gp = graph->named_parameters(), bp = builtin->named_parameters();
    REQUIRE(gp.size() == bp.size());
    for (std::size_t i = 0; i < gp.size(); ++i) {
        INFO(gp[i].name << " / " << bp[i].name);
        CHECK(gp[i].name == bp[i].name);
        CHECK(kern::max_abs_diff(gp[i].var.value(), bp[i].var.value()) == 0.0);
    }
    perturb_f64(*graph, 41, 0.2);
    perturb_f64(*builtin, 41, 0.2);
    const Tensor x = randn_t({2, 2, 14, 14}, 42);
    CHECK(kern::max_abs_diff((*graph)(Var(x), Var()).value(), (*builtin)(Var(x), Var()).value()) < 1e-12);
}

TEST_CASE("the variational dequantizer trains a flow of mixture couplings with flowpp conditioners",
          "[image][flowpp][vardeq]") {
    // q draws through its layers' forward: the first layer computes it by formula
    // (closed_form "forward", Flow++'s way), the second solves it.
    Rng init(50);
    auto dq = registry().make_dequantizer(
        Params::parse(R"({"type": "variational",
                          "features": {"type": "flowpp", "hidden": 4, "blocks": 1, "heads": 2}, "feature_channels": 2,
                          "layers": [
                            {"type": "conv_mixture_coupling", "mask": "checkerboard", "parity": 0, "components": 2,
                             "closed_form": "forward",
                             "conditioner": {"type": "flowpp", "hidden": 4, "blocks": 1, "heads": 2}},
                            {"type": "conv_mixture_coupling", "mask": "checkerboard", "parity": 1, "components": 2,
                             "conditioner": {"type": "flowpp", "hidden": 4, "blocks": 1, "heads": 2}}]})"),
        BuildContext{{1, 4, 4}, {}, &init, &registry()});
    Rng noise(51);
    for (auto& p : dq->named_parameters()) {
        Tensor n = Tensor::empty(p.var.shape());
        noise.fill_normal(n, 0.0, 0.1);
        kern::add_inplace(p.var.mutable_value(), n);
    }
    Tensor x = Tensor::from_vector({2, 1, 4, 4}, std::vector<double>(32, 0.0));
    for (std::int64_t i = 0; i < 32; ++i) x.set_item(i, static_cast<double>((i * 37) % 256));
    Rng rng(52);
    Dequantized d = dq->dequantize(x, rng);
    REQUIRE(kern::all_finite(d.log_weight.value()));
    for (std::int64_t i = 0; i < 32; ++i) {
        CHECK(d.x.value().item(i) > x.item(i) / 256.0);
        CHECK(d.x.value().item(i) < (x.item(i) + 1) / 256.0);
    }
    (sum_all(d.x * d.x) + sum_all(d.log_weight)).backward();
    int reached = 0, total = 0;
    for (auto& p : dq->named_parameters()) {
        ++total;
        if (p.var.grad().defined() && kern::sq_norm(p.var.grad()) > 0.0) ++reached;
    }
    CHECK(reached == total);
}

TEST_CASE("closed_form forward makes a mixture coupling the inverse bijector of the default one",
          "[image][flowpp][mixture]") {
    for (const char* json : {R"({"type": "conv_mixture_coupling", "conditioner": {"type": "cnn", "hidden": 4}})",
                             R"({"type": "mixture_coupling", "conditioner": {"type": "mlp", "hidden": [8]}})"}) {
        INFO(json);
        const Shape event = std::string(json).find("conv") != std::string::npos ? Shape{2, 3, 3} : Shape{5};
        Rng r1(70), r2(70);
        auto fwd_formula = registry().make_bijector(Params::parse(json).with("closed_form", "\"forward\""),
                                                    BuildContext{event, {}, &r1, &registry()});
        auto inv_formula = registry().make_bijector(Params::parse(json), BuildContext{event, {}, &r2, &registry()});
        perturb_f64(*fwd_formula, 71, 0.3);
        perturb_f64(*inv_formula, 71, 0.3);
        const Tensor x = randn_t(test::batched(3, event), 72);
        FlowResult a = fwd_formula->forward(Var(x)), b = inv_formula->inverse(Var(x));
        CHECK(kern::max_abs_diff(a.out.value(), b.out.value()) == 0.0);
        CHECK(kern::max_abs_diff(a.log_det.value(), b.log_det.value()) == 0.0);
        FlowResult c = fwd_formula->inverse(a.out), d = inv_formula->forward(b.out);
        CHECK(kern::max_abs_diff(c.out.value(), x) < 1e-10);
        CHECK(kern::max_abs_diff(c.out.value(), d.out.value()) == 0.0);
    }
}
