// flowlab bench CONFIG: training throughput, warm-up steps then timed windows, as one JSON line.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include <sys/resource.h>

#include "../command.hpp"
#include "../session.hpp"
#include "flowlab/parallel.hpp"

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
        ("repeats", value_named("N"), "timed windows (default 3)");
    add_set_option(o);
    add_plugin_options(o);
    add_quiet_option(o);
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
    opt.on_step = [&](std::int64_t done) {
        if (done >= warmup && (done - warmup) % timed == 0) marks.push_back(std::chrono::steady_clock::now());
    };
    if (warmup == 0) marks.push_back(std::chrono::steady_clock::now());
    const TrainSummary sum = train(s.experiment(), opt);
    const double batch = static_cast<double>(s.config().get_object("train").get_int("batch_size"));
    std::vector<double> rates;
    for (std::size_t i = 1; i < marks.size(); ++i)
        rates.push_back(static_cast<double>(timed) * batch / std::chrono::duration<double>(marks[i] - marks[i - 1]).count());
    std::vector<double> sorted = rates;
    std::sort(sorted.begin(), sorted.end());
    const double median = sorted.empty() ? 0.0 : sorted[sorted.size() / 2];
    std::printf("{\"system\": \"flowlab\", \"config\": \"%s\", \"threads\": %d, \"batch\": %.0f, \"warmup\": %ld, "
                "\"timed\": %ld, \"repeats\": %ld, \"samples_per_s\": %.1f, \"step_ms\": %.3f, \"windows\": [",
                a.positional()[0].c_str(), num_threads(), batch, warmup, timed, repeats, median,
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
