// The training loop's thread governor: it keeps every thread while they are faster, falls back
// to one when one is measured faster (a busy machine), returns when the machine is idle again,
// and backs off its probes while nothing changes.
#include <catch2/catch.hpp>

#include <algorithm>
#include <functional>

#include "train/thread_governor.hpp"

using flowlab::ThreadGovernor;

namespace {

// Runs `steps` steps, the time of each step given by the machine model for the thread count
// the governor asks for; returns the thread counts used.
std::vector<int> drive(ThreadGovernor& g, int steps, const std::function<double(int)>& step_time) {
    std::vector<int> used;
    for (int i = 0; i < steps; ++i) {
        const int t = g.threads();
        used.push_back(t);
        g.record(step_time(t));
    }
    return used;
}

ThreadGovernor::Options quick() {
    ThreadGovernor::Options o;
    o.window = 4;
    o.window_seconds = 0.0;
    o.first_probe = 10;
    o.max_interval = 80;
    return o;
}

}  // namespace

TEST_CASE("the governor keeps all threads while they are faster", "[train][threads]") {
    ThreadGovernor g(2, quick());
    const auto used = drive(g, 400, [](int t) { return t == 2 ? 1.0 : 1.6; });
    CHECK(g.current() == 2);
    CHECK(g.switches() == 0);
    CHECK(g.probes() > 0);
    // Probes back off: after the first few, one thread is tried rarely.
    const auto ones = std::count(used.begin(), used.end(), 1);
    CHECK(ones < 400 / 8);
}

TEST_CASE("the governor falls back to one thread on a busy machine and returns when it is idle", "[train][threads]") {
    ThreadGovernor g(2, quick());
    bool busy = true;
    auto machine = [&](int t) { return busy ? (t == 2 ? 2.0 : 1.0) : (t == 2 ? 1.0 : 1.6); };
    drive(g, 60, machine);
    CHECK(g.current() == 1);
    CHECK(g.switches() == 1);
    busy = false;
    drive(g, 200, machine);
    CHECK(g.current() == 2);
    CHECK(g.switches() == 2);
}

TEST_CASE("the governor ignores differences within its margin and the settling step", "[train][threads]") {
    ThreadGovernor g(2, quick());
    int n = 0;
    // One thread is 2% faster, and the first step after every switch is very slow.
    int last = 2;
    drive(g, 300, [&](int t) {
        const bool settling = t != last;
        last = t;
        ++n;
        return (settling ? 50.0 : 1.0) * (t == 1 ? 0.98 : 1.0);
    });
    CHECK(g.current() == 2);
    CHECK(g.switches() == 0);
}

TEST_CASE("the governor counts the steps stalled behind a preempted thread", "[train][threads]") {
    // Beside a busy process: on 2 threads most steps are fast but every fourth waits for a
    // preempted thread (median 1.0, mean 1.5); 1 thread takes 1.2 every step. Throughput is the
    // mean, so one thread is the faster setting though its median is higher.
    ThreadGovernor g(2, quick());
    int n = 0;
    drive(g, 200, [&](int t) { return t == 2 ? (++n % 4 == 0 ? 3.0 : 1.0) : 1.2; });
    CHECK(g.current() == 1);
}

TEST_CASE("short steps are measured over longer windows", "[train][threads]") {
    ThreadGovernor::Options o = quick();
    o.window_seconds = 0.05;  // 1 ms steps: windows of about 50 steps
    ThreadGovernor g(2, o);
    const auto used = drive(g, 400, [](int t) { return t == 2 ? 0.001 : 0.0009; });
    CHECK(g.current() == 1);  // 10% faster on one thread, seen through the longer window
    // The probe ran on one thread for a whole window, not for 4 steps.
    const auto first_one = std::find(used.begin(), used.end(), 1) - used.begin();
    CHECK(std::count(used.begin() + first_one, used.begin() + first_one + 40, 1) == 40);
}

TEST_CASE("waiting for a CPU brings the probe forward", "[train][threads]") {
    ThreadGovernor::Options o = quick();
    o.first_probe = 1000;  // no scheduled probe within the test
    ThreadGovernor idle(2, o), busy(2, o);
    for (int i = 0; i < 100; ++i) {
        idle.record(1.0, 0.0);
        busy.record(1.0, 0.5);  // half of each step spent waiting for a CPU
    }
    CHECK(idle.probes() == 0);
    CHECK(busy.probes() >= 1);
    // Under lasting contention where all threads stay faster, probes back off.
    ThreadGovernor steady(2, o);
    for (int i = 0; i < 2000; ++i) {
        const int t = steady.threads();
        steady.record(t == 2 ? 1.0 : 1.5, 0.5);
    }
    CHECK(steady.current() == 2);
    CHECK(steady.probes() < 40);
}

TEST_CASE("on one thread, waiting for a CPU does not bring a probe of more threads forward", "[train][threads]") {
    ThreadGovernor::Options o = quick();
    o.first_probe = 1000;  // no scheduled probe within the test
    ThreadGovernor g(2, o);
    // A busy machine: 2 threads slower, and every step waits for a CPU. Contention brings the
    // probe of one thread forward, and the governor switches.
    for (int i = 0; i < 100 && g.current() == 2; ++i) {
        const int t = g.threads();
        g.record(t == 2 ? 2.0 : 1.0, 0.5);
    }
    REQUIRE(g.current() == 1);
    const auto probes = g.probes();
    // Still waiting on one thread: no early probe of two; the scheduled one comes later.
    for (int i = 0; i < 500; ++i) {
        const int t = g.threads();
        CHECK(t == 1);
        g.record(1.0, 0.5);
    }
    CHECK(g.probes() == probes);
}

TEST_CASE("under contention the probe of one thread waits out its slow first steps", "[train][threads]") {
    // Beside a busy process: 2 threads stall every fourth step behind a preempted thread (mean
    // 1.5) and wait for a CPU; one thread runs 1.2 a step, but its first 4 steps after a
    // switch take 3.0 (the thread still shares a CPU until the kernel moves it). A probe of 4
    // steps after one settling step saw mostly those and kept two threads.
    ThreadGovernor::Options o = quick();
    o.first_probe = 1000;
    ThreadGovernor g(2, o);
    int n = 0, since_switch = 0, last = 2;
    for (int i = 0; i < 300; ++i) {
        const int t = g.threads();
        since_switch = t == last ? since_switch + 1 : 0;
        last = t;
        const double step = t == 2 ? (++n % 4 == 0 ? 3.0 : 1.0) : (since_switch < 4 ? 3.0 : 1.2);
        g.record(step, t == 2 ? 0.5 * step : 0.0);
    }
    CHECK(g.current() == 1);
}

TEST_CASE("one thread, or the governor off, never probes", "[train][threads]") {
    ThreadGovernor g(1, quick());
    const auto used = drive(g, 100, [](int) { return 1.0; });
    CHECK(std::count(used.begin(), used.end(), 1) == 100);
    CHECK(g.probes() == 0);
}

TEST_CASE("on one thread chosen on an idle machine, probes of more threads keep their first interval",
          "[train][threads]") {
    // Two threads lose while the CPUs sit apart (no waiting for a CPU: nothing else runs), then
    // win again from some moment on: the governor must notice within a probe interval, however
    // long the spell lasted.
    ThreadGovernor g(2, quick());
    bool apart = true;
    auto machine = [&](int t) { return apart ? (t == 2 ? 1.3 : 1.0) : (t == 2 ? 0.6 : 1.0); };
    drive(g, 400, machine);
    CHECK(g.current() == 1);
    const auto probes = g.probes();
    CHECK(probes > 400 / 20);  // every ~first_probe steps, not backing off to max_interval
    apart = false;
    drive(g, 2 * 10 + 3 * 4, machine);  // two first intervals and a few windows
    CHECK(g.current() == 2);
}

TEST_CASE("after fleeing contention, probes of more threads still back off", "[train][threads]") {
    ThreadGovernor g(2, quick());
    // Beside a busy process: two threads slower and their steps waiting for a CPU.
    for (int i = 0; i < 400; ++i) {
        const int t = g.threads();
        g.record(t == 2 ? 2.0 : 1.0, t == 2 ? 0.5 : 0.0);
    }
    CHECK(g.current() == 1);
    CHECK(g.probes() < 400 / 20);
}
