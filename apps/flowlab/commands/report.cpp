// flowlab report RUN_DIR: (re)write the run's report.html.
#include <cstdio>

#include "../command.hpp"
#include "flowlab/report.hpp"

namespace flowlab::cli {
namespace {

void declare(po::options_description&) {}

int run(const Args& a) {
    if (a.positional().size() != 1) throw UsageError("report takes one RUN_DIR");
    std::printf("%s\n", write_report(a.positional()[0]).c_str());
    return kOk;
}

}  // namespace

extern const Command kReportCommand = {
    "report",
    "(re)write the run's report.html",
    "RUN_DIR",
    "Writes RUN_DIR/report.html (a self-contained page with the curves, samples and config) and\n"
    "metrics.csv from the files in the run directory; loads no plugin and no model.",
    declare,
    run,
};

}  // namespace flowlab::cli
