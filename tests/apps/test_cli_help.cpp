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
    CliResult r = run_cli("eval some/run --warmup 3", true);
    CHECK(r.code == 2);
    CHECK(contains(r.err, "flowlab: unknown option '--warmup'"));
    CHECK(contains(r.err, "usage: flowlab eval RUN_DIR|CHECKPOINT"));
    r = run_cli("sample some/run --temprature 0.5", true);
    CHECK(r.code == 2);
    CHECK(contains(r.err, "did you mean '--temperature'?"));
    r = run_cli("sample some/run --temp 0.5", true);  // no guessing from prefixes
    CHECK(r.code == 2);
    r = run_cli("run --output", true);
    CHECK(r.code == 2);
    CHECK(contains(r.err, "flowlab: --output needs a value"));
    r = run_cli("sample some/run -n", true);
    CHECK(r.code == 2);
    CHECK(contains(r.err, "flowlab: -n needs a value"));
    r = run_cli("sample some/run -n 0", true);
    CHECK(r.code == 2);
    CHECK(contains(r.err, "-n needs a non-negative integer, got '0'"));
    r = run_cli("bench x.json --timed 0", true);
    CHECK(r.code == 2);
    CHECK(contains(r.err, "--timed needs a positive integer, got '0'"));
    r = run_cli("validate", true);
    CHECK(r.code == 2);
    CHECK(contains(r.err, "validate takes one CONFIG"));
    CHECK(r.out.empty());
}

TEST_CASE("an unknown command is a usage error that suggests the closest command", "[cli]") {
    CliResult r = run_cli("evl runs/x", true);
    CHECK(r.code == 2);
    CHECK(contains(r.err, "flowlab: unknown command 'evl'; did you mean 'eval'?"));
    CHECK(contains(r.err, "usage: flowlab <command>"));
    r = run_cli("", true);
    CHECK(r.code == 2);
    CHECK(contains(r.err, "no command given"));
    r = run_cli("help frobnicate", true);
    CHECK(r.code == 2);
    r = run_cli("--version", true);
    CHECK(r.code == 0);
    CHECK(r.out.rfind("flowlab ", 0) == 0);
    CHECK(run_cli("version", true).out == r.out);
}
