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

double ThreadGovernor::mean(const std::vector<double>& v) {
    double s = 0.0;
    for (double x : v) s += x;
    return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

bool ThreadGovernor::record(double seconds, double waited) {
    if (max_ <= 1) return false;
    // Steps per window: at least opt_.window, and enough to span window_seconds at the speed
    // measured so far.
    if (!recent_.empty() && opt_.window_seconds > 0.0) {
        const double typical = median(recent_);
        if (typical > 0.0)
            window_ = std::max<std::size_t>(static_cast<std::size_t>(std::max(1, opt_.window)),
                                            std::min<std::size_t>(200, static_cast<std::size_t>(
                                                                           opt_.window_seconds / typical) + 1));
    }
    const std::size_t window = std::max<std::size_t>(window_, static_cast<std::size_t>(std::max(1, opt_.window)));
    if (!probing_) {
        // The first step back on this setting after a probe pays for the switch: not counted.
        if (settling_) {
            settling_ = false;
            return false;
        }
        recent_.push_back(seconds);
        // Under contention the kept window is longer: steps stalled behind a preempted thread
        // come a few in a hundred, and a short window misses them.
        const std::size_t keep = contended_ > 0 ? 4 * window : window;
        while (recent_.size() > keep) recent_.erase(recent_.begin());
        ++since_probe_;
        // Contention: most of a window's steps waited for a CPU. Probe fewer threads now,
        // unless a probe under contention kept the current setting recently (then wait twice as
        // long). On one thread it is no reason to try more: that is the scheduled probe's job
        // (beside a busy process, those early probes of two threads cost W1 1-3 %).
        contended_ = waited > opt_.contention * seconds ? contended_ + 1 : std::max(0, contended_ - 1);
        if (current_ > 1 && recent_.size() >= window && contended_ >= static_cast<int>(window / 2) &&
            since_probe_ >= std::max<std::int64_t>(contention_gap_, 2 * static_cast<std::int64_t>(window)))
            until_probe_ = std::min<std::int64_t>(until_probe_, 1);
        if (--until_probe_ > 0 || recent_.size() < window) return false;
        contention_gap_ = contended_ >= static_cast<int>(window / 2)
                              ? std::max<std::int64_t>(4 * static_cast<std::int64_t>(window), 2 * contention_gap_)
                              : 0;
        // A probe of one thread under contention runs longer and starts later: right after
        // the switch the remaining thread may still share a CPU with the other process until
        // the kernel moves it, and a short probe then judged one thread no faster.
        long_probe_ = current_ > 1 && contended_ >= static_cast<int>(window / 2);
        // Leaving more threads for one while steps waited for a CPU is fleeing contention.
        if (current_ > 1) fled_ = contended_ > 0;
        probe_contended_ = 0;
        probing_ = true;
        since_probe_ = 0;
        contended_ = 0;
        probe_.clear();
        probe_seen_ = 0;
        ++probes_;
        return true;
    }
    // The first step after a switch pays for waking (or idling) the pool: not counted.
    if (probe_seen_++ >= (long_probe_ ? static_cast<int>(window) : 1)) {
        probe_.push_back(seconds);
        if (waited > opt_.contention * seconds) ++probe_contended_;
    }
    if (probe_.size() < (long_probe_ ? 4 * window : window)) return false;
    probing_ = false;
    // Means, not medians: throughput is the mean step time, and on a busy machine the setting
    // with more threads loses in a tail of steps that waited for a preempted thread (W1 beside
    // one busy process: 2 threads' median below 1 thread's, their mean 9 % above it).
    const double mine = mean(recent_), theirs = mean(probe_);
    if (theirs < (1.0 - opt_.margin) * mine) {
        current_ = other();
        ++switches_;
        fled_ = current_ == 1 && (fled_ || long_probe_);
        // The machine changed: look again soon - later after fleeing contention, which
        // rarely ends within seconds, and whose probes of more threads cost a window each.
        interval_ = long_probe_ ? 4 * opt_.first_probe : opt_.first_probe;
        contention_gap_ = 0;
        recent_ = probe_;
        until_probe_ = interval_;
        return false;  // the probe's setting is now the current one
    }
    // Probes back off while nothing changes - except on one thread chosen on an idle machine:
    // there two threads lost to one because of where the host put the CPUs (on a virtual
    // machine, two CPUs apart hand data over slowly), which can change at any moment, unseen
    // from one thread's step times, while a probe of two threads costs little. W1 on the
    // machine of the benchmarks: runs that kept one thread for most of their steps after such a
    // spell had ended ran at 133k-135k samples/s instead of about 215k.
    // On one thread, the lost probe of more threads tells why they lost: their steps mostly
    // waited for a CPU (contention), or not.
    if (current_ == 1) fled_ = 2 * probe_contended_ >= static_cast<int>(probe_.size());
    interval_ = current_ == 1 && !fled_ ? opt_.first_probe : std::min(opt_.max_interval, 2 * interval_);
    until_probe_ = interval_;
    recent_.clear();
    settling_ = true;
    return true;
}

}  // namespace flowlab
