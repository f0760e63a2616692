// flowlab version: print the version.
#include <cstdio>

#include "../command.hpp"
#include "flowlab/version.hpp"

namespace flowlab::cli {
namespace {

void declare(po::options_description&) {}

int run(const Args& a) {
    if (!a.positional().empty()) throw UsageError("version takes no arguments");
    std::printf("flowlab %s\n", FLOWLAB_VERSION_STRING);
    return kOk;
}

}  // namespace

extern const Command kVersionCommand = {
    "version", "print the version", "", "Prints flowlab's version (also: flowlab --version).", declare, run,
};

}  // namespace flowlab::cli
