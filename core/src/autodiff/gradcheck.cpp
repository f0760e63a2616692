#include "flowlab/gradcheck.hpp"

#include <cmath>
#include <limits>
#include <sstream>

#include "flowlab/errors.hpp"
#include "flowlab/ops.hpp"
#include "flowlab/rng.hpp"

namespace flowlab {

namespace {
// <y, r> in double.
double dot(const Tensor& y, const Tensor& r) {
    const Tensor y64 = y.to(DType::f64);
    const double* a = y64.data<double>();
    const double* b = r.data<double>();
    double s = 0;
    for (std::int64_t i = 0; i < y64.numel(); ++i) s += a[i] * b[i];
    return s;
}
}  // namespace

GradCheckResult gradcheck(const std::function<Var(const std::vector<Var>&)>& f, const std::vector<Tensor>& inputs,
                          double eps, std::uint64_t seed) {
    // Private f64 copies: the check perturbs them in place.
    std::vector<Var> vars;
    vars.reserve(inputs.size());
    for (const auto& t : inputs) vars.emplace_back(t.dtype() == DType::f64 ? t.clone() : t.to(DType::f64), true);

    Var y = f(vars);
    if (!y.defined()) throw Error("gradcheck: the function returned an undefined Var");
    // A fixed random projection turns any output into the scalar <y, r>.
    Tensor r = Tensor::empty(y.shape(), DType::f64);
    Rng rng(seed);
    rng.fill_normal(r);
    const bool differentiable = y.requires_grad();
    if (differentiable) y.backward(y.dtype() == DType::f64 ? r : r.to(y.dtype()));

    GradCheckResult res;
    for (std::size_t i = 0; i < vars.size(); ++i) {
        Tensor& x = vars[i].mutable_value();
        const Tensor& analytic = vars[i].grad();
        for (std::int64_t j = 0; j < x.numel(); ++j) {
            const double x0 = x.item(j);
            double lp, lm;
            {
                NoGradGuard guard;
                x.set_item(j, x0 + eps);
                lp = dot(f(vars).value(), r);
                x.set_item(j, x0 - eps);
                lm = dot(f(vars).value(), r);
                x.set_item(j, x0);
            }
            const double numeric = (lp - lm) / (2 * eps);
            const double a = differentiable && analytic.defined() ? analytic.item(j) : 0.0;
            const double abs_err = std::abs(a - numeric);
            const double rel_err = abs_err / std::max({1.0, std::abs(a), std::abs(numeric)});
            // NaN compares false everywhere: make it the worst error so it cannot pass.
            const double rel = std::isnan(rel_err) ? std::numeric_limits<double>::infinity() : rel_err;
            if (std::isnan(abs_err) || abs_err > res.max_abs_error)
                res.max_abs_error = std::isnan(abs_err) ? std::numeric_limits<double>::infinity() : abs_err;
            if (rel > res.max_rel_error || res.worst.empty()) {
                res.max_rel_error = rel;
                std::ostringstream os;
                os.precision(10);
                os << "input " << i << ", element " << j << ": analytic " << a << " numeric " << numeric;
                res.worst = os.str();
            }
        }
    }
    return res;
}

double numerical_log_abs_det(const std::function<Tensor(const Tensor&)>& f, const Tensor& x_row, double eps) {
    const Tensor x0 = x_row.to(DType::f64).clone();
    const std::int64_t d = x0.numel();
    if (x0.dim() != 2 || x0.size(0) != 1)
        throw ShapeError("numerical_log_abs_det: wants one row [1, D], got " + shape_str(x0.shape()));
    // J[r][c] = d f_r / d x_c by central differences.
    std::vector<double> J(static_cast<std::size_t>(d * d));
    Tensor x = x0.clone();
    for (std::int64_t c = 0; c < d; ++c) {
        const double v = x0.item(c);
        x.set_item(c, v + eps);
        const Tensor fp = f(x).to(DType::f64);
        x.set_item(c, v - eps);
        const Tensor fm = f(x).to(DType::f64);
        x.set_item(c, v);
        if (fp.numel() != d || fm.numel() != d)
            throw ShapeError("numerical_log_abs_det: f maps " + shape_str(x0.shape()) + " to " +
                             shape_str(fp.shape()) + ", not a square map");
        for (std::int64_t r = 0; r < d; ++r) J[r * d + c] = (fp.item(r) - fm.item(r)) / (2 * eps);
    }
    // LU with partial pivoting: log|det| = sum log|U_ii|.
    double log_det = 0;
    for (std::int64_t k = 0; k < d; ++k) {
        std::int64_t p = k;
        for (std::int64_t r = k + 1; r < d; ++r)
            if (std::abs(J[r * d + k]) > std::abs(J[p * d + k])) p = r;
        if (J[p * d + k] == 0.0) return -std::numeric_limits<double>::infinity();
        if (p != k)
            for (std::int64_t c = 0; c < d; ++c) std::swap(J[k * d + c], J[p * d + c]);
        const double piv = J[k * d + k];
        log_det += std::log(std::abs(piv));
        for (std::int64_t r = k + 1; r < d; ++r) {
            const double m = J[r * d + k] / piv;
            if (m == 0.0) continue;
            for (std::int64_t c = k; c < d; ++c) J[r * d + c] -= m * J[k * d + c];
        }
    }
    return log_det;
}

}  // namespace flowlab
