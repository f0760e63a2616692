// The command line's help and usage errors: `flowlab --help` lists every command in one line,
// `flowlab COMMAND --help` shows that command's usage and its own options, and a wrong command
// or option is a usage error (exit code 2) that says what was meant.
#include <catch2/catch.hpp>

#include "cli_support.hpp"

#include <array>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

using namespace flowlab::test;

namespace {




// Each command and options its help must show.
const std::map<std::string, std::vector<std::string>> kOptions = {
    {"run", {"--resume", "--output DIR", "--stop-after N", "--set KEY=VALUE", "--plugin-dir DIR", "--plugin PATH", "--quiet"}},
    {"eval", {"--split NAME", "--set KEY=VALUE", "--plugin-dir DIR", "--quiet"}},
    {"sample", {"-n N", "--temperature T", "--out FILE", "--seed S", "--time", "--repeats R", "--set KEY=VALUE"}},
    {"validate", {"--set KEY=VALUE", "--plugin-dir DIR", "--plugin PATH"}},
    {"list", {"--plugin-dir DIR", "--plugin PATH"}},
    {"schema", {"--plugin-dir DIR", "--plugin PATH"}},
    {"report", {}},
    {"bench", {"--warmup N", "--timed N", "--repeats N", "--set KEY=VALUE"}},
    {"check-plugin", {"--plugin-dir DIR"}},
    {"plugin-info", {"--plugin-dir DIR"}},
    {"version", {}},
};

// A command line that must be a usage error: exit code 2, with each of `says` on stderr.
struct UsageError {
    std::string args;
    std::vector<std::string> says;
};

// Runs each row, checks it, and returns the results in row order for checks of their own.
std::vector<CliResult> check_usage_errors(const std::vector<UsageError>& rows) {
    std::vector<CliResult> results;
    for (const auto& row : rows) {
        const CliResult r = run_cli(row.args, true);
        INFO("flowlab " << row.args << "\n" << r.err);
        CHECK(r.code == 2);
        for (const auto& part : row.says) CHECK(contains(r.err, part));
        results.push_back(r);
    }
    return results;
}

}  // namespace

TEST_CASE("flowlab --help lists every command with a one-line summary and exits 0", "[cli]") {
    for (const char* form : {"--help", "-h", "help"}) {
        const CliResult r = run_cli(form, true);
        INFO(form << "\n" << r.out << r.err);
        CHECK(r.code == 0);
        CHECK(r.out.rfind("usage: flowlab <command>", 0) == 0);
        CHECK(r.err.empty());
        for (const auto& [name, options] : kOptions) {
            // "  NAME   summary" on a line of its own.
            const auto at = r.out.find("\n  " + name + " ");
            REQUIRE(at != std::string::npos);
            const std::string line = r.out.substr(at + 1, r.out.find('\n', at + 1) - at - 1);
            CHECK(line.size() > name.size() + 12);
            CHECK(line.size() <= 100);
        }
    }
}

TEST_CASE("flowlab COMMAND --help shows the command's usage and its own options", "[cli]") {
    for (const auto& [name, options] : kOptions) {
        DYNAMIC_SECTION(name) {
            const CliResult r = run_cli(name + " --help", true);
            INFO(r.out << r.err);
            CHECK(r.code == 0);
            CHECK(r.out.rfind("usage: flowlab " + name, 0) == 0);
            CHECK(contains(r.out, "options:"));
            CHECK(contains(r.out, "--help"));
            for (const auto& o : options) CHECK(contains(r.out, "  " + o));
            // `help COMMAND` and `-h` say the same.
            CHECK(run_cli("help " + name, true).out == r.out);
            CHECK(run_cli(name + " -h", true).out == r.out);
        }
    }
    // Options are the command's own: eval has no --warmup, bench no -n.
    CHECK_FALSE(contains(run_cli("eval --help", true).out, "--warmup"));
    CHECK_FALSE(contains(run_cli("bench --help", true).out, "-n N"));
}

TEST_CASE("an option another command owns, or a misspelt one, is a usage error with a suggestion", "[cli]") {
    const auto results = check_usage_errors({
        {"eval some/run --warmup 3", {"flowlab: unknown option '--warmup'", "usage: flowlab eval RUN_DIR|CHECKPOINT"}},
        {"sample some/run --temprature 0.5", {"did you mean '--temperature'?"}},
        {"sample some/run --temp 0.5", {}},  // no guessing from prefixes
        {"run --output", {"flowlab: --output needs a value"}},
        {"sample some/run -n", {"flowlab: -n needs a value"}},
        {"sample some/run -n 0", {"-n needs a non-negative integer, got '0'"}},
        {"bench x.json --timed 0", {"--timed needs a positive integer, got '0'"}},
        {"validate", {"validate takes one CONFIG"}},
    });
    CHECK(results.back().out.empty());  // validate's error: nothing on stdout
}

TEST_CASE("an unknown command is a usage error that suggests the closest command", "[cli]") {
    check_usage_errors({
        {"evl runs/x", {"flowlab: unknown command 'evl'; did you mean 'eval'?", "usage: flowlab <command>"}},
        {"", {"no command given"}},
        {"help frobnicate", {}},
    });
    const CliResult r = run_cli("--version", true);
    CHECK(r.code == 0);
    CHECK(r.out.rfind("flowlab ", 0) == 0);
    CHECK(run_cli("version", true).out == r.out);
}
