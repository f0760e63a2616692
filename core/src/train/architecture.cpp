// architecture.hpp: the run directory's architecture.dot and, through Graphviz, architecture.svg.
// dot runs as a child process without a shell (posix_spawnp: safe in a process that already has
// thread pools, and no quoting of paths), with a deadline, so that a huge or pathological graph
// cannot hold up or fail a training run.
#include "flowlab/architecture.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "flowlab/builder.hpp"
#include "flowlab/checkpoint.hpp"

extern char** environ;

namespace flowlab {

namespace fs = std::filesystem;

namespace {

constexpr char kGraphvizHint[] = "Graphviz is not installed (no 'dot' on PATH; Debian: apt-get install graphviz)";

// The first line of a small file (dot's stderr), trimmed; "" when empty or unreadable.
std::string first_line(const fs::path& p) {
    std::ifstream f(p);
    std::string line;
    while (std::getline(f, line)) {
        while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
        if (!line.empty()) return line.size() > 300 ? line.substr(0, 300) + "..." : line;
    }
    return "";
}

}  // namespace

std::string find_on_path(const std::string& program) {
    const char* path = std::getenv("PATH");
    if (program.empty() || !path) return "";
    std::stringstream dirs(path);
    std::string dir;
    while (std::getline(dirs, dir, ':')) {
        const fs::path candidate = fs::path(dir.empty() ? "." : dir) / program;
        struct stat st {};
        if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(candidate.c_str(), X_OK) == 0)
            return candidate.string();
    }
    return "";
}

std::string render_dot_to_svg(const std::string& dot_file, const std::string& svg_file, double timeout_seconds) {
    const std::string dot = find_on_path("dot");
    if (dot.empty()) return kGraphvizHint;
    const fs::path target(svg_file);
    const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
    // Temporary names of the run directory's kind (".NAME.tmp-PID"), which a later run's clean-up
    // removes if this process dies before it does.
    const std::string pid = std::to_string(::getpid());
    const std::string tmp = (dir / ("." + target.filename().string() + ".tmp-" + pid)).string();
    const std::string err = (dir / ("." + target.filename().string() + "-stderr.tmp-" + pid)).string();

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::string a0 = dot, a1 = "-Tsvg", a2 = "-o", a3 = tmp, a4 = dot_file;
    char* argv[] = {a0.data(), a1.data(), a2.data(), a3.data(), a4.data(), nullptr};
    // The child starts with no signal blocked: flowlab blocks SIGINT/SIGTERM in its threads
    // (stop_signals.hpp) and a blocked mask would survive the exec.
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    pid_t child = -1;
    const int rc = ::posix_spawn(&child, dot.c_str(), &actions, &attr, argv, environ);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&actions);
    auto clean = [&] {
        std::error_code ec;
        fs::remove(tmp, ec);
        fs::remove(err, ec);
    };
    if (rc != 0) {
        clean();
        return "cannot run " + dot + ": " + std::strerror(rc);
    }
    // Poll rather than block, so that a dot that hangs is killed at the deadline.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_seconds);
    int status = 0;
    bool timed_out = false;
    for (;;) {
        const pid_t r = ::waitpid(child, &status, WNOHANG);
        if (r == child) break;
        if (r < 0 && errno != EINTR) {
            clean();
            return "waiting for " + dot + " failed: " + std::strerror(errno);
        }
        if (std::chrono::steady_clock::now() >= deadline) {
            ::kill(child, SIGKILL);
            while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
            }
            timed_out = true;
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::string why;
    if (timed_out) {
        why = dot + " took longer than " + std::to_string(static_cast<long>(timeout_seconds)) + " s and was stopped";
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        why = dot + (WIFEXITED(status) ? " exited with code " + std::to_string(WEXITSTATUS(status))
                                       : " was killed by signal " + std::to_string(WTERMSIG(status)));
        if (const std::string msg = first_line(err); !msg.empty()) why += ": " + msg;
    } else {
        std::error_code ec;
        if (!fs::exists(tmp, ec) || fs::file_size(tmp, ec) == 0) why = dot + " wrote no SVG";
        else if (::rename(tmp.c_str(), svg_file.c_str()) != 0)
            why = svg_file + ": rename failed: " + std::strerror(errno);
    }
    clean();
    return why;
}

ArchitectureFiles write_run_architecture(const std::string& run_dir, const Params& config, const Flow& flow,
                                         double timeout_seconds) {
    ArchitectureFiles files;
    files.dot_path = (fs::path(run_dir) / "architecture.dot").string();
    write_file_atomic(files.dot_path, flow_dot(config, flow));
    const std::string svg = (fs::path(run_dir) / "architecture.svg").string();
    files.graphviz = !find_on_path("dot").empty();
    files.note = render_dot_to_svg(files.dot_path, svg, timeout_seconds);
    if (files.note.empty()) files.svg_path = svg;
    return files;
}

}  // namespace flowlab
