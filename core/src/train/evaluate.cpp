// Evaluation: the mean NLL and bits/dim of a split, importance-weighted under a stochastic
// dequantizer.
#include "flowlab/evaluate.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "flowlab/communicator.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/kernels.hpp"
#include "flowlab/rng.hpp"
#include "train/trainer_internal.hpp"

namespace flowlab {

using train_detail::kLn2;

namespace {

const DataSplit& split_of(const Dataset& d, const std::string& name) {
    if (name == "test") return d.test;
    if (name == "valid") return d.valid;
    if (name == "train") return d.train;
    throw ConfigError("unknown split '" + name + "'; expected test, valid or train");
}

// Several ranks: each takes its rows of every batch, inside a RowSlice so that it draws the
// noise one process draws for them, and records each example's two terms at the example's
// place; the sum over the ranks then holds every example's, added up in the one-process order.
EvalResult evaluate_sharded(Experiment& exp, const DataSplit& split, std::int64_t batch_size, int importance_samples,
                            Communicator& comm, EvalResult r) {
    NoGradGuard guard;
    exp.flow->set_training(false);
    Dequantizer* dq = exp.flow->dequantizer();
    const int k = (dq && dq->stochastic()) ? importance_samples : 1;
    Rng deq_rng(12345, 0);  // the one-process draw
    const std::int64_t dims = numel(exp.data.event_shape);
    std::vector<double> terms(static_cast<std::size_t>(2 * r.n), 0.0);  // per example: log p(x'), bound
    for (std::int64_t start = 0; start < r.n; start += batch_size) {
        const std::int64_t len = std::min(batch_size, r.n - start);
        const RowShare share = row_share(len, comm.rank(), comm.size());
        // A rank without rows in this batch has none in the later ones (only the last batch is
        // shorter), so its generator cannot fall behind one it still needs.
        if (share.rows == 0) continue;
        const std::int64_t first = start + share.offset;
        Tensor xb = split.x.rows(first, share.rows);
        Var ctx = split.context.defined() ? Var(split.context.rows(first, share.rows)) : Var();
        RowSlice slice(share.offset, share.rows, len);
        double* t = terms.data() + 2 * first;
        if (!dq) {
            const Tensor lp = exp.flow->log_prob(Var(xb), ctx).value();
            for (std::int64_t i = 0; i < share.rows; ++i) t[2 * i] = t[2 * i + 1] = lp.item(i);
            continue;
        }
        std::vector<std::vector<double>> draws(static_cast<std::size_t>(share.rows));
        for (int j = 0; j < k; ++j) {
            Dequantized d = dq->dequantize(xb, deq_rng, ctx);
            const Tensor lp = exp.flow->log_prob(d.x, ctx).value();
            const Tensor& lw = d.log_weight.value();
            for (std::int64_t i = 0; i < share.rows; ++i) {
                draws[static_cast<std::size_t>(i)].push_back(lp.item(i) + lw.item(i));
                if (j == 0) t[2 * i] = lp.item(i);
            }
        }
        for (std::int64_t i = 0; i < share.rows; ++i) {
            const auto& v = draws[static_cast<std::size_t>(i)];
            const double m = *std::max_element(v.begin(), v.end());
            double acc = 0.0;
            for (double e : v) acc += std::exp(e - m);
            t[2 * i + 1] = m + std::log(acc / static_cast<double>(v.size()));
        }
    }
    exp.flow->set_training(true);
    comm.allreduce_sum(terms.data(), terms.size());
    double sum_lp = 0.0, sum_bound = 0.0;
    for (std::int64_t i = 0; i < r.n; ++i) {
        sum_lp += terms[static_cast<std::size_t>(2 * i)];
        sum_bound += terms[static_cast<std::size_t>(2 * i + 1)];
    }
    r.nll = -sum_bound / static_cast<double>(r.n);
    r.dequantized_nll = -sum_lp / static_cast<double>(r.n);
    r.bpd = r.nll / (static_cast<double>(dims) * kLn2);
    return r;
}

}  // namespace

EvalResult evaluate(Experiment& exp, const std::string& split_name, std::int64_t batch_size, int importance_samples,
                    Communicator* comm) {
    const DataSplit& split = split_of(exp.data, split_name);
    EvalResult r;
    r.n = split.size();
    if (r.n == 0) {
        // No data, no estimate: NaN (null in JSON), never a plausible-looking 0.
        r.nll = r.bpd = r.dequantized_nll = std::numeric_limits<double>::quiet_NaN();
        return r;
    }
    if (comm && comm->size() > 1) return evaluate_sharded(exp, split, batch_size, importance_samples, *comm, r);
    NoGradGuard guard;
    exp.flow->set_training(false);
    Dequantizer* dq = exp.flow->dequantizer();
    const int k = (dq && dq->stochastic()) ? importance_samples : 1;
    Rng deq_rng(12345, 0);  // one fixed dequantisation draw, so evaluations are comparable
    const std::int64_t dims = numel(exp.data.event_shape);
    double sum_lp = 0.0, sum_bound = 0.0;
    for (std::int64_t start = 0; start < r.n; start += batch_size) {
        std::int64_t len = std::min(batch_size, r.n - start);
        Tensor xb = split.x.rows(start, len);
        Var ctx = split.context.defined() ? Var(split.context.rows(start, len)) : Var();
        if (!dq) {
            double s = kern::sum_all(exp.flow->log_prob(Var(xb), ctx).value());
            sum_lp += s;
            sum_bound += s;
            continue;
        }
        // log of the mean over k draws of exp(log p(x') + log_weight), per example.
        std::vector<std::vector<double>> terms(static_cast<std::size_t>(len));
        for (int j = 0; j < k; ++j) {
            Dequantized d = dq->dequantize(xb, deq_rng, ctx);
            Tensor lp = exp.flow->log_prob(d.x, ctx).value();
            const Tensor& lw = d.log_weight.value();
            for (std::int64_t i = 0; i < len; ++i) {
                terms[static_cast<std::size_t>(i)].push_back(lp.item(i) + lw.item(i));
                if (j == 0) sum_lp += lp.item(i);
            }
        }
        for (const auto& t : terms) {
            double m = *std::max_element(t.begin(), t.end());
            double acc = 0.0;
            for (double v : t) acc += std::exp(v - m);
            sum_bound += m + std::log(acc / static_cast<double>(t.size()));
        }
    }
    exp.flow->set_training(true);
    // nll and bpd are the same quantity (the discrete data's NLL bound, dequantization
    // included), so they agree with the training loss; dequantized_nll is -log p(x').
    r.nll = -sum_bound / static_cast<double>(r.n);
    r.dequantized_nll = -sum_lp / static_cast<double>(r.n);
    r.bpd = r.nll / (static_cast<double>(dims) * kLn2);
    return r;
}

}  // namespace flowlab
