// flowlab run CONFIG | run --resume RUN_DIR: train, evaluate, and write the run directory.
// Under mpirun every rank runs this together: data-parallel training (docs/DISTRIBUTED.md),
// rank 0 writing the run directory and speaking for the job.
#include <cmath>
#include <cstdio>
#include <filesystem>

#include <unistd.h>

#include "../command.hpp"
#include "../distributed.hpp"
#include "../output.hpp"
#include "../replicas.hpp"
#include "../session.hpp"
#include "flowlab/architecture.hpp"
#include "flowlab/run_dir.hpp"
#include "flowlab/stop_signals.hpp"

namespace flowlab::cli {
namespace {

volatile int g_stop = 0;  // set by the stop-signal thread

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
    // After a resume the time covers this call's steps only: say so, or a 12,000-step run would
    // read as trained in the minutes of its last stretch.
    if (s.start_step > 0)
        std::printf("%s: %lld steps, %lld of them (from step %lld) in this call: %.1f s (%.0f samples/s)\n",
                    name.c_str(), static_cast<long long>(s.steps), static_cast<long long>(s.steps - s.start_step),
                    static_cast<long long>(s.start_step), s.train_seconds, s.samples_per_s);
    else
        std::printf("%s: %lld steps in %.1f s (%.0f samples/s)\n", name.c_str(), static_cast<long long>(s.steps),
                    s.train_seconds, s.samples_per_s);
    if (s.start_step > 0 && std::isfinite(s.total_train_seconds)) {
        std::printf("  training steps over the whole run: %.1f s", s.total_train_seconds);
        if (s.total_train_seconds >= 3600.0) std::printf(" (%.2f h)", s.total_train_seconds / 3600.0);
        std::printf("\n");
    }
    std::printf("  train loss %.4f nats\n", s.final_train_loss);
    if (std::isfinite(s.test_nll))
        std::printf("  test NLL   %.4f nats (%.4f bits/dim)\n", s.test_nll, s.test_bpd);
    else if (exp.data.test.size() == 0)
        std::printf("  test NLL   n/a (the test split is empty)\n");
    else
        std::printf("  test NLL   not finite (the model gives some test data no density; see metrics.jsonl)\n");
    if (s.ranks > 1)
        std::printf("  %d %s: a gradient reduction in flight %.2f ms per step, %.2f ms of it not hidden by the "
                    "backward pass (%d bucket%s)\n",
                    s.ranks, exp.config.get_object("train").get_int("replicas") > 1 ? "replicas" : "ranks",
                    s.comm_seconds_per_step * 1e3, s.comm_wait_seconds_per_step * 1e3, s.gradient_buckets,
                    s.gradient_buckets == 1 ? "" : "s");
    std::printf("  run directory: %s (report.html)\n", run_dir.c_str());
}

int run(const Args& a) {
    const bool resume = a.flag("resume");
    const long stop_after = a.integer("stop-after", -1, 0, "a non-negative integer");
    if (a.positional().size() != 1) throw UsageError(resume ? "run --resume takes one RUN_DIR" : "run takes one CONFIG");
    const std::string& target = a.positional()[0];
    Communicator& comm = communicator();
    const bool root = comm.rank() == 0, dp = comm.size() > 1;
    SessionOptions so = session_options(a);
    const bool quiet = so.quiet;
    so.quiet = quiet || !root;
    // Every rank loads the config, its plugins and the data (a config error is then every
    // rank's, and printed once).
    Session s = resume ? Session::from_run(target, so) : Session::from_config(target, so);
    const Params& cfg = s.config();
    const std::string name = cfg.get_string("name");
    const std::string run_dir = resume ? target : (a.text("output").empty() ? cfg.get_string("output") : a.text("output"));
    Experiment& exp = s.experiment();
    configure_distributed(cfg);
    const int replicas = replicas_of(cfg, dp);
    // Nothing to do, and no file is touched. Rank 0 decides for every rank.
    std::uint8_t finished = root && resume && run_finished(exp, run_dir) ? 1 : 0;
    comm.broadcast(&finished, 1, 0);
    if (finished) {
        if (root) std::printf("%s: already finished (%s/summary.json); nothing to resume\n", name.c_str(), run_dir.c_str());
        return kOk;
    }
    if (root) {
        std::filesystem::create_directories(run_dir);
        // The resolved config: every default filled in, where each plugin came from, the ranks.
        write_run_config(run_dir, cfg, s.plugins(), model_input_of(exp.data), comm.size());
        // The flow's picture; without Graphviz only the DOT file, which the report points to. A
        // dot that fails is worth a line; a missing Graphviz is the report's to say.
        const ArchitectureFiles arch = write_run_architecture(run_dir, cfg, *exp.flow);
        if (!arch.note.empty() && arch.graphviz)
            std::fprintf(stderr, "flowlab: architecture.svg not rendered: %s; architecture.dot is in %s\n",
                         arch.note.c_str(), run_dir.c_str());
        if (!quiet)
            std::fprintf(stderr, "flowlab: %s - %lld parameters, %lld training examples%s, run directory %s\n",
                         name.c_str(), static_cast<long long>(exp.flow->num_parameters()),
                         static_cast<long long>(exp.data.train.size()),
                         dp ? (", " + std::to_string(comm.size()) + " ranks").c_str()
                            : replicas > 1 ? (", " + std::to_string(replicas) + " replicas").c_str()
                                           : "",
                         run_dir.c_str());
    }
    TrainOptions opt;
    opt.run_dir = run_dir;
    opt.quiet = so.quiet;
    opt.progress_line = root && ::isatty(2) != 0;
    opt.resume = resume;
    opt.stop_after = stop_after;
    opt.stop_flag = &g_stop;
    if (dp) {
        opt.comm = &comm;
        comm.set_stop_flag(&g_stop);
        comm.set_fault_hint("the newest checkpoint in " + run_dir + "/checkpoints is intact: continue with flowlab run --resume " +
                            run_dir);
    }
    // What every rank or replica does: train, then, unless stopped, its share of the samples
    // (rank 0 writing the summary first).
    auto work = [&](Experiment& e, Communicator* c) {
        const bool r0 = !c || c->rank() == 0;
        TrainOptions o = opt;
        o.comm = c;
        o.quiet = opt.quiet || !r0;
        o.progress_line = opt.progress_line && r0;
        const TrainSummary sum = train(e, o);
        if (!sum.interrupted) {
            if (r0) write_run_summary(run_dir, name, sum);
            write_artifacts(e, run_dir, c && c->size() > 1 ? c : nullptr);
        }
        return sum;
    };
    // SIGINT/SIGTERM stop training after the current step (routed to a thread of their own by
    // main: stop_signals.hpp says why no handler may interrupt the computation).
    TrainSummary summary;
    {
        StopSignalScope stop_signals(&g_stop);
        summary = replicas > 1 ? run_replicas(s, replicas, [&](Experiment& e, Communicator& c) { return work(e, &c); })
                               : work(exp, opt.comm);
    }
    if (summary.interrupted) {
        if (root)
            std::printf("%s: stopped at step %lld of %lld; checkpoint written. Continue with: flowlab run --resume %s\n",
                        name.c_str(), static_cast<long long>(summary.steps),
                        static_cast<long long>(cfg.get_object("train").get_int("steps")), run_dir.c_str());
        // With several ranks the stop was agreed: g_stop may be set on one rank only.
        return (dp || replicas > 1 ? stop_after < 0 || summary.steps - summary.start_step < stop_after : g_stop != 0) ? kInterrupted
                                                                                                     : kOk;
    }
    if (root) print_summary(exp, summary, run_dir);
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
    "with exit code 8 and names it (train.check_layers: false turns the check off). Under mpirun -np N the N\n"
    "ranks train one model data-parallel, train.batch_size being the global batch, and so do the threads of\n"
    "one process with train.replicas=N (docs/DISTRIBUTED.md).",
    declare,
    run,
};

}  // namespace flowlab::cli
