// flowlab check-plugin / plugin-info (see plugin_commands.hpp).
#include "plugin_commands.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "flowlab/conformance.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/plugin.hpp"
#include "flowlab/version.hpp"

namespace fs = std::filesystem;
using namespace flowlab;

namespace {

constexpr int kExitUsage = 2;

std::string major_minor(const std::string& v) {
    auto first = v.find('.');
    if (first == std::string::npos) return v;
    return v.substr(0, v.find('.', first + 1));
}

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
    return r.bijectors.contains(name) || r.distributions.contains(name) || r.dequantizers.contains(name) ||
           r.optimizers.contains(name) || r.schedules.contains(name) || r.conditioners.contains(name) ||
           r.datasets.contains(name);
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

}  // namespace

int run_check_plugin(const std::vector<std::string>& args, const std::vector<std::string>& plugin_dirs) {
    if (args.empty()) {
        std::fprintf(stderr, "flowlab: check-plugin needs a plugin: flowlab check-plugin LIB.so [TYPE...]\n");
        return kExitUsage;
    }
    const std::string path = resolve_plugin(args[0], plugin_dirs);
    // The info struct first: an ABI or version mismatch is reported before any plugin code runs.
    const PluginInfo info = read_plugin_info(path);
    std::printf("plugin %s %s - %s\n  %s\n", info.name.c_str(), info.version.c_str(), info.description.c_str(),
                info.path.c_str());

    // A first load on its own shows what the plugin registers and which types it builds by name
    // without registering them (the usual case: a coupling layer's "mlp" conditioner from the
    // standard plugin). Loading is cheap and a library is never unloaded, so the real registry
    // below loads it again, after its dependency, in the order a config would.
    std::set<std::string> missing;
    {
        Registry alone;
        PluginRecord rec = load_plugin(alone, path);
        missing = missing_types(alone, rec.path);
    }
    Registry reg;
    if (!missing.empty()) {
        std::string standard;
        try {
            standard = resolve_plugin("standard", plugin_dirs);
        } catch (const PluginError&) {
            std::printf("  refers to %s, which it does not register, and the standard plugin was not found: "
                        "the checks that build those types will fail\n",
                        join(std::vector<std::string>(missing.begin(), missing.end())).c_str());
        }
        if (!standard.empty() && !same_file(standard, path)) {
            PluginRecord s = load_plugin(reg, standard);
            std::printf("  refers to %s: loaded %s %s first\n  %s\n", join(std::vector<std::string>(missing.begin(), missing.end())).c_str(),
                        s.name.c_str(), s.version.c_str(), s.path.c_str());
        }
    }
    const PluginRecord rec = load_plugin(reg, path);

    std::vector<std::string> types = from_origin(reg.bijectors, rec.path);
    if (args.size() > 1) {
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
        types = chosen;
    }

    // What else it registers is listed (the conformance suite is for bijectors).
    std::vector<std::string> others;
    auto note = [&](const auto& table) {
        for (const auto& n : from_origin(table, rec.path)) others.push_back(table.kind() + " " + n);
    };
    note(reg.distributions);
    note(reg.dequantizers);
    note(reg.conditioners);
    note(reg.optimizers);
    note(reg.schedules);
    note(reg.datasets);
    if (!others.empty()) std::printf("  also registers (not checked): %s\n", join(others).c_str());
    if (types.empty()) {
        std::printf("\nno bijectors registered: nothing to check\n");
        return 0;
    }

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

    if (!notes.empty()) {
        std::printf("\nnotes:\n");
        for (const auto& c : notes)
            std::printf("  %s %s %s: %s\n", c.type.c_str(), c.shape.c_str(), c.check.c_str(), c.detail.c_str());
    }
    if (!failed.empty()) {
        std::printf("\nfailed checks:\n");
        for (const auto& c : failed)
            std::printf("  %s %s %s: %s\n", c.type.c_str(), c.shape.c_str(), c.check.c_str(), c.detail.c_str());
    }
    std::printf("\n%s: %zu checks on %zu bijector%s: %zu passed, %zu skipped, %zu failed\n", rec.name.c_str(), n_checks,
                types.size(), types.size() == 1 ? "" : "s", n_pass, n_skip, failed.size());
    return failed.empty() ? 0 : flowlab::cli::kExitCheckFailed;
}

int run_plugin_info(const std::vector<std::string>& args, const std::vector<std::string>& plugin_dirs) {
    if (args.size() != 1) {
        std::fprintf(stderr, "flowlab: plugin-info takes one plugin: flowlab plugin-info LIB.so\n");
        return kExitUsage;
    }
    const PluginInfo info = read_plugin_info(resolve_plugin(args[0], plugin_dirs));
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
