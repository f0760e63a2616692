// flowlab plugin-info LIB.so: what a plugin declares (ABI version, flowlab version, compiler id,
// name, version, description) and whether this flowlab accepts it, without registering it.
#include <cstdio>
#include <string>
#include <vector>

#include "../command.hpp"
#include "../session.hpp"
#include "flowlab/plugin.hpp"
#include "flowlab/version.hpp"

namespace flowlab::cli {
namespace {

void declare(po::options_description& o) {
    o.add_options()("plugin-dir", po::value<std::vector<std::string>>()->composing()->value_name("DIR"),
                    "look up a plugin given by name in DIR first (repeatable)");
}

std::string major_minor(const std::string& v) {
    auto first = v.find('.');
    if (first == std::string::npos) return v;
    return v.substr(0, v.find('.', first + 1));
}

std::string join(const std::vector<std::string>& v, const char* sep) {
    std::string s;
    for (std::size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
    return s;
}

int run(const Args& a) {
    const std::vector<std::string>& args = a.positional();
    if (args.size() != 1) {
        std::fprintf(stderr, "flowlab: plugin-info takes one plugin: flowlab plugin-info LIB.so\n");
        return kUsage;
    }
    const PluginInfo info = read_plugin_info(resolve_plugin(args[0], plugin_search_dirs(session_options(a))));
    std::vector<std::string> problems;
    if (major_minor(info.flowlab_version) != major_minor(FLOWLAB_VERSION_STRING))
        problems.push_back("built for flowlab " + info.flowlab_version + ", major.minor must match");
    if (info.compiler_id != FLOWLAB_COMPILER_ID)
        problems.push_back("built with " + info.compiler_id + ", flowlab with " FLOWLAB_COMPILER_ID);
    std::printf("path:            %s\n", info.path.c_str());
    std::printf("name:            %s\n", info.name.c_str());
    std::printf("version:         %s\n", info.version.c_str());
    std::printf("description:     %s\n", info.description.c_str());
    std::printf("plugin ABI:      %u (this flowlab: %u)\n", info.abi_version, FLOWLAB_PLUGIN_ABI_VERSION);
    std::printf("flowlab version: %s (this flowlab: %s)\n", info.flowlab_version.c_str(), FLOWLAB_VERSION_STRING);
    std::printf("compiler:        %s (this flowlab: %s)\n", info.compiler_id.c_str(), FLOWLAB_COMPILER_ID);
    std::printf("loadable:        %s\n", problems.empty() ? "yes" : ("no: " + join(problems, "; ")).c_str());
    return 0;
}

}  // namespace

extern const Command kPluginInfoCommand = {
    "plugin-info",
    "what a plugin declares, without registering it",
    "LIB.so [options]",
    "Prints the plugin's name, version and description, the plugin ABI, flowlab version and compiler it\n"
    "was built for, and whether this flowlab would load it. Runs none of the plugin's code.",
    declare,
    run,
};

}  // namespace flowlab::cli
