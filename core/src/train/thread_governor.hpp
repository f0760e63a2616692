// The adaptive thread count of a training run. With more than one thread, a step is faster on
// an idle machine and can be slower on a busy one: another process holding a core makes every
// parallel section wait for a thread that is not running, and the serial parts run on a
// shared core. The governor measures instead of guessing: now and then it runs a few steps on
// the other setting (1 thread, or all of them) and keeps whichever has the lower mean step
// time (the first step after each switch left out). Probes are rare on an idle machine
// (backing off to thousands of steps apart), and a probe of one thread comes at once when the
// kernel reports the process's threads waiting for a CPU (their run delay), the sign that
// another process competes for the cores. Results do not depend on the thread count (GEMM tiles and reductions are fixed
// by the shapes), so a switch never changes a number, only the speed.
//
// Pure logic, fed with step times, so that its decisions are unit-tested without a clock.
#pragma once

#include <cstdint>
#include <vector>

namespace flowlab {

class ThreadGovernor {
public:
    struct Options {
        int window = 6;                   // steps measured per setting (after one settling step),
        double window_seconds = 0.05;     // and at least this long: short steps are noisy one by one
        std::int64_t first_probe = 300;   // steps before the first probe (probes cost < 2% of steps)
        std::int64_t max_interval = 4800; // probes back off (doubling) up to this many steps apart
        double margin = 0.03;             // switch only for a median this much lower
        double contention = 0.05;         // a step that waited this share of its time for a CPU is contended
    };
    // max_threads <= 1 disables the governor (it always answers max_threads).
    explicit ThreadGovernor(int max_threads);
    ThreadGovernor(int max_threads, Options opt);

    // The thread count to run the next step with.
    int threads() const { return probing_ ? other() : current_; }
    // Records the wall time of the step just run with threads(), and how long the training
    // thread waited for a CPU during it (0 when unknown); returns true when the setting for the
    // next step differs from the one just used.
    bool record(double seconds, double waited = 0.0);

    int current() const { return current_; }  // the setting chosen so far
    int switches() const { return switches_; }
    std::int64_t probes() const { return probes_; }

private:
    int other() const { return current_ == 1 ? max_ : 1; }
    static double median(std::vector<double> v);
    static double mean(const std::vector<double>& v);

    int max_;
    Options opt_;
    int current_;
    bool probing_ = false;
    bool settling_ = false;      // the next step is the first back on current_ after a probe
    bool long_probe_ = false;    // this probe (of one thread, under contention) runs 4 windows
    bool fled_ = false;          // on one thread because of contention (not an idle machine's measure)
    int probe_contended_ = 0;    // the probe's steps that waited for a CPU
    std::int64_t until_probe_;   // steps left before the next probe
    std::int64_t interval_;      // steps between probes now
    std::vector<double> recent_; // the current setting's last `window` step times
    std::vector<double> probe_;  // the probe's step times (the first, settling step dropped)
    int probe_seen_ = 0;
    std::size_t window_ = 0;     // steps per window now (from window and window_seconds)
    int contended_ = 0;          // contended steps among the last window's
    std::int64_t since_probe_ = 0, contention_gap_ = 0;
    int switches_ = 0;
    std::int64_t probes_ = 0;
};

}  // namespace flowlab
