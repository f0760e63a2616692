// Data-parallel training under mpirun, two ranks, end to end: the same model as one process,
// exact resume, one stop for all on a signal, sharded evaluation, and the faults - a killed
// rank, a hung rank, ranks that diverge, a config error - each ending the job the way
// docs/DISTRIBUTED.md says. Registered only when MPI is built (and not under the sanitizers).
#include "mpi_support.hpp"

#include <algorithm>
#include <cmath>
#include <thread>

using namespace flowlab;
using namespace flowlab::test;

namespace {

// One thread per process, so that two ranks fit a two-core machine; results do not depend on it.
const std::string kOneThread = " --set train.threads=1";

double json_number_after(const std::string& text, const std::string& key) {
    const std::size_t at = text.rfind("\"" + key + "\":");
    REQUIRE(at != std::string::npos);
    return std::strtod(text.c_str() + at + key.size() + 3, nullptr);
}

// Every number of a CSV file, in order.
std::vector<double> csv_values(const std::string& text) {
    std::vector<double> v;
    const char* p = text.c_str();
    while (*p) {
        char* end = nullptr;
        const double x = std::strtod(p, &end);
        if (end == p) {
            ++p;
            continue;
        }
        v.push_back(x);
        p = end;
    }
    return v;
}

// Over 200 steps the training amplifies any rounding difference, a 2-rank run's as much as a
// one-process run whose learning rate moved by 1e-7 (`nudged_lr`): the 2-rank run must stay
// within 3 times that floor of the one-process run, and its test NLL alike (relative nll_eps).
void compare_long_runs(const fs::path& d, const std::string& name, const std::string& cfg, const std::string& nudged_lr,
                       double nll_eps) {
    REQUIRE(run_shell(flowlab_cmd() + "run " + cfg + " --output " + (d / "one").string()).code == 0);
    REQUIRE(run_shell(mpirun(2) + flowlab_cmd() + "run " + cfg + " --output " + (d / "two").string()).code == 0);
    REQUIRE(run_shell(flowlab_cmd() + "run " + cfg + " --set train.optimizer.lr=" + nudged_lr + " --output " +
                      (d / "nudged").string())
                .code == 0);
    const ParamDiff ranks = compare_runs(d / "one", d / "two"), floor = compare_runs(d / "one", d / "nudged");
    WARN(name << ", 200 steps, 2 ranks vs 1 process: " << ranks.str());
    WARN(name << ", 200 steps, lr x (1 + 1e-7) vs 1 process: " << floor.str());
    CHECK(ranks.global_rel_l2 < 3.0 * floor.global_rel_l2 + 1e-6);
    const double nll_one = json_number_after(read_file(d / "one" / "summary.json"), "test_nll");
    const double nll_two = json_number_after(read_file(d / "two" / "summary.json"), "test_nll");
    const double nll_nudged = json_number_after(read_file(d / "nudged" / "summary.json"), "test_nll");
    WARN(name << ", test NLL after 200 steps: 1 process " << nll_one << ", 2 ranks " << nll_two << ", lr x (1 + 1e-7) "
              << nll_nudged);
    // The same floor for the NLL: the nudged run's distance, or nll_eps (relative) when that
    // happens to be smaller.
    const double nll_tol = std::max(nll_eps * std::abs(nll_one), 3.0 * std::abs(nll_nudged - nll_one));
    CHECK(std::abs(nll_two - nll_one) <= nll_tol);
}

}  // namespace

TEST_CASE("two ranks train the quickstart as one process does", "[mpi][slow]") {
    const fs::path d = fresh_dir("quickstart");
    const std::string cfg = config("quickstart.json") + kOneThread + " --set eval.samples=100 --quiet";
    // Within 30 steps the runs differ only by the order of the gradient sums' rounding.
    const Job one = run_shell(flowlab_cmd() + "run " + cfg + " --set train.steps=30 --output " + (d / "one30").string());
    const Job two = run_shell(mpirun(2) + flowlab_cmd() + "run " + cfg + " --set train.steps=30 --output " + (d / "two30").string());
    REQUIRE(one.code == 0);
    {
        INFO(two.out);
        REQUIRE(two.code == 0);
    }
    const ParamDiff near = compare_runs(d / "one30", d / "two30");
    WARN("quickstart, 30 steps, 2 ranks vs 1 process: " << near.str());
    CHECK(near.worst_max_rel < 1e-5);
    CHECK(near.global_rel_l2 < 1e-6);
    // The run directory records the ranks.
    CHECK(read_file(d / "two30" / "config.json").find("\"ranks\": 2") != std::string::npos);
    CHECK(read_file(d / "two30" / "summary.json").find("\"ranks\": 2") != std::string::npos);
    CHECK(read_file(d / "one30" / "config.json").find("\"ranks\": 1") != std::string::npos);

    // After 200 steps the quickstart's NLL still falls fast and follows rounding: on one machine
    // 0.570 nats for one process, 0.638 for two ranks and 0.639 for one process with the learning
    // rate moved by 1e-7. Hence the wide relative bound; an untrained flow is at 2.4 nats.
    compare_long_runs(d, "quickstart", cfg + " --set train.steps=200", "0.0010000001", 0.2);
    fs::remove_all(d);
}

TEST_CASE("two ranks train the W2 MAF on Fashion-MNIST as one process does", "[mpi][slow]") {
    const fs::path d = fresh_dir("w2");
    // The uniform dequantizer draws noise per pixel: each rank must draw one process's noise.
    const std::string cfg = config("fmnist_maf.json") + kOneThread +
                            " --set eval.samples=0 --set data.test_limit=1000 --quiet --set train.steps=";
    REQUIRE(run_shell(flowlab_cmd() + "run " + cfg + "20 --output " + (d / "one20").string()).code == 0);
    const Job two = run_shell(mpirun(2) + flowlab_cmd() + "run " + cfg + "20 --output " + (d / "two20").string());
    {
        INFO(two.out);
        REQUIRE(two.code == 0);
    }
    const ParamDiff near = compare_runs(d / "one20", d / "two20");
    WARN("W2, 20 steps, 2 ranks vs 1 process: " << near.str());
    CHECK(near.global_rel_l2 < 1e-5);
    CHECK(near.worst_tensor_rel_l2 < 1e-4);

    compare_long_runs(d, "W2", cfg + "200", "0.00010000001", 1e-3);
    fs::remove_all(d);
}

TEST_CASE("a data-parallel run resumes bitwise under mpirun, and on another number of ranks with a warning",
          "[mpi][slow]") {
    const fs::path d = fresh_dir("resume");
    const std::string cfg =
        config("quickstart.json") + kOneThread + " --set train.steps=40 --set train.checkpoint_every=10 --set eval.samples=10";
    REQUIRE(run_shell(mpirun(2) + flowlab_cmd() + "run " + cfg + " --quiet --output " + (d / "straight").string()).code == 0);
    const Job first = run_shell(mpirun(2) + flowlab_cmd() + "run " + cfg + " --stop-after 15 --output " + (d / "resumed").string());
    INFO(first.out);
    REQUIRE(first.code == 0);
    CHECK(count_of(first.out, "stopped at step 15") == 2);  // the trainer's line and the summary's, once each
    const Job second = run_shell(mpirun(2) + flowlab_cmd() + "run --resume " + (d / "resumed").string());
    INFO(second.out);
    REQUIRE(second.code == 0);
    CHECK(count_of(second.out, "resumed from") == 1);
    CHECK(second.out.find("warning: this run was trained on") == std::string::npos);
    const ParamDiff same = compare_runs(d / "straight", d / "resumed");
    INFO(same.str());
    CHECK(same.bitwise);
    // One process continues a 2-rank run: the same batches, another rounding; it says so.
    const Job single = run_shell(flowlab_cmd() + "run --resume " + (d / "resumed").string() + " --set train.steps=50");
    INFO(single.out);
    REQUIRE(single.code == 0);
    CHECK(single.out.find("warning: this run was trained on 2 ranks and continues on 1") != std::string::npos);
    CHECK(read_file(d / "resumed" / "config.json").find("\"ranks\": 1") != std::string::npos);
    fs::remove_all(d);
}

TEST_CASE("SIGTERM to one rank stops every rank at the same step with one checkpoint", "[mpi][slow]") {
    const fs::path d = fresh_dir("sigterm");
    const std::string cfg = config("quickstart.json") + kOneThread +
                            " --set train.steps=600 --set train.checkpoint_every=500 --set train.log_every=50"
                            " --set eval.samples=10";
    BackgroundJob job(mpirun(2) + flowlab_cmd() + "run " + cfg + " --output " + (d / "run").string(), d / "run.log");
    // Once it trains (the first logged window), signal rank 1 alone.
    for (int i = 0; i < 600 && job.output().find("step 50/600") == std::string::npos; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const pid_t rank1 = rank_pid((d / "run").string(), 1);
    REQUIRE(rank1 > 0);
    ::kill(rank1, SIGTERM);
    REQUIRE(job.wait(120));
    const std::string out = job.output();
    INFO(out);
    CHECK(job.code() == 10);
    // Rank 0 speaks for the job: one stop, at one step, with the checkpoint of that step.
    REQUIRE(count_of(out, "interrupted at step ") == 1);
    const std::size_t at = out.find("interrupted at step ") + 20;
    const long step = std::stol(out.substr(at));
    CHECK(step < 600);
    const auto files = run_checkpoints((d / "run").string());
    REQUIRE(!files.empty());
    char name[64];
    std::snprintf(name, sizeof name, "step-%09ld.safetensors", step);
    CHECK(fs::path(files.front()).filename() == name);
    // Continued, it ends where a run never stopped ends, bit for bit.
    REQUIRE(run_shell(mpirun(2) + flowlab_cmd() + "run --resume " + (d / "run").string()).code == 0);
    REQUIRE(run_shell(mpirun(2) + flowlab_cmd() + "run " + cfg + " --quiet --output " + (d / "straight").string()).code == 0);
    const ParamDiff same = compare_runs(d / "straight", d / "run");
    INFO(same.str());
    CHECK(same.bitwise);
    fs::remove_all(d);
}

TEST_CASE("the ranks share the evaluation and the sampling and get the one-process results", "[mpi][slow]") {
    const fs::path d = fresh_dir("eval");
    // A dequantizer with two importance samples: each rank must draw one process's noise for
    // its examples, draw after draw.
    const std::string cfg = config("fmnist_maf.json") + kOneThread +
                            " --set train.steps=10 --set eval.samples=0 --set data.train_limit=2000"
                            " --set data.test_limit=700 --set eval.batch_size=300 --set eval.importance_samples=2 --quiet";
    const Job two = run_shell(mpirun(2) + flowlab_cmd() + "run " + cfg + " --output " + (d / "run").string());
    {
        INFO(two.out);
        REQUIRE(two.code == 0);
    }
    // The run's final test NLL, evaluated by both ranks, against one process evaluating the
    // same checkpoint, and two ranks doing so with flowlab eval.
    const std::string metrics = read_file(d / "run" / "metrics.jsonl");
    const double sharded = json_number_after(metrics, "test_nll");
    const Job single = run_shell(flowlab_cmd() + "eval " + (d / "run").string() + " --quiet");
    const Job eval2 = run_shell(mpirun(2) + flowlab_cmd() + "eval " + (d / "run").string() + " --quiet");
    {
        INFO(single.out);
        INFO(eval2.out);
        REQUIRE(single.code == 0);
        REQUIRE(eval2.code == 0);
    }
    const double one = json_number_after(single.out, "nll"), two_ranks = json_number_after(eval2.out, "nll");
    WARN("test NLL: one process " << std::to_string(one) << ", 2 ranks in the run " << std::to_string(sharded)
                                  << ", 2 ranks with flowlab eval " << std::to_string(two_ranks));
    CHECK(std::abs(sharded - one) <= 1e-6 * std::abs(one) + 1e-6);
    CHECK(std::abs(two_ranks - one) <= 1e-6 * std::abs(one) + 1e-6);
    CHECK(count_of(eval2.out, "\"split\"") == 1);  // printed by rank 0 only

    // flowlab sample: the ranks share the draw and rank 0 writes what one process writes.
    const std::string sample = "sample " + (d / "run").string() + " -n 9 --temperature 0.8 --quiet --out ";
    const Job s1 = run_shell(flowlab_cmd() + sample + (d / "one.csv").string());
    const Job s2 = run_shell(mpirun(2) + flowlab_cmd() + sample + (d / "two.csv").string());
    {
        INFO(s1.out);
        INFO(s2.out);
        REQUIRE(s1.code == 0);
        REQUIRE(s2.code == 0);
    }
    CHECK(count_of(s2.out, "9 samples at temperature 0.8") == 1);
    const std::vector<double> a = csv_values(read_file(d / "one.csv")), b = csv_values(read_file(d / "two.csv"));
    REQUIRE(a.size() == 9u * 784u);
    REQUIRE(b.size() == a.size());
    double worst = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]) / (1.0 + std::abs(a[i])));
    WARN("samples, 2 ranks vs 1 process: largest difference " << worst);
    CHECK(worst < 1e-5);
    fs::remove_all(d);
}

TEST_CASE("a rank killed with SIGKILL ends the job within the timeout, leaving a checkpoint to resume", "[mpi][slow]") {
    const fs::path d = fresh_dir("kill");
    const double timeout = 10.0;
    const std::string cfg = config("quickstart.json") + kOneThread +
                            " --set train.steps=100000 --set train.checkpoint_every=50 --set train.log_every=50"
                            " --set train.distributed.timeout_seconds=" + std::to_string(timeout);
    BackgroundJob job(mpirun(2) + flowlab_cmd() + "run " + cfg + " --output " + (d / "run").string(), d / "run.log");
    for (int i = 0; i < 600 && run_checkpoints((d / "run").string()).size() < 2; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const pid_t rank1 = rank_pid((d / "run").string(), 1);
    REQUIRE(rank1 > 0);
    const auto t0 = std::chrono::steady_clock::now();
    ::kill(rank1, SIGKILL);
    REQUIRE(job.wait(timeout + 30));
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    WARN("a rank killed: the job ended " << took << " s later with exit code " << job.code());
    INFO(job.output());
    CHECK(job.code() != 0);
    CHECK(took < timeout + 5);
    // The newest checkpoint is whole and the run continues from it.
    const auto files = run_checkpoints((d / "run").string());
    REQUIRE(!files.empty());
    CHECK_NOTHROW(read_checkpoint(files.front()));
    const Job resumed = run_shell(mpirun(2) + flowlab_cmd() + "run --resume " + (d / "run").string() + " --stop-after 20");
    INFO(resumed.out);
    CHECK(resumed.code == 0);
    CHECK(resumed.out.find("resumed from " + files.front()) != std::string::npos);
    fs::remove_all(d);
}

TEST_CASE("a hung rank ends the job after the timeout with exit code 11, naming the rank and the step", "[mpi][slow]") {
    const fs::path d = fresh_dir("hang");
    const double timeout = 4.0;
    const std::string cfg = config("quickstart.json") + kOneThread +
                            " --set train.steps=100000 --set train.checkpoint_every=50 --set train.log_every=50"
                            " --set train.distributed.timeout_seconds=" + std::to_string(timeout);
    BackgroundJob job(mpirun(2) + flowlab_cmd() + "run " + cfg + " --output " + (d / "run").string(), d / "run.log");
    for (int i = 0; i < 600 && run_checkpoints((d / "run").string()).empty(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const pid_t rank1 = rank_pid((d / "run").string(), 1);
    REQUIRE(rank1 > 0);
    const auto t0 = std::chrono::steady_clock::now();
    ::kill(rank1, SIGSTOP);  // alive, silent: a hang
    const bool ended = job.wait(timeout + 30);
    if (!ended) ::kill(rank1, SIGKILL);
    REQUIRE(ended);
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string out = job.output();
    WARN("a rank stopped: the job ended " << took << " s later with exit code " << job.code());
    INFO(out);
    CHECK(job.code() == 11);
    CHECK(took >= timeout);
    CHECK(took < timeout + 5);
    CHECK(out.find("flowlab: distributed error: step ") != std::string::npos);
    CHECK(out.find("(train.distributed.timeout_seconds)") != std::string::npos);
    CHECK(out.find(" for rank 1, which ") != std::string::npos);
    CHECK(out.find("Aborting the job") != std::string::npos);
    CHECK_NOTHROW(read_checkpoint(run_checkpoints((d / "run").string()).front()));
    fs::remove_all(d);
}

TEST_CASE("a reduction stuck inside MPI ends the job soon after the timeout, by the waiting thread", "[mpi][slow]") {
    // Both ranks' communication threads stop at step 30 as in an MPI call that never returns,
    // so no rank's own timeout check runs: the training threads' backstop must end the job.
    const fs::path d = fresh_dir("stuck");
    const double timeout = 2.0;
    const std::string cfg = config("quickstart.json") + kOneThread +
                            " --set train.steps=100000 --set train.checkpoint_every=10 --set train.log_every=10"
                            " --set train.distributed.timeout_seconds=" + std::to_string(timeout);
    const auto t0 = std::chrono::steady_clock::now();
    const Job j = run_shell("timeout 120 " + mpirun(2) + "-x FLOWLAB_TEST_MPI_STALL_STEP=30 " + flowlab_cmd() + "run " +
                            cfg + " --output " + (d / "run").string());
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    WARN("reductions stuck in MPI: the job ended after " << took << " s with exit code " << j.code);
    INFO(j.out);
    CHECK(j.code != 124);  // not ended by the test's own timeout
    CHECK(j.code != 0);
    CHECK(j.out.find("for a collective that the MPI library neither completed nor gave up") != std::string::npos);
    CHECK(j.out.find("step 30: rank ") != std::string::npos);
    CHECK_NOTHROW(read_checkpoint(run_checkpoints((d / "run").string()).front()));
    fs::remove_all(d);
}

TEST_CASE("a config error under mpirun is printed once", "[mpi]") {
    const Job j = run_shell(mpirun(2) + flowlab_cmd() + "run " + config("quickstart.json") + " --set train.bach_size=3");
    INFO(j.out);
    CHECK(j.code == 3);
    CHECK(count_of(j.out, "flowlab: config error:") == 1);
    CHECK(j.out.find("did you mean 'batch_size'") != std::string::npos);
    // A command of one process runs on rank 0 alone.
    const Job v = run_shell(mpirun(2) + flowlab_cmd() + "validate " + config("quickstart.json"));
    INFO(v.out);
    CHECK(v.code == 0);
    CHECK(count_of(v.out, "parameters") >= 1);
    const Job once = run_shell(flowlab_cmd() + "validate " + config("quickstart.json"));
    CHECK(count_of(v.out, "parameters") == count_of(once.out, "parameters"));
}

TEST_CASE("ranks whose parameters differ stop with an error naming the rank and the step", "[mpi]") {
    const fs::path d = fresh_dir("diverge");
    // Two ranks with different learning rates (mpirun's MPMD form): one step apart already.
    const std::string common = " run " + config("quickstart.json") + kOneThread +
                               " --set train.steps=5 --set train.distributed.check_every=1 --output " + (d / "run").string();
    const std::string prog = " -np 1 " + std::string(FLOWLAB_BINARY);
    const Job j = run_shell(mpirun_options() + prog + common + " --set train.optimizer.lr=0.001 :" + prog + common +
                            " --set train.optimizer.lr=0.002");
    INFO(j.out);
    CHECK(j.code == 11);
    CHECK(count_of(j.out, "flowlab: distributed error: after step 1: the parameters of rank 1 differ from rank 0's") == 1);
    fs::remove_all(d);
}

TEST_CASE("each rank's default thread count is the machine's cores divided by its ranks there", "[mpi]") {
    const fs::path d = fresh_dir("threads");
    const Job j = run_shell(mpirun(2) + flowlab_cmd() + "run " + config("quickstart.json") +
                            " --set train.steps=2 --set eval.samples=10 --output " + (d / "run").string());
    INFO(j.out);
    REQUIRE(j.code == 0);
    const int expect = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / 2);
    CHECK(j.out.find("data parallel: 2 ranks (2 on this machine), " + std::to_string(expect) + " thread") !=
          std::string::npos);
    fs::remove_all(d);
}
