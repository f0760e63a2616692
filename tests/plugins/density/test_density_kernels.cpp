// Unit tests of the density plugin's internal kernels: the fused spline op and the MADE
// solver. The plugin exports only its entry point, so its kernel sources are compiled into this
// test directly (they only depend on the core).
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include <flowlab/gradcheck.hpp>
#include <flowlab/ops.hpp>

#include "../../../plugins/density/made.cpp"
#include "../../../plugins/density/made_solver.cpp"
#include "../../../plugins/density/spline_op.cpp"

using namespace flowlab;
using namespace flowlab::density;

namespace {

Tensor randn_t(const Shape& s, std::uint64_t seed, double scale = 1.0, DType dt = DType::f64) {
    Tensor t = Tensor::empty(s, dt);
    Rng rng(seed);
    rng.fill_normal(t, 0.0, scale);
    return t;
}

}  // namespace

TEST_CASE("the fused spline op's hand-written backward matches finite differences", "[density][spline]") {
    rqs::SplineConfig cfg;
    cfg.bins = 5;
    cfg.tail_bound = 2.0;
    const std::int64_t B = 4, D = 3, P = cfg.num_params();
    auto layout = std::make_shared<const SplineLayout>(SplineLayout::per_feature({0, -1, 1}, 2, static_cast<int>(P)));
    // Inputs inside, near the bound and outside; raw parameters of all sizes.
    Tensor x = randn_t({B, D}, 1, 1.2);
    x.set_item(0, 1.99);
    x.set_item(3, -2.7);
    Tensor raw = randn_t({B, 2 * P}, 2, 1.5);
    for (bool forward_dir : {true, false}) {
        DYNAMIC_SECTION((forward_dir ? "forward" : "inverse")) {
            Tensor r = randn_t({B, D}, 3);
            auto res = gradcheck(
                [&](const std::vector<Var>& v) {
                    FlowResult f = spline_transform(v[0], v[1], layout, cfg, forward_dir);
                    return sum_all(f.out * Var(r)) + 0.7 * sum_all(f.log_det);
                },
                {x, raw});
            INFO(res.worst);
            CHECK(res.ok(1e-6));
        }
    }
}

TEST_CASE("the spline's inverse inverts it and its log-dets cancel", "[density][spline]") {
    rqs::SplineConfig cfg;
    cfg.bins = 9;
    auto layout = std::make_shared<const SplineLayout>(SplineLayout::blocked(6, cfg.num_params()));
    Tensor x = randn_t({50, 6}, 4, 2.0);
    Tensor raw = randn_t({50, 6 * cfg.num_params()}, 5, 3.0);
    NoGradGuard g;
    FlowResult y = spline_transform(Var(x), Var(raw), layout, cfg, true);
    FlowResult back = spline_transform(y.out, Var(raw), layout, cfg, false);
    CHECK(kern::max_abs_diff(back.out.value(), x) < 1e-8);
    CHECK(kern::max_abs_diff(kern::neg(back.log_det.value()), y.log_det.value()) < 1e-9);
    // Monotone and onto [-B, B]: the knots themselves map to knots.
    CHECK(kern::max_abs_diff(y.out.value(), x) > 0.1);
}

TEST_CASE("the spline stays finite for raw parameters of +-1e4", "[density][spline]") {
    rqs::SplineConfig cfg;
    cfg.bins = 4;
    const std::int64_t P = cfg.num_params();
    auto layout = std::make_shared<const SplineLayout>(SplineLayout::blocked(1, static_cast<int>(P)));
    std::vector<double> xs = {-3.0, -2.999, -1.0, 0.0, 0.5, 2.999, 3.0, 3.5};
    for (double big : {1e4, -1e4}) {
        for (DType dt : {DType::f64, DType::f32}) {
            Tensor x = Tensor::from_vector({static_cast<std::int64_t>(xs.size()), 1}, xs, dt);
            Tensor raw = Tensor::empty({x.size(0), P}, dt);
            for (std::int64_t i = 0; i < raw.numel(); ++i) raw.set_item(i, (i % 3 == 0 ? big : -big));
            for (bool fwd : {true, false}) {
                Var xv(x, true), rv(raw, true);
                FlowResult f = spline_transform(xv, rv, layout, cfg, fwd);
                (sum_all(f.out) + sum_all(f.log_det)).backward();
                CHECK(kern::all_finite(f.out.value()));
                CHECK(kern::all_finite(f.log_det.value()));
                CHECK(kern::all_finite(xv.grad()));
                CHECK(kern::all_finite(rv.grad()));
            }
        }
    }
}

TEST_CASE("the MADE solver's adjoint solves the transposed Jacobian system", "[density][made]") {
    // F(a) = (a - mu(a)) exp(-alpha(a)); the adjoint must return lambda with J^T lambda = g.
    MadeConfig mc;
    mc.dim = 5;
    mc.hidden = {13, 11};
    mc.params_per_dim = 2;
    mc.order = "random";
    mc.order_seed = 3;
    mc.zero_init_last = false;
    Rng rng(8);
    Made made(mc, rng);
    for (auto& p : made.named_parameters()) p.var.mutable_value() = p.var.value().to(DType::f64);
    ElementTransform<double> tr;
    tr.params = 2;
    tr.invert = [](double b, const double* u, std::int64_t s, double& a) {
        a = b * std::exp(u[s]) + u[0];
        return u[s];
    };
    tr.partials = [](double a, const double* u, std::int64_t s, double* du, std::int64_t ds) {
        const double e = std::exp(-u[s]);
        du[0] += -e;
        du[ds] += -(a - u[0]) * e;
        return e;
    };
    Tensor a = randn_t({2, 5}, 9);
    Tensor g = randn_t({2, 5}, 10);
    Tensor lambda = made_solve_adjoint<double>(made, a, Tensor(), tr, g);
    // Numerical Jacobian of F per row.
    auto F = [&](const Tensor& in) {
        NoGradGuard ng;
        Tensor u = made(Var(in), Var()).value();
        Tensor out = Tensor::empty(in.shape(), DType::f64);
        for (std::int64_t r = 0; r < in.size(0); ++r)
            for (std::int64_t i = 0; i < 5; ++i)
                out.set_item(r * 5 + i, (in.item(r * 5 + i) - u.item(r * 10 + i)) * std::exp(-u.item(r * 10 + 5 + i)));
        return out;
    };
    for (std::int64_t r = 0; r < 2; ++r) {
        for (std::int64_t j = 0; j < 5; ++j) {
            Tensor up = a.clone(), dn = a.clone();
            up.set_item(r * 5 + j, a.item(r * 5 + j) + 1e-6);
            dn.set_item(r * 5 + j, a.item(r * 5 + j) - 1e-6);
            Tensor fu = F(up), fd = F(dn);
            double jt_lambda = 0;  // (J^T lambda)_j
            for (std::int64_t i = 0; i < 5; ++i)
                jt_lambda += (fu.item(r * 5 + i) - fd.item(r * 5 + i)) / 2e-6 * lambda.item(r * 5 + i);
            CHECK(jt_lambda == Approx(g.item(r * 5 + j)).margin(1e-6));
        }
    }
    // And the solve inverts F.
    Tensor ld;
    Tensor b = F(a);
    Tensor back = made_solve<double>(made, b, Tensor(), tr, ld);
    CHECK(kern::max_abs_diff(back, a) < 1e-12);
}

TEST_CASE("the masked-weight op zeroes masked weights and masks their gradient", "[density][made]") {
    auto din = std::make_shared<const std::vector<std::int32_t>>(std::vector<std::int32_t>{1, 2, 3});
    auto dout = std::make_shared<const std::vector<std::int32_t>>(std::vector<std::int32_t>{1, 2, 2, 3});
    Var w(randn_t({3, 4}, 1), true);
    Var wm = masked_weight(w, din, dout, true);
    Tensor r = randn_t({3, 4}, 2);
    sum_all(wm * Var(r)).backward();
    for (std::int64_t j = 0; j < 3; ++j)
        for (std::int64_t k = 0; k < 4; ++k) {
            const bool keep = (*dout)[static_cast<std::size_t>(k)] > (*din)[static_cast<std::size_t>(j)];
            CHECK(wm.value().item(j * 4 + k) == (keep ? w.value().item(j * 4 + k) : 0.0));
            CHECK(w.grad().item(j * 4 + k) == (keep ? r.item(j * 4 + k) : 0.0));
        }
}
