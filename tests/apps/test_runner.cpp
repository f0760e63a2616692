// The experiment runner's promises: exact resume, crash-safe checkpoints, skipped non-finite
// steps, the divergence exit code, and what a run directory holds.
#include <catch2/catch.hpp>

#include <array>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <fcntl.h>
#include <unistd.h>

#include "flowlab/checkpoint.hpp"
#include "flowlab/experiment.hpp"

using namespace flowlab;
namespace fs = std::filesystem;

namespace {

const std::string kTiny = std::string(FLOWLAB_SOURCE_DIR) + "/tests/configs/tiny_moons.json";

struct Result {
    int code = -1;
    std::string out;
};

Result sh(const std::string& args) {
    std::string cmd = std::string(FLOWLAB_BINARY) + " " + args + " 2>&1";
    Result r;
    FILE* p = popen(cmd.c_str(), "r");
    REQUIRE(p != nullptr);
    std::array<char, 4096> buf{};
    while (std::fgets(buf.data(), buf.size(), p)) r.out += buf.data();
    int status = pclose(p);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

fs::path fresh_dir(const std::string& name) {
    fs::path d = fs::temp_directory_path() / ("flowlab-runner-" + name + "-" + std::to_string(::getpid()));
    fs::remove_all(d);
    return d;
}

std::string latest_checkpoint(const fs::path& run) {
    auto all = run_checkpoints(run.string());
    REQUIRE(!all.empty());
    return all.front();
}

// Every tensor whose name starts with one of the prefixes, equal to the bit.
void require_same_tensors(const Checkpoint& a, const Checkpoint& b, std::vector<std::string> prefixes) {
    int compared = 0;
    for (const auto& t : a.tensors) {
        bool want = false;
        for (const auto& p : prefixes) want = want || t.name.rfind(p, 0) == 0;
        if (!want) continue;
        const Tensor* u = b.find(t.name);
        INFO(t.name);
        REQUIRE(u);
        REQUIRE(u->nbytes() == t.tensor.nbytes());
        CHECK(std::memcmp(u->raw(), t.tensor.raw(), u->nbytes()) == 0);
        ++compared;
    }
    CHECK(compared > 0);
}

}  // namespace

TEST_CASE("N steps, resume, N steps give bitwise the parameters of 2N steps straight", "[runner]") {
    fs::path straight = fresh_dir("straight"), split = fresh_dir("split");
    // 23 is mid-epoch (31 batches of 64 per epoch of 2000) and not a checkpoint step.
    REQUIRE(sh("run " + kTiny + " --quiet --set train.steps=46 --set train.threads=1 --output " + straight.string()).code == 0);
    Result first = sh("run " + kTiny + " --quiet --set train.steps=46 --set train.threads=1 --stop-after 23 --output " +
                      split.string());
    REQUIRE(first.code == 0);
    CHECK(read_checkpoint(latest_checkpoint(split)).metadata.at("step") == "23");
    Result second = sh("run --resume " + split.string() + " --quiet");
    INFO(second.out);
    REQUIRE(second.code == 0);
    Checkpoint a = read_checkpoint(latest_checkpoint(straight)), b = read_checkpoint(latest_checkpoint(split));
    CHECK(a.metadata.at("step") == "46");
    CHECK(b.metadata.at("step") == "46");
    require_same_tensors(a, b, {"param/", "optim/"});
    fs::remove_all(straight);
    fs::remove_all(split);
}

TEST_CASE("the parameter EMA is the bias-corrected weighted mean of the iterates", "[runner]") {
    fs::path run = fresh_dir("ema");
    const std::string sets = " --quiet --set train.steps=3 --set train.checkpoint_every=1 --set train.threads=1"
                             " --set train.ema_decay=0.5 --output " + run.string();
    // Stop after step 1 and keep that checkpoint aside (a run keeps only its last two).
    REQUIRE(sh("run " + kTiny + sets + " --stop-after 1").code == 0);
    Checkpoint c1 = read_checkpoint(latest_checkpoint(run));
    REQUIRE(c1.metadata.at("step") == "1");
    REQUIRE(sh("run --resume " + run.string() + " --quiet").code == 0);
    auto all = run_checkpoints(run.string());
    REQUIRE(all.size() >= 2);
    Checkpoint c3 = read_checkpoint(all[0]), c2 = read_checkpoint(all[1]);
    REQUIRE(c3.metadata.at("step") == "3");
    REQUIRE(c2.metadata.at("step") == "2");
    int compared = 0;
    for (const auto& t : c3.tensors) {
        if (t.name.rfind("param/", 0) != 0) continue;
        const std::string ema = "ema/" + t.name.substr(6);
        const Tensor *p1 = c1.find(t.name), *p2 = c2.find(t.name), *e1 = c1.find(ema), *e3 = c3.find(ema);
        INFO(t.name);
        REQUIRE((p1 && p2 && e1 && e3));
        for (std::int64_t i = 0; i < t.tensor.numel(); ++i) {
            // After one step the average is that step's parameters, not 0.5 of the initial ones.
            CHECK(e1->item(i) == Approx(p1->item(i)).margin(1e-6));
            const double want = (0.25 * p1->item(i) + 0.5 * p2->item(i) + t.tensor.item(i)) / 1.75;
            CHECK(e3->item(i) == Approx(want).margin(1e-5));
        }
        ++compared;
    }
    CHECK(compared > 0);
    fs::remove_all(run);
}

TEST_CASE("SIGKILL at random moments never leaves a run without a loadable checkpoint", "[runner][slow]") {
    fs::path run = fresh_dir("kill");
    std::mt19937 gen(7);
    int trials = 0, resumed = 0;
    for (int t = 0; t < 50; ++t) {
        pid_t pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            int devnull = ::open("/dev/null", O_WRONLY);
            ::dup2(devnull, 1);
            ::dup2(devnull, 2);
            std::string out = run.string();
            if (t == 0 || !fs::exists(run / "checkpoints"))
                ::execl(FLOWLAB_BINARY, FLOWLAB_BINARY, "run", kTiny.c_str(), "--set", "train.steps=100000",
                        "--set", "train.checkpoint_every=1", "--set", "train.threads=1", "--output", out.c_str(),
                        "--quiet", static_cast<char*>(nullptr));
            else
                ::execl(FLOWLAB_BINARY, FLOWLAB_BINARY, "run", "--resume", out.c_str(), "--quiet",
                        static_cast<char*>(nullptr));
            ::_exit(127);
        }
        // Every step writes a checkpoint, so most kills land inside a write.
        std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(150, 600)(gen)));
        ::kill(pid, SIGKILL);
        int status = 0;
        ::waitpid(pid, &status, 0);
        ++trials;
        if (!fs::exists(run / "checkpoints")) continue;  // killed before the first checkpoint
        // The newest checkpoint (or its fallback) loads, and resuming works.
        auto all = run_checkpoints(run.string());
        REQUIRE(!all.empty());
        bool loaded = false;
        for (const auto& c : all) {
            try {
                read_checkpoint(c);
                loaded = true;
                break;
            } catch (const std::exception&) {
            }
        }
        CHECK(loaded);
        Result r = sh("run --resume " + run.string() + " --quiet --stop-after 1");
        INFO(r.out);
        CHECK(r.code == 0);
        ++resumed;
    }
    CHECK(trials == 50);
    CHECK(resumed >= 40);
    fs::remove_all(run);
}

TEST_CASE("a non-finite gradient skips the step and leaves parameters and optimizer state untouched", "[runner]") {
    fs::path run = fresh_dir("nan");
    std::string plugin = std::string(FLOWLAB_TEST_FIXTURE_DIR) + "/nan_injector.so";
    // Layer 0 poisons the gradient on step 3 only; a checkpoint follows every step.
    Result r = sh("run " + kTiny + " --quiet --plugin " + plugin +
                  " --set 'model.layers=[{\"type\":\"nan_injector\",\"from\":3,\"until\":4},"
                  "{\"type\":\"affine_coupling\",\"mask\":\"alternate\",\"parity\":0},"
                  "{\"type\":\"affine_coupling\",\"mask\":\"alternate\",\"parity\":1}]'"
                  " --set train.steps=4 --set train.checkpoint_every=1 --stop-after 3 --output " + run.string());
    INFO(r.out);
    REQUIRE(r.code == 0);
    // Steps 2 and 3 are the two generations kept; step 3 was skipped, so they hold the same state.
    fs::path dir = run / "checkpoints";
    Checkpoint c2 = read_checkpoint((dir / "step-000000002.safetensors").string());
    Checkpoint c3 = read_checkpoint((dir / "step-000000003.safetensors").string());
    require_same_tensors(c2, c3, {"param/", "optim/"});
    CHECK(c3.metadata.at("optimizer_steps") == c2.metadata.at("optimizer_steps"));
    std::ifstream m(run / "metrics.jsonl");
    std::stringstream ss;
    ss << m.rdbuf();
    CHECK(ss.str().find("\"skipped\":true") != std::string::npos);
    CHECK(ss.str().find("gradient of") != std::string::npos);  // names the tensor that went non-finite
    fs::remove_all(run);
}

TEST_CASE("K consecutive non-finite steps abort with exit code 6 and keep the last good checkpoint", "[runner]") {
    fs::path run = fresh_dir("diverge");
    std::string plugin = std::string(FLOWLAB_TEST_FIXTURE_DIR) + "/nan_injector.so";
    Result r = sh("run " + kTiny + " --quiet --plugin " + plugin +
                  " --set 'model.layers=[{\"type\":\"nan_injector\",\"from\":4,\"until\":1000},"
                  "{\"type\":\"affine_coupling\",\"mask\":\"alternate\",\"parity\":0}]'"
                  " --set train.steps=50 --set train.checkpoint_every=1 --set train.max_bad_steps=5 --output " +
                  run.string());
    INFO(r.out);
    CHECK(r.code == 6);
    CHECK(r.out.find("5 consecutive non-finite steps") != std::string::npos);
    Checkpoint last = read_checkpoint(latest_checkpoint(run));
    CHECK(last.metadata.at("step") == "3");
    fs::remove_all(run);
}

TEST_CASE("SIGTERM finishes the step, writes a checkpoint and exits with code 10", "[runner]") {
    fs::path run = fresh_dir("term");
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int devnull = ::open("/dev/null", O_WRONLY);
        ::dup2(devnull, 1);
        ::dup2(devnull, 2);
        std::string out = run.string();
        ::execl(FLOWLAB_BINARY, FLOWLAB_BINARY, "run", kTiny.c_str(), "--set", "train.steps=1000000", "--set",
                "train.checkpoint_every=100000", "--output", out.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    // Wait until training is under way (the metrics file appears), then ask it to stop.
    for (int i = 0; i < 200 && !fs::exists(run / "metrics.jsonl"); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ::kill(pid, SIGTERM);
    int status = 0;
    ::waitpid(pid, &status, 0);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 10);
    Checkpoint c = read_checkpoint(latest_checkpoint(run));
    CHECK(std::stoll(c.metadata.at("step")) > 0);
    fs::remove_all(run);
}

TEST_CASE("eval, sample, schema and report work on a finished run", "[runner]") {
    fs::path run = fresh_dir("tools");
    REQUIRE(sh("run " + kTiny + " --quiet --output " + run.string()).code == 0);
    for (const char* f : {"report.html", "metrics.csv", "summary.json", "samples.csv", "density.csv"})
        CHECK(fs::exists(run / f));
    Result e = sh("eval " + run.string() + " --quiet --split test");
    INFO(e.out);
    CHECK(e.code == 0);
    CHECK(e.out.find("\"bits_per_dim\"") != std::string::npos);
    fs::path out = run / "s.npy";
    Result s = sh("sample " + run.string() + " --quiet -n 10 --temperature 0.5 --out " + out.string());
    CHECK(s.code == 0);
    CHECK(fs::file_size(out) == 128 + 10 * 2 * 4);  // .npy header block + 10 x 2 float32
    Result schema = sh("schema");
    CHECK(schema.code == 0);
    CHECK(schema.out.find("\"affine_coupling\"") != std::string::npos);
    CHECK(schema.out.find("\"additionalProperties\": false") != std::string::npos);
    std::ifstream h(run / "report.html");
    std::stringstream html;
    html << h.rdbuf();
    CHECK(html.str().find("<svg") != std::string::npos);
    CHECK(html.str().find("polyline") != std::string::npos);
    fs::remove_all(run);
}
