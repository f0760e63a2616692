// The command table, command-line parsing with Boost.Program_options, and the shared options.
#include "command.hpp"

#include <cstdlib>
#include <sstream>

#include <boost/program_options/parsers.hpp>
#include <boost/program_options/positional_options.hpp>

#include "flowlab/params.hpp"

namespace flowlab::cli {

// Defined in commands/*.cpp, one per file.
extern const Command kRunCommand, kEvalCommand, kSampleCommand, kValidateCommand, kListCommand, kSchemaCommand,
    kReportCommand, kBenchCommand, kCheckPluginCommand, kPluginInfoCommand, kVersionCommand;

const std::vector<const Command*>& commands() {
    static const std::vector<const Command*> table = {
        &kRunCommand,    &kEvalCommand,  &kSampleCommand,      &kValidateCommand,   &kListCommand,   &kSchemaCommand,
        &kReportCommand, &kBenchCommand, &kCheckPluginCommand, &kPluginInfoCommand, &kVersionCommand,
    };
    return table;
}

const Command* find_command(const std::string& name) {
    for (const Command* c : commands())
        if (name == c->name) return c;
    return nullptr;
}

namespace {

// The name the positional arguments are stored under (never shown).
const char* const kPositional = "positional-arguments";

// How an option is written on the command line: a short-only option's key is "-n" already.
std::string spelled(const std::string& key) { return key.rfind('-', 0) == 0 ? key : "--" + key; }

po::options_description visible_options(const Command& c) {
    po::options_description o("options", 100, 50);
    c.declare(o);
    o.add_options()("help,h", po::bool_switch(), "show this help");
    return o;
}

}  // namespace

bool Args::flag(const std::string& name) const { return vm_.count(name) && vm_[name].as<bool>(); }

std::string Args::text(const std::string& name) const {
    return vm_.count(name) ? vm_[name].as<std::string>() : std::string();
}

std::vector<std::string> Args::list(const std::string& name) const {
    return vm_.count(name) ? vm_[name].as<std::vector<std::string>>() : std::vector<std::string>();
}

long Args::integer(const std::string& name, long def, long min, const char* needs) const {
    if (!vm_.count(name)) return def;
    const std::string v = text(name);
    char* end = nullptr;
    const long k = std::strtol(v.c_str(), &end, 10);
    if (*end != 0 || k < min) throw UsageError(spelled(name) + " needs " + needs + ", got '" + v + "'");
    return k;
}

double Args::non_negative(const std::string& name, double def) const {
    if (!vm_.count(name)) return def;
    const std::string v = text(name);
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (*end != 0 || !(x >= 0)) throw UsageError(spelled(name) + " needs a number >= 0, got '" + v + "'");
    return x;
}

Args parse_command_line(const Command& c, int argc, char** argv, int first) {
    const po::options_description visible = visible_options(c);
    po::options_description all;
    all.add(visible).add_options()(kPositional, po::value<std::vector<std::string>>()->composing(), "");
    po::positional_options_description positional;
    positional.add(kPositional, -1);
    const std::vector<std::string> tokens(argv + first, argv + argc);
    po::variables_map vm;
    try {
        // No guessing: an abbreviated option (--temp) is an unknown one, not --temperature.
        const int style = po::command_line_style::default_style & ~po::command_line_style::allow_guessing;
        po::store(po::command_line_parser(tokens).options(all).positional(positional).style(style).run(), vm);
        po::notify(vm);
    } catch (const po::unknown_option& e) {
        const std::string opt = e.get_option_name();
        std::vector<std::string> known;
        for (const auto& d : visible.options()) known.push_back(spelled(d->key("")));
        const std::string dym = did_you_mean(opt, known);
        throw UsageError("unknown option '" + opt + "' for " + c.name + (dym.empty() ? "" : "; did you mean '" + dym + "'?"));
    } catch (const po::invalid_command_line_syntax& e) {
        if (e.kind() == po::invalid_command_line_syntax::missing_parameter) {
            std::string opt = e.get_option_name();
            if (opt.size() == 3) opt.erase(0, 1);  // Boost spells a short-only option "--n"
            throw UsageError(opt + " needs a value");
        }
        throw UsageError(e.what());
    } catch (const po::error& e) {
        throw UsageError(e.what());
    }
    std::vector<std::string> pos;
    if (vm.count(kPositional)) pos = vm[kPositional].as<std::vector<std::string>>();
    return Args(std::move(vm), std::move(pos));
}

std::string command_usage(const Command& c) {
    std::vector<std::string> forms;
    std::istringstream lines(c.usage);
    for (std::string form; std::getline(lines, form);) forms.push_back(form);
    if (forms.empty()) forms.emplace_back();  // a command without arguments
    std::string s;
    for (std::size_t i = 0; i < forms.size(); ++i)
        s += std::string(i ? "       " : "usage: ") + "flowlab " + c.name + (forms[i].empty() ? "" : " ") + forms[i] + "\n";
    return s;
}

std::string command_help(const Command& c) {
    std::ostringstream os;
    os << command_usage(c) << "\n" << c.description << "\n\n" << visible_options(c);
    return os.str();
}

po::typed_value<std::string>* value_named(const char* name) { return po::value<std::string>()->value_name(name); }

void add_plugin_options(po::options_description& o) {
    o.add_options()  //
        ("plugin-dir", po::value<std::vector<std::string>>()->composing()->value_name("DIR"),
         "also look for plugins in DIR, before $FLOWLAB_PLUGIN_PATH and flowlab's own (repeatable)")  //
        ("plugin", po::value<std::vector<std::string>>()->composing()->value_name("PATH"),
         "load this plugin library too, a path or a name (repeatable)");
}

void add_set_option(po::options_description& o) {
    o.add_options()("set", po::value<std::vector<std::string>>()->composing()->value_name("KEY=VALUE"),
                    "override a config value, e.g. --set train.steps=100; VALUE is JSON or a bare string "
                    "(repeatable)");
}

void add_quiet_option(po::options_description& o) {
    o.add_options()("quiet", po::bool_switch(), "no progress lines");
}

}  // namespace flowlab::cli
