// Running the flowlab binary from a test the way a user runs it: a child process, its exit code
// and its output. Header-only; for the tests under tests/apps.
#pragma once

#include <catch2/catch.hpp>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

namespace flowlab::test {

struct CliResult {
    int code = -1;
    std::string out;  // stdout, with stderr unless run_cli was asked to keep it apart
    std::string err;  // stderr when kept apart
};

// Runs `flowlab ARGS` through the shell (so ARGS may quote). With separate_stderr, stderr goes
// to `err` (help goes to stdout, usage errors to stderr); otherwise both are in `out`.
inline CliResult run_cli(const std::string& args, bool separate_stderr = false) {
    namespace fs = std::filesystem;
    const fs::path err_file =
        fs::temp_directory_path() / ("flowlab-cli-" + std::to_string(::getpid()) + ".stderr");
    const std::string cmd =
        std::string(FLOWLAB_BINARY) + " " + args + (separate_stderr ? " 2>" + err_file.string() : " 2>&1");
    CliResult r;
    FILE* p = popen(cmd.c_str(), "r");
    REQUIRE(p != nullptr);
    std::array<char, 4096> buf{};
    while (std::fgets(buf.data(), buf.size(), p)) r.out += buf.data();
    const int status = pclose(p);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (separate_stderr) {
        std::ifstream f(err_file);
        std::stringstream ss;
        ss << f.rdbuf();
        r.err = ss.str();
        std::error_code ec;
        fs::remove(err_file, ec);
    }
    return r;
}

// An empty directory of its own for this test process: TMP/flowlab-test-NAME-PID.
inline std::filesystem::path fresh_temp_dir(const std::string& name) {
    namespace fs = std::filesystem;
    fs::path d = fs::temp_directory_path() / ("flowlab-test-" + name + "-" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

inline std::string read_text(const std::filesystem::path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// The id of a process that has exited and been reaped: a pid no live process has (for tests of
// files named after their writer's pid).
inline pid_t finished_pid() {
    pid_t pid = fork();
    if (pid == 0) ::_exit(0);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return pid;
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace flowlab::test
