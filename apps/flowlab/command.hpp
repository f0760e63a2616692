// The pieces every command of the flowlab CLI is made of: its table entry (Command), its parsed
// command line (Args), the usage error, the exit codes, and the option groups several commands
// share. Each command lives in commands/<name>.cpp and declares its own options there;
// main.cpp only finds the command in the table, parses, and maps errors to exit codes.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include <boost/program_options/options_description.hpp>
#include <boost/program_options/variables_map.hpp>

namespace flowlab::cli {

namespace po = boost::program_options;

// One exit code per error kind, so scripts can tell them apart (README, "The command line").
enum Exit {
    kOk = 0,
    kInternal = 1,
    kUsage = 2,
    kConfig = 3,
    kPlugin = 4,
    kIo = 5,
    kNumeric = 6,
    kShape = 7,
    kCheckFailed = 8,
    kInterrupted = 10,
    kDistributed = 11  // a data-parallel run failed as a whole (docs/DISTRIBUTED.md)
};

// A wrong command line: main prints "flowlab: <what>", then the command's usage, and exits 2.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class Args;

// One entry of the command table (commands.cpp).
struct Command {
    const char* name;
    const char* summary;      // one line of `flowlab --help`
    const char* usage;        // the arguments after "flowlab <name>", one form per line
    const char* description;  // what `flowlab <name> --help` says between usage and options
    void (*declare)(po::options_description& options);  // the command's own options
    int (*run)(const Args& args);                        // returns the exit code, or throws
};

// Every command, in the order `flowlab --help` lists them; nullptr when `name` is none.
const std::vector<const Command*>& commands();
const Command* find_command(const std::string& name);

// The parsed command line of one command: its options and positional arguments.
class Args {
public:
    Args(po::variables_map vm, std::vector<std::string> positional)
        : vm_(std::move(vm)), positional_(std::move(positional)) {}

    const std::vector<std::string>& positional() const { return positional_; }
    bool flag(const std::string& name) const;              // a switch (po::bool_switch)
    std::string text(const std::string& name) const;       // "" when absent
    std::vector<std::string> list(const std::string& name) const;  // a repeatable option
    // An integer option >= `min` (`def` when absent); otherwise UsageError
    // "<option> needs <needs>, got '<value>'". `name` is the option's key: "seed", or "-n" for
    // a short-only option.
    long integer(const std::string& name, long def, long min, const char* needs) const;
    // A number option >= 0 (`def` when absent).
    double non_negative(const std::string& name, double def) const;

private:
    po::variables_map vm_;
    std::vector<std::string> positional_;
};

// Parses `argv[first..argc)` against the command's options (plus -h/--help). Throws UsageError
// for an unknown option (with a did-you-mean), a missing value or a repeated single option.
Args parse_command_line(const Command& c, int argc, char** argv, int first);
// "usage: flowlab <name> ...", the description and the options, as `flowlab <name> --help`.
std::string command_help(const Command& c);
// The usage lines only (what follows an error message).
std::string command_usage(const Command& c);

// Option groups shared by several commands.
void add_plugin_options(po::options_description& o);  // --plugin-dir DIR, --plugin PATH
void add_set_option(po::options_description& o);      // --set KEY=VALUE
void add_quiet_option(po::options_description& o);    // --quiet
po::typed_value<std::string>* value_named(const char* name);  // a single value shown as `name`

}  // namespace flowlab::cli
