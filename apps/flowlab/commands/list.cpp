// flowlab list [KIND]: the registered types with their parameters, defaults and origin plugin.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "../command.hpp"
#include "../session.hpp"

namespace flowlab::cli {
namespace {

void declare(po::options_description& o) { add_plugin_options(o); }

// A bound as the parameter's values are written: 4096 for an integer (not 4096.000000 or
// 4.096e+03), 0.001 for a number.
std::string bound_text(const ParamSpec& p, double v) {
    char buf[32];
    const bool integral =
        p.type == ParamType::integer || p.type == ParamType::int_list || p.type == ParamType::int_or_auto;
    if (integral && std::fabs(v) < 9e15) std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
    else std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

// " in [lo, hi]", " >= lo", " <= hi", or nothing: an open end is left out, not printed as inf.
std::string range_text(const ParamSpec& p) {
    const bool lo = std::isfinite(p.min_value), hi = std::isfinite(p.max_value);
    if (lo && hi) return " in [" + bound_text(p, p.min_value) + ", " + bound_text(p, p.max_value) + "]";
    if (lo) return " >= " + bound_text(p, p.min_value);
    if (hi) return " <= " + bound_text(p, p.max_value);
    return "";
}

template <class Tab>
void print_table(const Tab& t, const std::string& filter) {
    if (!filter.empty() && filter != t.kind() && !(filter == "base" && t.kind() == "base distribution")) return;
    std::printf("%s types:\n", t.kind().c_str());
    for (const auto& [name, e] : t.entries()) {
        std::printf("  %-22s %s\n", name.c_str(), e.doc.c_str());
        std::printf("  %-22s origin: %s\n", "", e.origin.c_str());
        // Columns as wide as this entry's longest name and type, so long names stay aligned.
        int name_w = 20, type_w = 12;
        for (const auto& p : e.schema) {
            name_w = std::max(name_w, static_cast<int>(p.name.size()));
            type_w = std::max(type_w, static_cast<int>(std::string(param_type_name(p.type)).size()));
        }
        for (const auto& p : e.schema) {
            std::string def = p.required() ? "required" : "default " + p.default_json;
            const std::string range = range_text(p);
            std::string choices;
            for (const auto& c : p.choices_) choices += (choices.empty() ? " one of " : "|") + c;
            std::printf("      %-*s %-*s %s%s%s - %s\n", name_w, p.name.c_str(), type_w, param_type_name(p.type), def.c_str(),
                        range.c_str(), choices.c_str(), p.doc.c_str());
        }
    }
    std::printf("\n");
}

int run(const Args& a) {
    if (a.positional().size() > 1) throw UsageError("list takes at most one KIND");
    const std::string filter = a.positional().empty() ? "" : a.positional()[0];
    static const std::set<std::string> kinds = {"bijector", "base",     "base distribution", "dequantizer", "optimizer",
                                                "schedule", "conditioner", "op",              "dataset"};
    if (!filter.empty() && !kinds.count(filter))
        throw UsageError("unknown kind '" + filter +
                         "' (known: bijector, base, dequantizer, optimizer, schedule, conditioner, op, dataset)");
    Registry reg;
    load_all_plugins(reg, session_options(a));
    std::printf("plugins:\n");
    for (const auto& p : reg.plugins)
        std::printf("  %s %s - %s\n      %s\n", p.name.c_str(), p.version.c_str(), p.description.c_str(), p.path.c_str());
    std::printf("\n");
    if (filter.empty() && !reg.defaults().empty()) {
        // What an experiment that leaves these slots out gets.
        std::printf("defaults:\n");
        for (const auto& [slot, d] : reg.defaults())
            std::printf("  %-22s %s\n  %-22s origin: %s\n", slot.c_str(), d.value.c_str(), "", d.origin.c_str());
        std::printf("\n");
    }
    reg.for_each_table([&](const auto& table) { print_table(table, filter); });
    return kOk;
}

}  // namespace

extern const Command kListCommand = {
    "list",
    "registered types, their parameters, defaults and origin plugin",
    "[KIND] [options]",
    "Loads every plugin in the plugin directories (--plugin-dir, $FLOWLAB_PLUGIN_PATH, flowlab's own) and\n"
    "lists the types they register, or only those of KIND: bijector, base, dequantizer, optimizer,\n"
    "schedule, conditioner, op (the ops of network graphs) or dataset.",
    declare,
    run,
};

}  // namespace flowlab::cli
