// flowlab schema: a JSON Schema of the config format, generated from the registry.
#include <cstdio>

#include "../command.hpp"
#include "../session.hpp"

namespace flowlab::cli {
namespace {

void declare(po::options_description& o) { add_plugin_options(o); }

int run(const Args& a) {
    if (!a.positional().empty()) throw UsageError("schema takes no arguments");
    Registry reg;
    load_all_plugins(reg, session_options(a));
    std::printf("%s\n", experiment_json_schema(reg).c_str());
    return kOk;
}

}  // namespace

extern const Command kSchemaCommand = {
    "schema",
    "JSON Schema of the config format, generated from the registry",
    "[options]",
    "Prints a JSON Schema (draft 2020-12) of the experiment format with every type the plugins in the\n"
    "plugin directories register, for editors to validate and complete configs.",
    declare,
    run,
};

}  // namespace flowlab::cli
