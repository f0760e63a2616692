#include "train/thread_governor.hpp"

#include <algorithm>

namespace flowlab {

ThreadGovernor::ThreadGovernor(int max_threads) : ThreadGovernor(max_threads, Options{}) {}

ThreadGovernor::ThreadGovernor(int max_threads, Options opt)
    : max_(std::max(1, max_threads)), opt_(opt), current_(max_), until_probe_(opt.first_probe),
      interval_(opt.first_probe) {}

double ThreadGovernor::median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

bool ThreadGovernor::record(double seconds) {
    if (max_ <= 1) return false;
    const auto window = static_cast<std::size_t>(std::max(1, opt_.window));
    if (!probing_) {
        recent_.push_back(seconds);
        if (recent_.size() > window) recent_.erase(recent_.begin());
        if (--until_probe_ > 0 || recent_.size() < window) return false;
        probing_ = true;
        probe_.clear();
        probe_seen_ = 0;
        ++probes_;
        return true;
    }
    // The first step after a switch pays for waking (or idling) the pool: not counted.
    if (probe_seen_++ > 0) probe_.push_back(seconds);
    if (probe_.size() < window) return false;
    probing_ = false;
    const double mine = median(recent_), theirs = median(probe_);
    if (theirs < (1.0 - opt_.margin) * mine) {
        current_ = other();
        ++switches_;
        interval_ = opt_.first_probe;  // the machine changed: look again soon
        recent_ = probe_;
        until_probe_ = interval_;
        return false;  // the probe's setting is now the current one
    }
    interval_ = std::min(opt_.max_interval, 2 * interval_);
    until_probe_ = interval_;
    recent_.clear();
    return true;
}

}  // namespace flowlab
