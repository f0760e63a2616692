// flowlab bench CONFIG: training throughput, warm-up steps then timed windows, as one JSON line.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

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
    std::vector<std::chrono::steady_clock::time_point> marks;
    TrainOptions opt;
    opt.quiet = true;
    opt.final_eval = false;
    opt.steps_override = warmup + timed * repeats;
    OpProfile prof;
    const bool profile = a.flag("profile");
    opt.on_step = [&](std::int64_t done) {
        if (done >= warmup && (done - warmup) % timed == 0) marks.push_back(std::chrono::steady_clock::now());
        if (profile && done == warmup) set_op_profile(&prof);
    };
    if (warmup == 0) {
        marks.push_back(std::chrono::steady_clock::now());
        if (profile) set_op_profile(&prof);
    }
    const int replicas = replicas_of(s.config(), false);
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
    for (std::size_t i = 1; i < marks.size(); ++i)
        rates.push_back(static_cast<double>(timed) * batch / std::chrono::duration<double>(marks[i] - marks[i - 1]).count());
    if (profile && marks.size() > 1)
        print_profile(prof, std::chrono::duration<double>(marks.back() - marks.front()).count(), timed * repeats);
    std::vector<double> sorted = rates;
    std::sort(sorted.begin(), sorted.end());
    const double median = sorted.empty() ? 0.0 : sorted[sorted.size() / 2];
    std::printf("{\"system\": \"flowlab\", \"config\": \"%s\", \"threads\": %d, \"replicas\": %d, \"batch\": %.0f, "
                "\"warmup\": %ld, \"timed\": %ld, \"repeats\": %ld, \"samples_per_s\": %.1f, \"step_ms\": %.3f, \"windows\": [",
                a.positional()[0].c_str(), num_threads() * replicas, replicas, batch, warmup, timed, repeats, median,
                median > 0 ? 1e3 * batch / median : 0.0);
    for (std::size_t i = 0; i < rates.size(); ++i) std::printf("%s%.1f", i ? ", " : "", rates[i]);
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
