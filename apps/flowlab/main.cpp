// flowlab: the experiment runner's command line.
//
//   flowlab COMMAND [ARGS] [OPTIONS]     flowlab --help lists the commands,
//   flowlab COMMAND --help               a command's arguments and options.
//
// The commands live in commands/<name>.cpp, one each, and declare their own options (the table
// is in command.cpp); what they work on - a config, a run directory, a trained model - is
// loaded by a Session (session.hpp). This file finds the command, parses its command line and
// maps every error kind to its exit code:
//   0 ok, 1 internal error, 2 usage, 3 config error, 4 plugin error, 5 i/o error,
//   6 numeric error (training diverged), 7 shape error, 8 a layer failed its checks
//   (check-plugin, or the layer checks of run),
//   10 interrupted by SIGINT/SIGTERM (the current step finished and a checkpoint was written),
//   11 a data-parallel run failed as a whole (a rank crashed or hung past the timeout, or the
//   ranks' parameters diverged)
//
// Under an MPI launcher (mpirun -np N flowlab run ...) every rank runs this program: run and
// eval and sample work on every rank together, any other command on rank 0 alone, and an error is
// printed once for the job (distributed.hpp).
#include <cstdio>
#include <malloc.h>
#include <filesystem>
#include <string>
#include <vector>

#include "command.hpp"
#include "distributed.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/params.hpp"
#include "flowlab/stop_signals.hpp"
#include "flowlab/version.hpp"

using namespace flowlab;
using namespace flowlab::cli;

namespace {

std::string overview() {
    std::string s =
        "usage: flowlab <command> [arguments] [options]\n"
        "       flowlab <command> --help   the command's arguments and options\n"
        "\n"
        "commands:\n";
    for (const Command* c : commands()) {
        char line[256];
        std::snprintf(line, sizeof line, "  %-14s %s\n", c->name, c->summary);
        s += line;
    }
    s += "\nExit codes: 0 ok, 2 usage, 3 config, 4 plugin, 5 i/o, 6 numeric, 7 shape, 8 a layer failed its checks,\n"
         "10 interrupted (a checkpoint was written), 11 a data-parallel run failed (a rank crashed or hung),\n"
         "1 internal error.\n";
    return s;
}

// The commands that work on every rank of an MPI job together.
bool runs_on_every_rank(const Command& c) {
    const std::string n = c.name;
    return n == "run" || n == "eval" || n == "sample";
}

// A usage error: the message, then the usage of the command it concerns (or the overview).
// Every rank of a job meets it; rank 0 says it.
int usage_error(const std::string& what, const Command* c) {
    if (!is_root()) return kUsage;
    if (c)
        std::fprintf(stderr, "flowlab: %s\n\n%s('flowlab %s --help' lists its options)\n", what.c_str(),
                     command_usage(*c).c_str(), c->name);
    else
        std::fprintf(stderr, "flowlab: %s\n\n%s", what.c_str(), overview().c_str());
    return kUsage;
}

int dispatch(int argc, char** argv) {
    if (argc < 2) return usage_error("no command given", nullptr);
    const std::string name = argv[1];
    if (name == "-h" || name == "--help" || name == "help") {
        const Command* c = argc > 2 ? find_command(argv[2]) : nullptr;
        if (argc > 2 && !c) return usage_error("unknown command '" + std::string(argv[2]) + "'", nullptr);
        if (is_root()) std::fputs(c ? command_help(*c).c_str() : overview().c_str(), stdout);
        return kOk;
    }
    if (name == "--version") return is_root() ? find_command("version")->run(Args({}, {})) : kOk;
    const Command* c = find_command(name);
    if (!c) {
        std::vector<std::string> names;
        for (const Command* k : commands()) names.push_back(k->name);
        const std::string dym = did_you_mean(name, names);
        return usage_error("unknown command '" + name + "'" + (dym.empty() ? "" : "; did you mean '" + dym + "'?"),
                           nullptr);
    }
    try {
        const Args args = parse_command_line(*c, argc, argv, 2);
        if (args.flag("help")) {
            if (is_root()) std::fputs(command_help(*c).c_str(), stdout);
            return kOk;
        }
        // The other ranks have nothing to do in a command of one process.
        if (!is_root() && !runs_on_every_rank(*c)) return kOk;
        return c->run(args);
    } catch (const UsageError& e) {
        return usage_error(e.what(), c);
    }
}

template <class E>
bool is_a(const std::exception& e) {
    return dynamic_cast<const E*>(&e) != nullptr;
}

// "flowlab: <kind>: <what>" and the kind's exit code. The first row that matches wins, so a
// kind stands before the kinds it derives from (a failed layer check is a numeric error that
// exits like a failed conformance check).
int describe_error(const std::exception& e, std::string& line) {
    struct Kind {
        const char* label;
        Exit code;
        bool (*matches)(const std::exception&);
    };
    static const Kind kinds[] = {
        {"layer check failed", kCheckFailed, is_a<LayerCheckError>},
        {"config error", kConfig, is_a<ConfigError>},
        {"plugin error", kPlugin, is_a<PluginError>},
        {"i/o error", kIo, is_a<IoError>},
        {"numeric error", kNumeric, is_a<NumericError>},
        {"shape error", kShape, is_a<ShapeError>},
        {"i/o error", kIo, is_a<std::filesystem::filesystem_error>},
        {"distributed error", kDistributed, is_a<DistributedError>},
    };
    for (const Kind& k : kinds)
        if (k.matches(e)) {
            line = std::string("flowlab: ") + k.label + ": " + e.what();
            return k.code;
        }
    line = std::string("flowlab: internal error: ") + e.what();
    return kInternal;
}

// Prints the error's line and returns its exit code; in a job of several ranks, ends this rank
// the way the job's fault handling says (printed once, then the launcher ends the others).
int report_error(const std::exception& e) {
    int peer_code = 0;
    if (distributed() && peer_failure(e, peer_code)) fail_distributed(peer_code, "", true);
    std::string line;
    const int code = describe_error(e, line);
    if (distributed()) fail_distributed(code, line, false);
    std::fprintf(stderr, "%s\n", line.c_str());
    return code;
}

}  // namespace

int main(int argc, char** argv) {
    // A training step frees and re-allocates the same large activations every step. glibc
    // serves them with fresh mmap()s (or trims the heap back) and every step pays the page
    // faults again; keeping freed memory in the process removes them (W3: about 4% faster;
    // the peak resident memory is the same).
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    // Before any thread starts (MPI's, TBB's), so that every thread inherits the block of
    // SIGINT/SIGTERM: `run` takes them on a thread of their own (flowlab/stop_signals.hpp).
    route_stop_signals();
    try {
        start_distributed();
    } catch (const std::exception& e) {
        return report_error(e);
    }
    int code = kOk;
    bool collective = false;
    try {
        const Command* c = argc > 1 ? find_command(argv[1]) : nullptr;
        collective = c && runs_on_every_rank(*c);
        code = dispatch(argc, argv);
    } catch (const std::exception& e) {
        code = report_error(e);
    }
    return finish_distributed(code, collective);
}
