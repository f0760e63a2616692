// flowlab run CONFIG | run --resume RUN_DIR: train, evaluate, and write the run directory.
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>

#include <unistd.h>

#include "../command.hpp"
#include "../output.hpp"
#include "../session.hpp"
#include "flowlab/architecture.hpp"
#include "flowlab/run_dir.hpp"

namespace flowlab::cli {
namespace {

volatile int g_stop = 0;
void on_signal(int) { g_stop = 1; }

void declare(po::options_description& o) {
    o.add_options()  //
        ("resume", po::bool_switch(), "continue the run in RUN_DIR from its latest checkpoint, exactly where it stopped")  //
        ("output", value_named("DIR"), "run directory (default: the config's \"output\", or runs/<name>-<time>)")  //
        ("stop-after", value_named("N"), "stop, with a checkpoint, after N steps of this invocation");
    add_set_option(o);
    add_plugin_options(o);
    add_quiet_option(o);
}

void print_summary(const Experiment& exp, const TrainSummary& s, const std::string& run_dir) {
    const std::string name = exp.config.get_string("name");
    std::printf("%s: %lld steps in %.1f s (%.0f samples/s)\n", name.c_str(), static_cast<long long>(s.steps),
                s.train_seconds, s.samples_per_s);
    std::printf("  train loss %.4f nats\n", s.final_train_loss);
    if (std::isfinite(s.test_nll))
        std::printf("  test NLL   %.4f nats (%.4f bits/dim)\n", s.test_nll, s.test_bpd);
    else if (exp.data.test.size() == 0)
        std::printf("  test NLL   n/a (the test split is empty)\n");
    else
        std::printf("  test NLL   not finite (the model gives some test data no density; see metrics.jsonl)\n");
    std::printf("  run directory: %s (report.html)\n", run_dir.c_str());
}

int run(const Args& a) {
    const bool resume = a.flag("resume");
    const long stop_after = a.integer("stop-after", -1, 0, "a non-negative integer");
    if (a.positional().size() != 1) throw UsageError(resume ? "run --resume takes one RUN_DIR" : "run takes one CONFIG");
    const std::string& target = a.positional()[0];
    const SessionOptions so = session_options(a);
    Session s = resume ? Session::from_run(target, so) : Session::from_config(target, so);
    const Params& cfg = s.config();
    const std::string name = cfg.get_string("name");
    const std::string run_dir = resume ? target : (a.text("output").empty() ? cfg.get_string("output") : a.text("output"));
    Experiment& exp = s.experiment();
    if (resume && run_finished(exp, run_dir)) {  // nothing to do, and no file is touched
        std::printf("%s: already finished (%s/summary.json); nothing to resume\n", name.c_str(), run_dir.c_str());
        return kOk;
    }
    std::filesystem::create_directories(run_dir);
    // The resolved config: every default filled in, plus where each plugin came from.
    write_run_config(run_dir, cfg, s.plugins(), model_input_of(exp.data));
    // The flow's picture; without Graphviz only the DOT file, which the report points to. A dot
    // that fails is worth a line; a missing Graphviz is the report's to say, not every run's.
    const ArchitectureFiles arch = write_run_architecture(run_dir, cfg, *exp.flow);
    if (!arch.note.empty() && arch.graphviz)
        std::fprintf(stderr, "flowlab: architecture.svg not rendered: %s; architecture.dot is in %s\n",
                     arch.note.c_str(), run_dir.c_str());
    if (!so.quiet)
        std::fprintf(stderr, "flowlab: %s - %lld parameters, %lld training examples, run directory %s\n", name.c_str(),
                     static_cast<long long>(exp.flow->num_parameters()), static_cast<long long>(exp.data.train.size()),
                     run_dir.c_str());
    TrainOptions opt;
    opt.run_dir = run_dir;
    opt.quiet = so.quiet;
    opt.progress_line = ::isatty(2) != 0;
    opt.resume = resume;
    opt.stop_after = stop_after;
    opt.stop_flag = &g_stop;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    const TrainSummary summary = train(exp, opt);
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    if (summary.interrupted) {
        std::printf("%s: stopped at step %lld of %lld; checkpoint written. Continue with: flowlab run --resume %s\n",
                    name.c_str(), static_cast<long long>(summary.steps),
                    static_cast<long long>(cfg.get_object("train").get_int("steps")), run_dir.c_str());
        return g_stop ? kInterrupted : kOk;
    }
    write_run_summary(run_dir, name, summary);
    write_artifacts(exp, run_dir);
    print_summary(exp, summary, run_dir);
    return kOk;
}

}  // namespace

extern const Command kRunCommand = {
    "run",
    "train and evaluate an experiment (or --resume a run); write its run directory",
    "CONFIG [options]\n--resume RUN_DIR [options]",
    "Trains the flow an experiment file describes by maximum likelihood, evaluates it on the test split and\n"
    "writes the run directory: config.json (the resolved config and the plugins loaded), architecture.dot\n"
    "(the flow as a Graphviz graph; architecture.svg too when Graphviz is installed), metrics.jsonl and\n"
    "metrics.csv, checkpoints/, summary.json, samples and report.html. SIGINT/SIGTERM finish the current\n"
    "step, write a checkpoint and exit with code 10; --resume RUN_DIR then continues bitwise as if never\n"
    "stopped (same thread count). Before the first step and at every evaluation each layer is checked on\n"
    "the first training batch (forward(inverse(x)) = x, log-dets cancel); a layer that fails stops the run\n"
    "with exit code 8 and names it (train.check_layers: false turns the check off).",
    declare,
    run,
};

}  // namespace flowlab::cli
