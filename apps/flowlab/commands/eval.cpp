// flowlab eval RUN_DIR|CKPT: NLL and bits/dim of a trained model on one split, as one JSON line.
#include <cmath>
#include <cstdio>

#include "../command.hpp"
#include "../distributed.hpp"
#include "../session.hpp"
#include "flowlab/errors.hpp"

namespace flowlab::cli {
namespace {

void declare(po::options_description& o) {
    o.add_options()("split", value_named("NAME"), "the split to evaluate: test (default), valid or train");
    add_set_option(o);
    add_plugin_options(o);
    add_quiet_option(o);
}

// A figure of the JSON line: a non-finite one is null, so the line stays valid JSON.
std::string json_number(double v) {
    if (!std::isfinite(v)) return "null";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.6f", v);
    return buf;
}

int run(const Args& a) {
    if (a.positional().size() != 1) throw UsageError("eval takes one RUN_DIR or CHECKPOINT");
    const std::string split = a.text("split").empty() ? "test" : a.text("split");
    // Under mpirun every rank loads the model and takes its rows of every batch.
    Communicator& comm = communicator();
    SessionOptions so = session_options(a);
    so.quiet = so.quiet || comm.rank() != 0;
    Session s = Session::trained(a.positional()[0], so);
    const Params ev = s.config().get_object("eval");
    configure_distributed(s.config());
    set_command_threads(s.config());
    const EvalResult r = evaluate(s.experiment(), split, ev.get_int("batch_size"),
                                  static_cast<int>(ev.get_int("importance_samples")), &comm);
    if (r.n == 0) throw ConfigError("split '" + split + "' of this dataset is empty");
    if (comm.rank() == 0)
        std::printf("{\"split\": \"%s\", \"n\": %lld, \"nll\": %s, \"bits_per_dim\": %s}\n", split.c_str(),
                static_cast<long long>(r.n), json_number(r.nll).c_str(), json_number(r.bpd).c_str());
    if (!std::isfinite(r.nll))
        throw NumericError(a.positional()[0] + ": the " + split + " NLL is not finite (" + json_number(r.nll) +
                           "): the checkpoint's weights are not finite, or the model gives some data no density");
    return kOk;
}

}  // namespace

extern const Command kEvalCommand = {
    "eval",
    "NLL and bits/dim of a trained model on a split, as one JSON line",
    "RUN_DIR|CHECKPOINT [options]",
    "Loads a trained run (its newest checkpoint, or the checkpoint given; the parameter average when the\n"
    "run kept one) and prints {\"split\", \"n\", \"nll\", \"bits_per_dim\"}: the mean negative log-likelihood in\n"
    "nats per example. A non-finite NLL is printed as null and exits with code 6. Under mpirun the ranks share\n"
    "the examples and rank 0 prints the one-process result.",
    declare,
    run,
};

}  // namespace flowlab::cli
