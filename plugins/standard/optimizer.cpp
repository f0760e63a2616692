// Optimizers `adam` and `sgd`, with PyTorch's update formulas (torch.optim.Adam and SGD,
// weight decay as an L2 term added to the gradient). Each parameter tensor is updated in one
// fused pass; parameters without a gradient this step are left alone. The state tensors are
// allocated once, so state() hands out stable handles that a checkpoint can fill in place.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <flowlab/optimizer.hpp>
#include <flowlab/parallel.hpp>

#include "standard.hpp"

namespace flowlab::standard {
namespace {

std::vector<Tensor> zeros_like_params(const std::vector<NamedVar>& params) {
    std::vector<Tensor> out;
    out.reserve(params.size());
    for (const auto& p : params) out.push_back(Tensor::zeros(p.var.shape(), p.var.dtype()));
    return out;
}

class Adam final : public Optimizer {
public:
    Adam(std::vector<NamedVar> params, double beta1, double beta2, double eps, double weight_decay)
        : Optimizer(std::move(params)), b1_(beta1), b2_(beta2), eps_(eps), wd_(weight_decay),
          m_(zeros_like_params(this->params())), v_(zeros_like_params(this->params())) {}

    std::vector<NamedTensor> state() override {
        std::vector<NamedTensor> s;
        for (std::size_t i = 0; i < params().size(); ++i) {
            s.push_back({params()[i].name + ".exp_avg", m_[i]});
            s.push_back({params()[i].name + ".exp_avg_sq", v_[i]});
        }
        return s;
    }

protected:
    bool applies_grad_scale() const override { return true; }

    void do_step(double lr) override {
        // Optimizer::step counts the step after do_step returns, so this is step t (1-based).
        const double t = static_cast<double>(steps_taken() + 1);
        const double step_size = lr / (1.0 - std::pow(b1_, t));
        const double bc2_sqrt = std::sqrt(1.0 - std::pow(b2_, t));
        std::vector<std::int64_t> sizes(params().size(), 0);
        for (std::size_t i = 0; i < params().size(); ++i) {
            const Var& var = params()[i].var;
            if (!var.grad().defined()) continue;
            check_same_shape(var.value(), var.grad(), "adam: parameter and gradient");
            sizes[i] = var.value().numel();
        }
        // All parameters in one parallel loop (PyTorch's "foreach" idea): W1's 48 tensors are
        // each too small to split, but together they fill both cores.
        parallel_for_parts(sizes, kElementwiseGrain / 4, [&](std::size_t i, std::int64_t i0, std::int64_t i1) {
            Var var = params()[i].var;
            Tensor& p = var.mutable_value();
            const Tensor& g = var.grad();
            dispatch(p.dtype(), [&](auto tag) {
                using T = decltype(tag);
                update<T>(p.data<T>() + i0, m_[i].data<T>() + i0, v_[i].data<T>() + i0, g.data<T>() + i0, i1 - i0,
                          static_cast<T>(step_size), static_cast<T>(bc2_sqrt), static_cast<T>(grad_scale()));
            });
        });
    }

private:
    // The distinct (restrict) pointers let the compiler vectorise the loop; the arithmetic is
    // the same per element, in the same order, as PyTorch's.
    template <class T>
    void update(T* __restrict pp, T* __restrict mp, T* __restrict vp, const T* __restrict gp, std::int64_t n, T ss,
                T bc, T gs) const {
        const T b1 = static_cast<T>(b1_), b2 = static_cast<T>(b2_), eps = static_cast<T>(eps_);
        const T a1 = static_cast<T>(1.0 - b1_), a2 = static_cast<T>(1.0 - b2_), wd = static_cast<T>(wd_);
        if (wd_ != 0.0) {
#pragma omp simd
            for (std::int64_t j = 0; j < n; ++j) {
                const T gj = gp[j] * gs + wd * pp[j];
                const T m = mp[j] * b1 + a1 * gj;
                const T v = vp[j] * b2 + a2 * gj * gj;
                mp[j] = m;
                vp[j] = v;
                pp[j] -= ss * (m / (std::sqrt(v) / bc + eps));
            }
        } else {
#pragma omp simd
            for (std::int64_t j = 0; j < n; ++j) {
                const T gj = gp[j] * gs;
                const T m = mp[j] * b1 + a1 * gj;
                const T v = vp[j] * b2 + a2 * gj * gj;
                mp[j] = m;
                vp[j] = v;
                pp[j] -= ss * (m / (std::sqrt(v) / bc + eps));
            }
        }
    }

    double b1_, b2_, eps_, wd_;
    std::vector<Tensor> m_, v_;
};

class Sgd final : public Optimizer {
public:
    Sgd(std::vector<NamedVar> params, double momentum, double weight_decay)
        : Optimizer(std::move(params)), momentum_(momentum), wd_(weight_decay) {
        if (momentum_ != 0.0) buf_ = zeros_like_params(this->params());
    }

    std::vector<NamedTensor> state() override {
        std::vector<NamedTensor> s;
        for (std::size_t i = 0; i < buf_.size(); ++i) s.push_back({params()[i].name + ".momentum_buffer", buf_[i]});
        return s;
    }

protected:
    // buf = momentum * buf + g (buf starts at 0, so the first step uses g, as PyTorch does);
    // p -= lr * buf.
    bool applies_grad_scale() const override { return true; }

    void do_step(double lr) override {
        for (std::size_t i = 0; i < params().size(); ++i) {
            Var var = params()[i].var;
            if (!var.grad().defined()) continue;
            Tensor& p = var.mutable_value();
            const Tensor& g = var.grad();
            check_same_shape(p, g, "sgd: parameter and gradient");
            dispatch(p.dtype(), [&](auto tag) {
                using T = decltype(tag);
                T* pp = p.data<T>();
                T* bp = buf_.empty() ? nullptr : buf_[i].data<T>();
                const T* gp = g.data<T>();
                const T mu = static_cast<T>(momentum_), wd = static_cast<T>(wd_), step = static_cast<T>(lr);
                const T gs = static_cast<T>(grad_scale());
                parallel_for(p.numel(), kElementwiseGrain, [&](std::int64_t i0, std::int64_t i1) {
                    for (std::int64_t j = i0; j < i1; ++j) {
                        T d = gp[j] * gs + wd * pp[j];
                        if (bp) d = bp[j] = mu * bp[j] + d;
                        pp[j] -= step * d;
                    }
                });
            });
        }
    }

private:
    double momentum_, wd_;
    std::vector<Tensor> buf_;
};

}  // namespace

void register_optimizers(Registry& reg) {
    reg.add_optimizer({"adam", "Adam (PyTorch's formula, L2 weight decay)",
                       {param_number("lr", 1e-3, "base learning rate (the schedule scales it)").min(0.0),
                        param_number("beta1", 0.9, "decay of the first-moment average").range(0.0, 0.999999),
                        param_number("beta2", 0.999, "decay of the second-moment average").range(0.0, 0.999999999),
                        param_number("eps", 1e-8, "added to the denominator").min(0.0),
                        param_number("weight_decay", 0.0, "L2 penalty added to the gradient").min(0.0)},
                       [](const Params& p, std::vector<NamedVar> params) -> std::unique_ptr<Optimizer> {
                           auto opt = std::make_unique<Adam>(std::move(params), p.get_number("beta1"),
                                                             p.get_number("beta2"), p.get_number("eps"),
                                                             p.get_number("weight_decay"));
                           opt->set_base_lr(p.get_number("lr"));
                           return opt;
                       }});
    reg.add_optimizer({"sgd", "stochastic gradient descent with optional momentum (PyTorch's formula)",
                       {param_number("lr", 1e-2, "base learning rate (the schedule scales it)").min(0.0),
                        param_number("momentum", 0.0, "momentum factor (0 = plain SGD)").range(0.0, 1.0),
                        param_number("weight_decay", 0.0, "L2 penalty added to the gradient").min(0.0)},
                       [](const Params& p, std::vector<NamedVar> params) -> std::unique_ptr<Optimizer> {
                           auto opt = std::make_unique<Sgd>(std::move(params), p.get_number("momentum"),
                                                            p.get_number("weight_decay"));
                           opt->set_base_lr(p.get_number("lr"));
                           return opt;
                       }});
}

}  // namespace flowlab::standard
