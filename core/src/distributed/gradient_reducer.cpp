#include "distributed/gradient_reducer.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>

#include "flowlab/errors.hpp"

namespace flowlab::distributed {

GradientReducer::GradientReducer(Communicator& comm, std::vector<Var> params, std::size_t bucket_bytes, bool overlap)
    : comm_(comm), params_(std::move(params)), overlap_(overlap) {
    bucket_floats_ = std::max<std::size_t>(1, bucket_bytes / sizeof(float));
    std::vector<std::size_t> order;
    for (std::size_t k = params_.size(); k-- > 0;) {
        index_[params_[k].node().get()] = k;
        if (params_[k].dtype() == DType::f32)
            order.push_back(k);
        else
            f64_params_.push_back(k);
    }
    layout(order);
    reported_.assign(params_.size(), 0);
}

void GradientReducer::layout(const std::vector<std::size_t>& order) {
    buckets_.clear();
    bucket_of_.assign(params_.size(), SIZE_MAX);
    Bucket cur;
    std::size_t used = 0;
    for (std::size_t k : order) {
        const auto n = static_cast<std::size_t>(params_[k].value().numel());
        if (!cur.params.empty() && used + n > bucket_floats_) {
            cur.floats = used;
            buckets_.push_back(std::move(cur));
            cur = Bucket{};
            used = 0;
        }
        bucket_of_[k] = buckets_.size();
        cur.params.push_back(k);
        cur.offsets.push_back(used);
        used += n;
    }
    if (!cur.params.empty()) {
        cur.floats = used;
        buckets_.push_back(std::move(cur));
    }
}

void GradientReducer::begin() {
    for (auto& b : buckets_) {
        b.ready = 0;
        b.started = false;
    }
    std::fill(reported_.begin(), reported_.end(), 0);
    completed_.clear();
    next_ = 0;
}

void GradientReducer::on_ready(const Node& leaf) {
    auto it = index_.find(&leaf);
    if (it == index_.end()) return;
    if (!reported_[it->second]) completed_.push_back(it->second);
    mark(it->second);
    if (overlap_) start_ready_buckets();
}

void GradientReducer::mark(std::size_t k) {
    if (reported_[k]) return;
    reported_[k] = 1;
    if (bucket_of_[k] != SIZE_MAX) ++buckets_[bucket_of_[k]].ready;
}

// Copies a complete bucket's gradients in (zeros for a parameter without one) and starts its
// sum; in index order only.
void GradientReducer::start_ready_buckets() {
    while (next_ < buckets_.size() && buckets_[next_].ready == buckets_[next_].params.size()) {
        Bucket& b = buckets_[next_];
        b.in_place = b.params.size() == 1 && params_[b.params[0]].grad().defined();
        b.storage.clear();
        for (std::size_t k : b.params)
            b.storage.push_back(params_[k].grad().defined() ? params_[k].grad().raw() : nullptr);
        if (b.in_place) {
            Tensor& g = params_[b.params[0]].mutable_grad();
            b.held = g;
            b.ticket = comm_.start_allreduce_sum(g.data<float>(), static_cast<std::size_t>(g.numel()));
            b.started = true;
            ++next_;
            continue;
        }
        b.buf.resize(b.floats);
        for (std::size_t i = 0; i < b.params.size(); ++i) {
            const Var& p = params_[b.params[i]];
            float* dst = b.buf.data() + b.offsets[i];
            const auto n = static_cast<std::size_t>(p.value().numel());
            if (p.grad().defined())
                std::memcpy(dst, p.grad().data<float>(), n * sizeof(float));
            else
                std::memset(dst, 0, n * sizeof(float));
        }
        b.ticket = comm_.start_allreduce_sum(b.buf.data(), b.buf.size());
        b.started = true;
        ++next_;
    }
}

void GradientReducer::finish(std::vector<double>& control) {
    for (std::size_t k = 0; k < params_.size(); ++k) mark(k);
    start_ready_buckets();
    // The control vector: the caller's values, one "had a gradient" count per parameter, then
    // the gradients of f64 parameters (rare: checks in double precision).
    const std::size_t head = control.size();
    control.resize(head + params_.size());
    for (std::size_t k = 0; k < params_.size(); ++k) control[head + k] = params_[k].grad().defined() ? 1.0 : 0.0;
    for (std::size_t k : f64_params_) {
        const Var& p = params_[k];
        const auto n = static_cast<std::size_t>(p.value().numel());
        const std::size_t at = control.size();
        control.resize(at + n, 0.0);
        if (p.grad().defined()) std::memcpy(control.data() + at, p.grad().data<double>(), n * sizeof(double));
    }
    const auto t0 = std::chrono::steady_clock::now();
    // Started after the buckets, so it completes after them: one wait covers everything.
    comm_.allreduce_sum(control.data(), control.size());
    for (const auto& b : buckets_) comm_.wait(b.ticket);
    for (auto& b : buckets_) {
        for (std::size_t i = 0; i < b.params.size(); ++i) {
            const Tensor& g = params_[b.params[i]].grad();
            if ((g.defined() ? g.raw() : nullptr) != b.storage[i])
                throw Error("data-parallel gradient sums: the gradient of parameter " + std::to_string(b.params[i]) +
                            " changed after the backward pass reported it complete (a bug in flowlab's autodiff or "
                            "in a layer's backward rule; please report it with the config)");
        }
        b.held = Tensor();  // after the comparison: the storage cannot have been reused meanwhile
    }
    last_wait_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Write the sums back, each into a gradient tensor of its own.
    for (const auto& b : buckets_)
        for (std::size_t i = 0; i < b.params.size() && !b.in_place; ++i) {
            Var p = params_[b.params[i]];
            if (control[head + b.params[i]] == 0.0) continue;  // no rank had a gradient
            Tensor g = Tensor::empty(p.shape(), DType::f32);
            std::memcpy(g.data<float>(), b.buf.data() + b.offsets[i], static_cast<std::size_t>(g.numel()) * sizeof(float));
            p.mutable_grad() = std::move(g);
        }
    std::size_t at = head + params_.size();
    for (std::size_t k : f64_params_) {
        Var p = params_[k];
        const auto n = static_cast<std::size_t>(p.value().numel());
        if (control[head + k] != 0.0) {
            Tensor g = Tensor::empty(p.shape(), DType::f64);
            std::memcpy(g.data<double>(), control.data() + at, n * sizeof(double));
            p.mutable_grad() = std::move(g);
        }
        at += n;
    }
    control.resize(head);
    if (relaid_) return;
    // Once: the buckets in the order this pass completed the parameters, rank 0's for all.
    relaid_ = true;
    std::vector<std::uint64_t> order;
    std::vector<char> listed(params_.size(), 0);
    for (std::size_t k : completed_)
        if (params_[k].dtype() == DType::f32) order.push_back(k), listed[k] = 1;
    for (std::size_t k = params_.size(); k-- > 0;)
        if (!listed[k] && params_[k].dtype() == DType::f32) order.push_back(k);
    comm_.broadcast(order.data(), order.size() * sizeof(std::uint64_t), 0);
    layout(std::vector<std::size_t>(order.begin(), order.end()));
}

}  // namespace flowlab::distributed
