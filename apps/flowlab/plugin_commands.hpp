// The plugin author's commands of the flowlab CLI.
//
//   flowlab check-plugin LIB.so [TYPE...]
//       Loads the plugin (after the standard plugin, when the plugin's types refer to types it
//       does not register itself, e.g. the "mlp" conditioner) and runs the bijector conformance
//       suite on every bijector it registers (or only the TYPEs named), printing one row per
//       check: type, shape, check, PASS/FAIL/skip, worst error, tolerance.
//       Exit code 0 when every check passes, 8 when any fails, 4 when the plugin cannot load.
//   flowlab plugin-info LIB.so
//       Prints what the plugin declares (ABI version, flowlab version, compiler id, name,
//       version, description) and whether this flowlab accepts it, without registering.
//
// LIB.so may also be a plugin name, looked up like the "plugins" list of a config. Errors are
// thrown (flowlab::PluginError and friends) for the CLI to map to its exit codes.
#pragma once

#include <string>
#include <vector>

namespace flowlab::cli {

// Exit code of check-plugin when a conformance check fails.
constexpr int kExitCheckFailed = 8;

}  // namespace flowlab::cli

// `args` are the command's positional arguments, `plugin_dirs` the directories searched for
// plugins given by name (--plugin-dir, $FLOWLAB_PLUGIN_PATH, then flowlab's own).
int run_check_plugin(const std::vector<std::string>& args, const std::vector<std::string>& plugin_dirs);
int run_plugin_info(const std::vector<std::string>& args, const std::vector<std::string>& plugin_dirs);
