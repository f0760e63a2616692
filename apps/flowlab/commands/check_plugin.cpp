// flowlab check-plugin LIB.so [TYPE...]: the conformance suite on every bijector a plugin
// registers (or on the TYPEs named).
//
// Loads the plugin (after the standard plugin, when the plugin's types refer to types it does
// not register itself, e.g. the "mlp" conditioner) and runs the bijector conformance suite,
// printing one row per check: type, shape, check, PASS/FAIL/skip, worst error, tolerance.
// Exit code 0 when every check passes, 8 when any fails, 4 when the plugin cannot load. Before the
// table it warns of what would only show later: a plugin name that differs from the file's (a
// config would not find it by name) and type names that another plugin in the search path
// registers (a config loading both would fail).
// LIB.so may also be a plugin name, looked up like the "plugins" list of a config.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "../command.hpp"
#include "../session.hpp"
#include "flowlab/conformance.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/plugin.hpp"

namespace fs = std::filesystem;

namespace flowlab::cli {
namespace {

bool same_file(const std::string& a, const std::string& b) {
    std::error_code ec;
    bool eq = fs::equivalent(a, b, ec);
    return !ec && eq;
}

// Every "type" named anywhere inside a JSON object (nested objects and lists of objects).
void collect_types(const Params& p, std::set<std::string>& out) {
    for (const auto& key : p.keys()) {
        std::string raw = p.get_json(key);
        if (key == "type" && !raw.empty() && raw[0] == '"') {
            out.insert(p.get_string(key));
        } else if (!raw.empty() && raw[0] == '{') {
            collect_types(p.get_object(key), out);
        } else if (!raw.empty() && raw[0] == '[') {
            try {
                for (const auto& o : p.get_object_list(key)) collect_types(o, out);
            } catch (const Error&) {
                // A list of numbers or strings names no type.
            }
        }
    }
}

void collect_types_json(const std::string& json, const std::string& what, std::set<std::string>& out) {
    auto first = json.find_first_not_of(" \t\r\n");
    if (first == std::string::npos || json[first] != '{') return;
    collect_types(Params::parse(json, what), out);
}

bool registered_anywhere(const Registry& r, const std::string& name) {
    bool found = false;
    r.for_each_table([&](const auto& table) { found = found || table.contains(name); });
    return found;
}

// Names of the entries of `table` that came from the plugin at `origin`.
template <class Tab>
std::vector<std::string> from_origin(const Tab& table, const std::string& origin) {
    std::vector<std::string> names;
    for (const auto& [name, e] : table.entries())
        if (e.origin == origin) names.push_back(name);
    return names;
}

// The types a plugin's bijectors build by name (conformance parameters and schema defaults,
// e.g. {"conditioner": {"type": "mlp"}}) that the plugin does not register itself.
std::set<std::string> missing_types(const Registry& reg, const std::string& origin) {
    std::set<std::string> used;
    for (const auto& name : from_origin(reg.bijectors, origin)) {
        const BijectorEntry& e = *reg.bijectors.find(name);
        collect_types_json(e.hints.params_json, "<conformance hints of '" + name + "'>", used);
        for (const auto& spec : e.schema)
            if (!spec.required()) collect_types_json(spec.default_json, "<default of '" + name + "." + spec.name + "'>", used);
    }
    std::set<std::string> missing;
    for (const auto& t : used)
        if (!registered_anywhere(reg, t)) missing.insert(t);
    return missing;
}

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
    std::string s;
    for (std::size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
    return s;
}

std::string fmt_number(double v) {
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    if (v == 0.0) return "0";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2e", v);
    return buf;
}

bool is_skip(const ConformanceCheck& c) { return c.passed && c.detail.rfind("skipped", 0) == 0; }

// Loads the plugin at `path` into `reg` with the plugins it declares it requires
// (Registry::require_plugin), and says which types it builds by name that neither it nor they
// register: the checks that build those would fail, and a config would need another plugin.
PluginRecord load_with_requirements(Registry& reg, const std::string& path, const std::vector<std::string>& plugin_dirs) {
    load_plugins(reg, {path}, plugin_dirs);
    PluginRecord rec;
    for (const auto& r : reg.plugins)
        if (same_file(r.path, path)) rec = r;
    for (const auto& req : rec.required)
        for (const auto& r : reg.plugins)
            if (r.name == req) std::printf("  requires %s: loaded %s %s\n  %s\n", req.c_str(), r.name.c_str(),
                                           r.version.c_str(), r.path.c_str());
    const std::set<std::string> missing = missing_types(reg, rec.path);
    if (!missing.empty())
        std::printf("  refers to %s, which neither it nor the plugins it requires register: the checks that build "
                    "them will fail (declare the plugin that provides them with reg.require_plugin(\"NAME\") in "
                    "the FLOWLAB_PLUGIN body)\n",
                    join(std::vector<std::string>(missing.begin(), missing.end())).c_str());
    return rec;
}

// A config names a plugin, and a run directory records it, by the name FLOWLAB_PLUGIN gives it:
// the loader then looks for libflowlab_<name>.so (or <name>.so), which must be this file.
void warn_file_name(const PluginRecord& rec) {
    const std::string file = fs::path(rec.path).filename().string();
    if (file == "libflowlab_" + rec.name + ".so" || file == rec.name + ".so") return;
    std::printf("  warning: the plugin calls itself '%s' (FLOWLAB_PLUGIN), but its file is %s: a config's "
                "\"plugins\": [\"%s\"] looks for libflowlab_%s.so and will not find this file, nor will a resumed "
                "run; build it with flowlab_add_plugin(%s ...) and FLOWLAB_PLUGIN(FLOWLAB_PLUGIN_NAME, ...), or "
                "rename one of the two\n",
                rec.name.c_str(), file.c_str(), rec.name.c_str(), rec.name.c_str(), rec.name.c_str());
}

// Type names are global: one that another plugin in the search path registers too makes every
// config that loads both fail, which validate would only say once a config does. Each other
// plugin is loaded into a registry of its own to compare.
void warn_clashes(const Registry& reg, const PluginRecord& rec, const std::vector<std::string>& plugin_dirs) {
    for (const auto& file : plugin_files(plugin_dirs)) {
        if (same_file(file, rec.path)) continue;
        Registry other;
        try {
            load_plugin(other, file);
        } catch (const Error&) {
            continue;  // a plugin this flowlab cannot load clashes with nothing
        }
        const PluginRecord& theirs = other.plugins.back();
        if (theirs.name == rec.name) {
            std::printf("  warning: another copy of plugin '%s' is in the plugin search path (%s): a config's "
                        "\"plugins\": [\"%s\"] loads the first one found (--plugin-dir, then FLOWLAB_PLUGIN_PATH, "
                        "then flowlab's own directory), and loading both is refused as a duplicate; reinstall the "
                        "plugin after a rebuild, or keep passing --plugin-dir while you develop\n",
                        rec.name.c_str(), theirs.path.c_str(), rec.name.c_str());
            continue;
        }
        auto compare = [&](const auto& mine, const auto& their_table) {
            for (const auto& name : from_origin(mine, rec.path))
                if (their_table.contains(name))
                    std::printf("  warning: %s '%s' is also registered by plugin '%s' (%s): a config that loads both "
                                "plugins fails with a duplicate name; rename yours (e.g. '%s_%s')\n",
                                mine.kind().c_str(), name.c_str(), theirs.name.c_str(), theirs.path.c_str(),
                                rec.name.c_str(), name.c_str());
        };
        reg.for_each_table(compare, other);
    }
}

// The plugin's bijectors, or the ones named on the command line (each must be one of them).
std::vector<std::string> chosen_types(const Registry& reg, const PluginRecord& rec, const std::vector<std::string>& args) {
    const std::vector<std::string> types = from_origin(reg.bijectors, rec.path);
    if (args.size() <= 1) return types;
    std::vector<std::string> chosen;
    for (std::size_t i = 1; i < args.size(); ++i) {
        if (std::find(types.begin(), types.end(), args[i]) == types.end()) {
            std::string dym = did_you_mean(args[i], types);
            throw ConfigError("check-plugin: '" + args[i] + "' is not a bijector of plugin '" + rec.name + "'" +
                              (dym.empty() ? "" : "; did you mean '" + dym + "'?") +
                              " (its bijectors: " + (types.empty() ? std::string("none") : join(types)) + ")");
        }
        chosen.push_back(args[i]);
    }
    return chosen;
}

// What else the plugin registers is listed (the conformance suite is for bijectors).
void print_other_types(const Registry& reg, const PluginRecord& rec) {
    std::vector<std::string> others;
    reg.for_each_table([&](const auto& table) {
        if (table.kind() == reg.bijectors.kind()) return;
        for (const auto& n : from_origin(table, rec.path)) others.push_back(table.kind() + " " + n);
    });
    if (!others.empty()) std::printf("  also registers (not checked): %s\n", join(others).c_str());
}

void print_details(const char* title, const std::vector<ConformanceCheck>& checks) {
    if (checks.empty()) return;
    std::printf("\n%s:\n", title);
    for (const auto& c : checks)
        std::printf("  %s %s %s: %s\n", c.type.c_str(), c.shape.c_str(), c.check.c_str(), c.detail.c_str());
}

// One table row per check as it completes, then the notes, the failures and a summary line.
int run_checks(const Registry& reg, const std::vector<std::string>& types, const std::string& plugin_name) {
    std::size_t type_w = 4;
    for (const auto& t : types) type_w = std::max(type_w, t.size());
    const int tw = static_cast<int>(type_w);
    std::printf("\n%-*s  %-10s  %-26s  %-6s  %10s  %10s\n", tw, "type", "shape", "check", "result", "worst", "tolerance");
    std::printf("%s\n", std::string(type_w + 72, '-').c_str());

    std::vector<ConformanceCheck> failed, notes;
    std::size_t n_checks = 0, n_pass = 0, n_skip = 0;
    for (const auto& t : types) {
        for (const auto& c : check_bijector(reg, t)) {
            ++n_checks;
            const bool skip = is_skip(c);
            const char* result = !c.passed ? "FAIL" : skip ? "skip" : "PASS";
            std::printf("%-*s  %-10s  %-26s  %-6s  %10s  %10s\n", tw, c.type.c_str(), c.shape.c_str(), c.check.c_str(),
                        result, skip ? "-" : fmt_number(c.worst).c_str(), skip ? "-" : fmt_number(c.tolerance).c_str());
            std::fflush(stdout);
            if (!c.passed) failed.push_back(c);
            else if (!c.detail.empty()) notes.push_back(c);
            n_pass += c.passed && !skip;
            n_skip += skip;
        }
    }
    print_details("notes", notes);
    print_details("failed checks", failed);
    std::printf("\n%s: %zu checks on %zu bijector%s: %zu passed, %zu skipped, %zu failed\n", plugin_name.c_str(),
                n_checks, types.size(), types.size() == 1 ? "" : "s", n_pass, n_skip, failed.size());
    return failed.empty() ? kOk : kCheckFailed;
}

int check_plugin(const std::vector<std::string>& args, const std::vector<std::string>& plugin_dirs) {
    if (args.empty()) {
        std::fprintf(stderr, "flowlab: check-plugin needs a plugin: flowlab check-plugin LIB.so [TYPE...]\n");
        return kUsage;
    }
    const std::string path = resolve_plugin(args[0], plugin_dirs);
    // The info struct first: an ABI or version mismatch is reported before any plugin code runs.
    const PluginInfo info = read_plugin_info(path);
    std::printf("plugin %s %s - %s\n  %s\n", info.name.c_str(), info.version.c_str(), info.description.c_str(),
                info.path.c_str());
    Registry reg;
    const PluginRecord rec = load_with_requirements(reg, path, plugin_dirs);
    warn_file_name(rec);
    warn_clashes(reg, rec, plugin_dirs);
    const std::vector<std::string> types = chosen_types(reg, rec, args);
    print_other_types(reg, rec);
    if (types.empty()) {
        std::printf("\nno bijectors registered: nothing to check\n");
        return kOk;
    }
    return run_checks(reg, types, rec.name);
}

void declare(po::options_description& o) {
    o.add_options()("plugin-dir", po::value<std::vector<std::string>>()->composing()->value_name("DIR"),
                    "look up a plugin given by name in DIR first (repeatable)");
}

int run(const Args& a) { return check_plugin(a.positional(), plugin_search_dirs(session_options(a))); }

}  // namespace

extern const Command kCheckPluginCommand = {
    "check-plugin",
    "the conformance suite on every bijector a plugin registers",
    "LIB.so [TYPE...] [options]",
    "Runs the conformance checks on each bijector the plugin registers, or on the TYPEs named: round\n"
    "trips both ways, log-dets cancel, log-det against a numerical Jacobian, gradients against finite\n"
    "differences, batch independence, finite outputs at the edges. Prints a table of pass/fail with the\n"
    "worst error per check; exit code 8 when a check fails, 4 when the plugin does not load. Warns when the\n"
    "plugin's name differs from its file's, or when another plugin in the search path registers one of its\n"
    "type names.",
    declare,
    run,
};

}  // namespace flowlab::cli
