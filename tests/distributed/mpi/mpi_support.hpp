// Running flowlab under mpirun from a test: the command line, a job in the background whose
// ranks can be signalled, and the comparison of two runs' parameters. Header-only; for the
// tests in tests/distributed/mpi.
#pragma once

#include <catch2/catch.hpp>

#include <array>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "flowlab/checkpoint.hpp"
#include "flowlab/run_dir.hpp"

namespace flowlab::test {

namespace fs = std::filesystem;

// mpirun with what a test machine needs: root allowed (CI runs as root), more ranks than cores
// allowed, no pinning (other tests run beside these), and the launcher of one machine, which
// needs no ssh client (a fresh root has none). Then "-np N" for the ranks, or an MPMD list.
inline std::string mpirun_options() {
    if (::geteuid() == 0) {
        ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
        ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    }
    return std::string(FLOWLAB_MPIEXEC) + " --oversubscribe --bind-to none --mca plm isolated";
}
inline std::string mpirun(int ranks) { return mpirun_options() + " -np " + std::to_string(ranks) + " "; }

inline std::string flowlab_cmd() { return std::string(FLOWLAB_BINARY) + " "; }
inline std::string config(const std::string& name) { return std::string(FLOWLAB_SOURCE_DIR) + "/configs/" + name; }

struct Job {
    int code = -1;
    std::string out;  // stdout and stderr
    double seconds = 0.0;
};

// Runs a shell command to its end.
inline Job run_shell(const std::string& cmd) {
    Job j;
    const auto t0 = std::chrono::steady_clock::now();
    FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
    REQUIRE(p != nullptr);
    std::array<char, 4096> buf{};
    while (std::fgets(buf.data(), buf.size(), p)) j.out += buf.data();
    const int status = ::pclose(p);
    j.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    j.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return j;
}

inline std::string read_file(const fs::path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

inline int count_of(const std::string& s, const std::string& part) {
    int n = 0;
    for (std::size_t at = s.find(part); at != std::string::npos; at = s.find(part, at + part.size())) ++n;
    return n;
}

inline fs::path fresh_dir(const std::string& name) {
    fs::path d = fs::temp_directory_path() / ("flowlab-mpi-" + name + "-" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

// A job started in the background (its own process group), for signals to its ranks.
class BackgroundJob {
public:
    BackgroundJob(const std::string& cmd, const fs::path& log) : log_(log) {
        t0_ = std::chrono::steady_clock::now();
        pid_ = ::fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            ::setpgid(0, 0);
            const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            ::dup2(fd, 1);
            ::dup2(fd, 2);
            ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
            ::_exit(127);
        }
    }
    ~BackgroundJob() {
        if (pid_ > 0 && !done_) {  // a failed test: take the whole job down
            ::kill(-pid_, SIGKILL);
            int st = 0;
            ::waitpid(pid_, &st, 0);
        }
    }
    // Waits up to `limit` seconds; false when the job is still running then.
    bool wait(double limit) {
        const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(limit);
        while (std::chrono::steady_clock::now() < end) {
            int st = 0;
            const pid_t r = ::waitpid(pid_, &st, WNOHANG);
            if (r == pid_) {
                done_ = true;
                code_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
                return true;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        return false;
    }
    int code() const { return code_; }
    double seconds() const { return seconds_; }
    std::string output() const { return read_file(log_); }

private:
    pid_t pid_ = -1;
    bool done_ = false;
    int code_ = -1;
    double seconds_ = 0.0;
    fs::path log_;
    std::chrono::steady_clock::time_point t0_;
};

// The pid of the flowlab process of MPI rank `rank` whose command line contains `marker`, or -1.
inline pid_t rank_pid(const std::string& marker, int rank) {
    for (const auto& e : fs::directory_iterator("/proc")) {
        const std::string name = e.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::string cmd = read_file(e.path() / "cmdline");
        for (char& c : cmd)
            if (c == '\0') c = ' ';
        if (cmd.find(marker) == std::string::npos || cmd.find(FLOWLAB_BINARY) != 0) continue;
        std::string env = read_file(e.path() / "environ");
        const std::string key = std::string("OMPI_COMM_WORLD_RANK=") + std::to_string(rank) + '\0';
        if (env.find(key) != std::string::npos) return static_cast<pid_t>(std::stol(name));
    }
    return -1;
}

// How far apart two runs' parameters are, from their newest checkpoints.
struct ParamDiff {
    double global_rel_l2 = 0.0;      // ||a - b|| / ||a|| over all parameters
    double worst_tensor_rel_l2 = 0.0;  // the same per tensor, the largest
    double worst_max_rel = 0.0;      // per tensor max|a - b| / max|a|, the largest
    std::string worst_tensor;
    bool bitwise = true;
    std::string str() const {
        char buf[256];
        std::snprintf(buf, sizeof buf, "relative L2 %.3g over all parameters, %.3g in the worst tensor; max|diff|/max|a| %.3g (%s)%s",
                      global_rel_l2, worst_tensor_rel_l2, worst_max_rel, worst_tensor.c_str(), bitwise ? ", bitwise equal" : "");
        return buf;
    }
};

inline ParamDiff compare_runs(const fs::path& a_dir, const fs::path& b_dir) {
    const auto a_files = run_checkpoints(a_dir.string()), b_files = run_checkpoints(b_dir.string());
    REQUIRE(!a_files.empty());
    REQUIRE(!b_files.empty());
    const Checkpoint a = read_checkpoint(a_files.front()), b = read_checkpoint(b_files.front());
    ParamDiff d;
    double gd = 0.0, gn = 0.0;
    for (const auto& t : a.tensors) {
        if (t.name.rfind("param/", 0) != 0) continue;
        const Tensor* u = b.find(t.name);
        REQUIRE(u != nullptr);
        const std::vector<double> x = t.tensor.to_vector(), y = u->to_vector();
        REQUIRE(x.size() == y.size());
        double d2 = 0.0, n2 = 0.0, dmax = 0.0, amax = 0.0;
        for (std::size_t i = 0; i < x.size(); ++i) {
            const double e = x[i] - y[i];
            d.bitwise = d.bitwise && e == 0.0;
            d2 += e * e;
            n2 += x[i] * x[i];
            dmax = std::max(dmax, std::abs(e));
            amax = std::max(amax, std::abs(x[i]));
        }
        gd += d2;
        gn += n2;
        const double rel = n2 > 0 ? std::sqrt(d2 / n2) : std::sqrt(d2);
        d.worst_tensor_rel_l2 = std::max(d.worst_tensor_rel_l2, rel);
        const double mrel = amax > 0 ? dmax / amax : dmax;
        if (mrel > d.worst_max_rel) {
            d.worst_max_rel = mrel;
            d.worst_tensor = t.name;
        }
    }
    d.global_rel_l2 = gn > 0 ? std::sqrt(gd / gn) : std::sqrt(gd);
    return d;
}

}  // namespace flowlab::test
