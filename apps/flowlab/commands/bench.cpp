// flowlab bench CONFIG: training throughput, warm-up steps then timed windows, as one JSON line.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>

#include "../command.hpp"
#include "../replicas.hpp"
#include "../session.hpp"
#include "flowlab/parallel.hpp"
#include "flowlab/profiler.hpp"
#include "flowlab/trainer.hpp"

namespace flowlab::cli {
namespace {

// The process's peak resident memory (the reference scripts report the same figure).
double peak_rss_mb() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_maxrss) / 1024.0;  // KiB on Linux
}

// How long a cache line takes to go from one core to another and back, in ns: two threads
// pinned to the first two CPUs this process may run on pass a counter back and forth, and the
// median over batches of round trips is the figure (0 when there are not two CPUs to pin to).
// On a virtual machine it tells where the host put the virtual CPUs at that moment: on the
// machine flowlab is benchmarked on, about 80 ns while the two shared a last-level cache and
// about 340 ns while they did not - and then two threads train W1 no faster than one, because
// the lines one core writes and the other reads cross between the caches (docs/PERFORMANCE.md).
// Takes a few milliseconds, at most about 50.
double core_round_trip_ns() {
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return 0.0;
    int cpu[2] = {-1, -1};
    for (int c = 0, found = 0; c < CPU_SETSIZE && found < 2; ++c)
        if (CPU_ISSET(c, &allowed)) cpu[found++] = c;
    if (cpu[1] < 0) return 0.0;
    constexpr long kStop = -1;
    constexpr int kBatches = 101, kTripsPerBatch = 50;
    struct alignas(64) Line {
        std::atomic<long> value{0};
    } ball;
    // Unpinned, the two could share a CPU and every trip would wait for a time slice.
    std::atomic<int> tried{0}, pinned{0};
    auto pin = [&](int c) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(c, &one);
        if (pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0) pinned.fetch_add(1);
        tried.fetch_add(1);
        while (tried.load() < 2) std::this_thread::yield();
        return pinned.load() == 2;
    };
    // The echo side answers every odd value with the next even one until told to stop.
    std::thread echo([&] {
        if (!pin(cpu[1])) return;
        for (long v = 0; v != kStop; v = ball.value.load(std::memory_order_acquire))
            if (v % 2 == 1) ball.value.store(v + 1, std::memory_order_release);
    });
    std::vector<double> batch_ns;
    if (pin(cpu[0])) {
        // This thread's own affinity is put back below.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
        for (long v = 1; static_cast<int>(batch_ns.size()) < kBatches && std::chrono::steady_clock::now() < deadline;) {
            const auto t0 = std::chrono::steady_clock::now();
            for (int i = 0; i < kTripsPerBatch; ++i, v += 2) {
                ball.value.store(v, std::memory_order_release);
                while (ball.value.load(std::memory_order_acquire) != v + 1) {}
            }
            batch_ns.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() /
                               kTripsPerBatch);
        }
        ball.value.store(kStop, std::memory_order_release);
    }
    echo.join();
    pthread_setaffinity_np(pthread_self(), sizeof allowed, &allowed);
    if (batch_ns.empty()) return 0.0;
    std::nth_element(batch_ns.begin(), batch_ns.begin() + static_cast<long>(batch_ns.size() / 2), batch_ns.end());
    return batch_ns[batch_ns.size() / 2];
}

void declare(po::options_description& o) {
    o.add_options()  //
        ("warmup", value_named("N"), "steps before timing (default 50)")  //
        ("timed", value_named("N"), "steps per timed window (default 500)")  //
        ("repeats", value_named("N"), "timed windows (default 3)")  //
        ("profile", po::bool_switch(), "also time every op (forward and backward) and the step's other phases "
                                       "over the timed steps, and print the table before the JSON line");
    add_set_option(o);
    add_plugin_options(o);
    add_quiet_option(o);
}

// The op table: per step, milliseconds forward and backward, by total; then the phases and
// what no op or phase accounts for (graph bookkeeping, the loop itself).
void print_profile(const OpProfile& prof, double wall_s, long steps) {
    struct Row {
        std::string name;
        double calls, fwd, bwd;
    };
    std::vector<Row> rows;
    double total = 0.0;
    const double per = 1e3 / static_cast<double>(steps);
    for (const auto& [name, t] : prof.ops) {
        rows.push_back({name, static_cast<double>(t.calls) / static_cast<double>(steps), t.forward_s * per,
                        t.backward_s * per});
        total += t.forward_s + t.backward_s;
    }
    for (const auto& [name, secs] : prof.phases) {
        rows.push_back({"[" + name + "]", 1.0, secs * per, 0.0});
        total += secs;
    }
    std::sort(rows.begin(), rows.end(), [](const Row& x, const Row& y) { return x.fwd + x.bwd > y.fwd + y.bwd; });
    const double step_ms = wall_s * per;
    std::printf("| op or phase | calls/step | forward ms/step | backward ms/step | share of the step |\n");
    std::printf("|---|---|---|---|---|\n");
    for (const Row& r : rows)
        std::printf("| %s | %.1f | %.3f | %.3f | %.1f%% |\n", r.name.c_str(), r.calls, r.fwd, r.bwd,
                    100.0 * (r.fwd + r.bwd) / step_ms);
    std::printf("| [unattributed: graph bookkeeping, loop] | | %.3f | | %.1f%% |\n", step_ms - total * per,
                100.0 * (step_ms - total * per) / step_ms);
    std::printf("| step | | %.3f | | 100%% |\n", step_ms);
}

int run(const Args& a) {
    const long warmup = a.integer("warmup", 50, 0, "a positive integer");
    const long timed = a.integer("timed", 500, 1, "a positive integer");
    const long repeats = a.integer("repeats", 3, 1, "a positive integer");
    if (a.positional().size() != 1) throw UsageError("bench takes one CONFIG");
    Session s = Session::from_config(a.positional()[0], session_options(a));
    const int replicas = replicas_of(s.config(), false);
    // At each window's edge: the time the previous window ended, the cores' round trip, the
    // time the next one starts. With replicas, the others finish the step they are in and then
    // wait for this one at the gradients' sum, asleep: a few of the probe's 50 ms at most.
    using Clock = std::chrono::steady_clock;
    std::vector<Clock::time_point> ends, starts;
    std::vector<double> round_trips;
    auto edge = [&] {
        ends.push_back(Clock::now());
        round_trips.push_back(core_round_trip_ns());
        starts.push_back(Clock::now());
    };
    TrainOptions opt;
    opt.quiet = true;
    opt.final_eval = false;
    opt.steps_override = warmup + timed * repeats;
    OpProfile prof;
    const bool profile = a.flag("profile");
    opt.on_step = [&](std::int64_t done) {
        if (done >= warmup && (done - warmup) % timed == 0) edge();
        if (profile && done == warmup) set_op_profile(&prof);
    };
    if (warmup == 0) {
        edge();
        if (profile) set_op_profile(&prof);
    }
    if (profile && replicas > 1)
        throw UsageError("--profile times the ops of one thread; run it with train.replicas=1");
    // Rank 0 keeps the time; with replicas, the others train beside it.
    const TrainSummary sum =
        replicas > 1 ? run_replicas(s, replicas,
                                    [&](Experiment& e, Communicator& c) {
                                        TrainOptions o = opt;
                                        o.comm = &c;
                                        if (c.rank() != 0) o.on_step = nullptr;
                                        return train(e, o);
                                    })
                     : train(s.experiment(), opt);
    set_op_profile(nullptr);
    const double batch = static_cast<double>(s.config().get_object("train").get_int("batch_size"));
    std::vector<double> rates;
    double timed_s = 0.0;
    for (std::size_t i = 1; i < ends.size(); ++i) {
        const double secs = std::chrono::duration<double>(ends[i] - starts[i - 1]).count();
        rates.push_back(static_cast<double>(timed) * batch / secs);
        timed_s += secs;
    }
    if (profile && !rates.empty()) print_profile(prof, timed_s, timed * repeats);
    std::vector<double> sorted = rates;
    std::sort(sorted.begin(), sorted.end());
    const double median = sorted.empty() ? 0.0 : sorted[sorted.size() / 2];
    std::printf("{\"system\": \"flowlab\", \"config\": \"%s\", \"threads\": %d, \"replicas\": %d, \"batch\": %.0f, "
                "\"warmup\": %ld, \"timed\": %ld, \"repeats\": %ld, \"samples_per_s\": %.1f, \"step_ms\": %.3f, \"windows\": [",
                a.positional()[0].c_str(), num_threads() * replicas, replicas, batch, warmup, timed, repeats, median,
                median > 0 ? 1e3 * batch / median : 0.0);
    for (std::size_t i = 0; i < rates.size(); ++i) std::printf("%s%.1f", i ? ", " : "", rates[i]);
    std::printf("], \"core_round_trip_ns\": [");
    for (std::size_t i = 0; i < round_trips.size(); ++i) std::printf("%s%.0f", i ? ", " : "", round_trips[i]);
    std::printf("], \"single_thread_share\": %.3f, \"thread_switches\": %d, \"peak_rss_mb\": %.1f}\n",
                sum.single_thread_share, sum.thread_switches, peak_rss_mb());
    return kOk;
}

}  // namespace

extern const Command kBenchCommand = {
    "bench",
    "training throughput: warm-up steps, then timed windows; one JSON line",
    "CONFIG [--warmup N] [--timed N] [--repeats N] [options]",
    "Trains the experiment's flow for --warmup steps, then --repeats windows of --timed steps each, and\n"
    "prints one JSON line with the median samples/s over the windows (apps/bench/ compares it with the\n"
    "PyTorch reference). Nothing is written.",
    declare,
    run,
};

}  // namespace flowlab::cli
